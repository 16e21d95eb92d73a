"""What a model *is*, as frozen dataclasses whose field names mirror the config.json keys.

One class per family: ``DenseSpec`` (qwen2 / llama distillates), ``DeepseekV3Spec`` (V3, R1, V3.1,
Kimi-K2; V3.2 adds the DSA indexer), ``DeepseekV4Spec`` (V4-Flash / Pro; V4.1 adds Engram and the
shared-KV layers). ``mv4deploy.model.config`` builds them from either config form; everything
downstream (inventory, KV layout, planner) reads only these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar


class Arch(str, Enum):
    DEEPSEEK_V3 = "deepseek_v3"
    DEEPSEEK_V32 = "deepseek_v32"
    DEEPSEEK_V4 = "deepseek_v4"
    DEEPSEEK_V41 = "deepseek_v41"
    QWEN2 = "qwen2"
    LLAMA = "llama"


@dataclass(frozen=True)
class StoredFormats:
    """How the checkpoint stores its weights: format names from ``mv4deploy.formats.FORMATS``."""

    linear: str = "bf16"        # attention, shared experts, dense MLPs, routers' projections
    expert: str = "bf16"        # routed experts
    engram_table: str = "bf16"  # Engram embedding rows (V4.1)
    plain: str = "bf16"         # embeddings, head and other tensors stored unquantized
    norm: str = "bf16"          # RMSNorm weights (V3.2 ships them in F32)
    # A checkpoint written by ``mv4deploy quantize``: ordered per-weight rules (``model.rules.Rule``)
    # applied on top of the fields above, which then describe the source ("native") layout.
    rules: tuple = ()


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    name: str
    architecture: Arch
    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    num_nextn_predict_layers: int = 0
    formats: StoredFormats = field(default_factory=StoredFormats)
    hc_mult: int = 1  # residual streams per token (mHC widens the residual stream; 1 = plain residual)
    unknown_keys: tuple[str, ...] = ()
    # What a decoder layer is made of, for the engines' fixed cost per layer (``engines.engine.LAYER_FAMILIES``):
    # the DeepSeek families' MLA / CSA attention and routed MoE; ``DenseSpec``: GQA attention and an MLP.
    layer_family: ClassVar[str] = "deepseek"


@dataclass(frozen=True, kw_only=True)
class DenseSpec(ModelSpec):
    """Qwen2 / Llama: GQA attention and a SwiGLU MLP in every layer."""

    layer_family: ClassVar[str] = "dense"
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    attention_bias: bool  # Qwen2 has q/k/v biases


@dataclass(frozen=True, kw_only=True)
class DeepseekV3Spec(ModelSpec):
    """MLA attention, dense MLPs in the first ``first_k_dense_replace`` layers, then MoE."""

    intermediate_size: int
    moe_intermediate_size: int
    first_k_dense_replace: int
    moe_layer_freq: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    num_attention_heads: int
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    index_n_heads: int = 0  # V3.2 DSA indexer; 0 = none
    index_head_dim: int = 0
    index_topk: int = 0

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_k_dense_replace and layer % self.moe_layer_freq == 0


@dataclass(frozen=True)
class EngramSpec:
    """V4.1 Engram: ``n_heads`` hash heads per n-gram order 2..max_ngram_size, rows of ``head_dim``."""

    layer_ids: tuple[int, ...]
    num_embeddings: tuple[int, ...]  # rows of each layer's table (sum of its heads' primes)
    max_ngram_size: int
    n_heads: int
    head_dim: int
    vocab_size: int                  # prime search start per order
    pad_token_id: int
    compressed_vocab_size: int | None = None

    @property
    def hash_columns(self) -> int:
        """Rows gathered per token per layer: one per (order, head)."""
        return (self.max_ngram_size - 1) * self.n_heads


@dataclass(frozen=True)
class DSparkSpec:
    """V4.1's draft ("DSpark") layers, shipped as ``mtp.{i}``: smaller MoE, a Markov and a confidence head."""

    n_routed_experts: int
    num_experts_per_tok: int
    target_layer_ids: tuple[int, ...]
    markov_rank: int


@dataclass(frozen=True)
class VisionSpec:
    """V4.1's vision tower (``vision.*``, ``aligner.*``): inventoried so checkpoint bytes are exact."""

    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    patch_size: int
    downsample_ratio: int


@dataclass(frozen=True, kw_only=True)
class DeepseekV4Spec(ModelSpec):
    """V4 attention (shared 512-d KV, sliding window + CSA/HCA compressed entries), mHC, hash-MoE then MoE.

    ``compress_ratios`` has one entry per layer including the MTP tail: 0 = sliding window only,
    4 = CSA (with the Lightning Indexer), 128 = HCA. V4.1 ships ratios 0/1/2, kept as data (see kv.py).
    """

    moe_intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    qk_rope_head_dim: int
    q_lora_rank: int
    o_groups: int
    o_lora_rank: int
    n_routed_experts: int
    n_shared_experts: int
    num_experts_per_tok: int
    num_hash_layers: int
    compress_ratios: tuple[int, ...]
    sliding_window: int
    index_n_heads: int
    index_head_dim: int
    index_topk: int
    engram: EngramSpec | None = None
    dspark: DSparkSpec | None = None
    vision: VisionSpec | None = None
    kv_source_layer_ids: tuple[int, ...] | None = None
    index_source_layer_ids: tuple[int, ...] | None = None

    def ratio(self, layer: int) -> int:
        return self.compress_ratios[layer]

    def owns_compressor(self, layer: int) -> bool:
        """V4: every layer with a ratio; V4.1: only the kv-source layers (the rest reuse theirs)."""
        if layer >= self.num_hidden_layers or not self.ratio(layer):
            return False
        return self.kv_source_layer_ids is None or layer in self.kv_source_layer_ids

    def owns_indexer(self, layer: int) -> bool:
        """V4: the CSA (ratio 4) layers; V4.1: only the index-source layers."""
        if layer >= self.num_hidden_layers:
            return False
        if self.index_source_layer_ids is not None:
            return layer in self.index_source_layer_ids
        return self.ratio(layer) == 4
