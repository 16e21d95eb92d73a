"""KV-cache layouts: the pools each architecture keeps, their bytes per token and per sequence.

A pool is one kind of cache entry kept in some layers: MLA latents (V3), DSA indexer keys (V3.2),
V4's sliding window, CSA entries (one per 4 tokens, read through a top-k selection) with their
indexer keys, and HCA entries (one per 128 tokens, read densely); GQA K/V for the distillates.
Byte sizes per entry, per cache format (facts/deepseek-arch.md §1.2-§2.4):

- MLA (V3/V3.2), kv_lora_rank + qk_rope_head_dim elements (512 + 64): BF16 1,152 B; FP8 "656-B" layout =
  512 e4m3 + 4 fp32 scales (one per 128) + 64 bf16 RoPE.
- V4 ("MODEL1"), head_dim elements (448 NoPE + 64 RoPE): BF16 1,024 B; FP8 "584-B" layout = 448 e4m3 + 64 bf16
  RoPE + 7 UE8M0 scales (one per 64) and a pad byte (scale bytes padded to 8).
- DSA / Lightning-indexer key: 128 e4m3 + one fp32 scale = 132 B, in every cache format.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from math import ceil

from mv4deploy.model.spec import Arch, DeepseekV3Spec, DeepseekV4Spec, DenseSpec, ModelSpec


class Access(str, Enum):
    DENSE = "dense"   # every entry is read at each decode step
    TOPK = "topk"     # only the entries an indexer selects are read


class CacheFormat(str, Enum):
    BF16 = "bf16"
    FP8 = "fp8"
    F32 = "f32"     # GQA only: onnxruntime's CPU GroupQueryAttention keeps an fp32 cache


ENTRY_FORMATS = frozenset({CacheFormat.BF16, CacheFormat.FP8})    # MLA and V4 entries: a BF16 and an FP8 layout
INDEXER_KEY_BYTES = 132  # 128 x e4m3 + 1 x fp32 scale
GQA_ELEMENT_BYTES = {CacheFormat.F32: 4, CacheFormat.BF16: 2, CacheFormat.FP8: 1}
DEFAULT_FORMAT = {Arch.DEEPSEEK_V3: CacheFormat.BF16, Arch.DEEPSEEK_V32: CacheFormat.FP8,
                  Arch.DEEPSEEK_V4: CacheFormat.FP8, Arch.DEEPSEEK_V41: CacheFormat.FP8,
                  Arch.QWEN2: CacheFormat.BF16, Arch.LLAMA: CacheFormat.BF16}


@dataclass(frozen=True)
class KVPool:
    name: str
    layers: tuple[int, ...]
    bytes_per_entry: int          # per layer
    tokens_per_entry: int = 1     # 4 for CSA, 128 for HCA
    access: Access = Access.DENSE
    window_tokens: int | None = None   # a sliding window: fixed size per sequence, not per token
    topk_entries: int | None = None    # entries read per step when access is TOPK

    @property
    def bytes_per_token(self) -> float:
        """Growth per token of context (0 for a window pool)."""
        if self.window_tokens is not None:
            return 0.0
        return len(self.layers) * self.bytes_per_entry / self.tokens_per_entry

    def bytes(self, context_tokens: int, batch: int = 1) -> int:
        """Bytes this pool holds for ``batch`` sequences of ``context_tokens`` each."""
        tokens = min(context_tokens, self.window_tokens) if self.window_tokens is not None else context_tokens
        entries = ceil(tokens / self.tokens_per_entry)
        return batch * len(self.layers) * entries * self.bytes_per_entry

    def read_bytes_per_step(self, context_tokens: int) -> int:
        """Bytes one decode step reads from this pool for one sequence."""
        if self.access is Access.TOPK:
            entries = min(ceil(context_tokens / self.tokens_per_entry), self.topk_entries or 0)
            return len(self.layers) * entries * self.bytes_per_entry
        return self.bytes(context_tokens)


@dataclass(frozen=True)
class KVLayout:
    cache_format: CacheFormat
    pools: tuple[KVPool, ...]
    fixed_bytes_per_sequence: int  # compressor state etc., independent of context (windows excluded)

    @property
    def bytes_per_token(self) -> float:
        return sum(p.bytes_per_token for p in self.pools)

    @property
    def window_bytes_per_sequence(self) -> int:
        return sum(p.bytes(p.window_tokens) for p in self.pools if p.window_tokens is not None)

    def bytes(self, context_tokens: int, batch: int = 1) -> int:
        return sum(p.bytes(context_tokens, batch) for p in self.pools) + batch * self.fixed_bytes_per_sequence


def cache_formats(arch: Arch) -> frozenset[CacheFormat]:
    """The cache formats a layout exists for: MLA and V4 entries have a BF16 and an FP8 layout; only GQA
    caches come in fp32 too (onnxruntime's CPU GroupQueryAttention)."""
    return _FORMATS[_LAYOUTS[arch]]


def kv_layout(spec: ModelSpec, cache_format: CacheFormat | None = None) -> KVLayout:
    """The pools of ``spec`` in ``cache_format`` (None: the architecture's default). A format the
    architecture has no layout for is a ValueError (callers check ``cache_formats`` first)."""
    fmt = CacheFormat(cache_format) if cache_format else DEFAULT_FORMAT[spec.architecture]
    if fmt not in cache_formats(spec.architecture):
        raise ValueError(f"{spec.architecture.value} has no {fmt.value} KV-cache layout")
    return _LAYOUTS[spec.architecture](spec, fmt)


def gqa_entry_bytes(spec: DenseSpec, element_bytes: int) -> int:
    """One layer's cache for one token of a GQA model: K and V, ``kv_heads x head_dim`` elements each."""
    return 2 * spec.num_key_value_heads * spec.head_dim * element_bytes


def _gqa(spec: DenseSpec, fmt: CacheFormat) -> KVLayout:
    entry = gqa_entry_bytes(spec, GQA_ELEMENT_BYTES[fmt])
    return KVLayout(fmt, (KVPool("kv", tuple(range(spec.num_hidden_layers)), entry),), 0)


def mla_entry_bytes(spec: DeepseekV3Spec, fmt: CacheFormat) -> int:
    """One layer's MLA latent for one token: 2 B per element in BF16; in FP8 the latent as e4m3 with an fp32
    scale per 128 elements and the RoPE part kept in bf16 (V3: 512 + 4 x 4 + 64 x 2 = 656)."""
    latent, rope = spec.kv_lora_rank, spec.qk_rope_head_dim
    if fmt is CacheFormat.BF16:
        return 2 * (latent + rope)
    return latent + 4 * ceil(latent / 128) + 2 * rope


def v4_entry_bytes(spec: DeepseekV4Spec, fmt: CacheFormat) -> int:
    """One V4 cache entry (one layer): 2 B per element of head_dim in BF16; in FP8 the NoPE part as e4m3 with
    a UE8M0 scale per 64 elements (scale bytes padded to 8) and the RoPE part in bf16 (V4: 448 + 8 + 128)."""
    if fmt is CacheFormat.BF16:
        return 2 * spec.head_dim
    nope, rope = spec.head_dim - spec.qk_rope_head_dim, spec.qk_rope_head_dim
    return nope + 8 * ceil(ceil(nope / 64) / 8) + 2 * rope


def _mla(spec: DeepseekV3Spec, fmt: CacheFormat) -> KVLayout:
    layers = tuple(range(spec.num_hidden_layers))
    pools = [KVPool("mla_latent", layers, mla_entry_bytes(spec, fmt),
                    access=Access.TOPK if spec.index_topk else Access.DENSE, topk_entries=spec.index_topk or None)]
    if spec.index_n_heads:
        pools.append(KVPool("indexer_keys", layers, INDEXER_KEY_BYTES))
    return KVLayout(fmt, tuple(pools), 0)


def _v4(spec: DeepseekV4Spec, fmt: CacheFormat) -> KVLayout:
    """Window for every layer; CSA (ratio 4) entries + indexer keys; HCA (ratio 128) entries.

    Per sequence each compressed layer also keeps fp32 compressor state: ``ratio`` rows (2x for the
    overlapping ratio-4 windows, with twice the width) of running kv and gate sums, plus the indexer's
    own compressor for CSA (facts/deepseek-arch.md §2.4: ~0.5 MB per HCA layer, ~80 KB per CSA layer).
    """
    n = spec.num_hidden_layers
    entry = v4_entry_bytes(spec, fmt)
    csa = tuple(i for i in range(n) if spec.ratio(i) == 4)
    hca = tuple(i for i in range(n) if spec.ratio(i) == 128)
    pools = [KVPool("window", tuple(range(n)), entry, window_tokens=spec.sliding_window)]
    if csa:
        pools += [KVPool("csa_entries", csa, entry, 4, Access.TOPK, topk_entries=spec.index_topk),
                  KVPool("csa_indexer_keys", csa, INDEXER_KEY_BYTES, 4)]
    if hca:
        pools.append(KVPool("hca_entries", hca, entry, 128))
    fixed = sum(_compressor_state_bytes(spec, spec.ratio(i)) for i in csa + hca)
    return KVLayout(fmt, tuple(pools), fixed)


def _compressor_state_bytes(spec: DeepseekV4Spec, ratio: int) -> int:
    overlap = 2 if ratio == 4 else 1                      # ratio-4 windows overlap: 2x rows, 2x width
    state = 2 * (overlap * ratio) * (overlap * spec.head_dim) * 4      # kv + gate sums, fp32
    if ratio == 4:
        state += 2 * (2 * ratio) * (2 * spec.index_head_dim) * 4       # the indexer's compressor
    return state


def _v41(spec: DeepseekV4Spec, fmt: CacheFormat) -> KVLayout:
    """V4.1: only the kv-source layers own a compressed cache (ratio 2: one entry per 2 tokens; ratio 1:
    one per token, "full-length compressed"), with an indexer key per entry; the other layers reuse the
    nearest source below them, and every layer keeps its sliding window. Entries are read through the
    indexer's top-k. This follows the reference code's pools (docs/inventory.md); the model card's
    "~890 B/token" is not reproduced by any pool geometry we know (facts/deepseek-arch.md §9).
    """
    n, entry = spec.num_hidden_layers, v4_entry_bytes(spec, fmt)
    pools = [KVPool("window", tuple(range(n)), entry, window_tokens=spec.sliding_window)]
    sources = [i for i in range(n) if spec.owns_compressor(i)]
    for ratio in sorted({spec.ratio(i) for i in sources}):
        layers = tuple(i for i in sources if spec.ratio(i) == ratio)
        pools += [KVPool(f"compressed_r{ratio}_entries", layers, entry, ratio, Access.TOPK,
                         topk_entries=spec.index_topk),
                  KVPool(f"compressed_r{ratio}_indexer_keys", layers, INDEXER_KEY_BYTES, ratio)]
    fixed = sum(2 * spec.ratio(i) * spec.head_dim * 4 for i in sources if spec.ratio(i) > 1)  # kv + gate sums
    return KVLayout(fmt, tuple(pools), fixed)


_LAYOUTS = {Arch.QWEN2: _gqa, Arch.LLAMA: _gqa, Arch.DEEPSEEK_V3: _mla, Arch.DEEPSEEK_V32: _mla,
            Arch.DEEPSEEK_V4: _v4, Arch.DEEPSEEK_V41: _v41}
_FORMATS = {_gqa: frozenset(GQA_ELEMENT_BYTES), _mla: ENTRY_FORMATS, _v4: ENTRY_FORMATS, _v41: ENTRY_FORMATS}
