"""GPU workspace for one prefill chunk: the residual stream, the largest transient buffer, stream buffers.

Activations are BF16 (2 B). The residual stream is ``hc_mult`` times wider under mHC (V4: 4 x hidden
per token), kept twice (a block's input and output). The largest transient is the biggest buffer one
layer allocates for a chunk of C tokens: the query heads, the gated MLP's intermediate for the routed
+ shared experts, the MoE dispatch copy, the sparse-attention indexer's FP32 logits over every key of
the context (C x N/ratio x 4 B: the buffer behind vLLM's DSA-indexer OOM reports), or the FP32 logits
of the last token. Expert streaming (prefill on the GPU with weights from host RAM) double-buffers
one weight tensor of a layer's experts (w1, w2 or w3 for every expert: a third of the layer), as
llama.cpp copies one expert tensor at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil

from mv4deploy.model.spec import Arch
from mv4deploy.plan.workload import ACTIVATION_BYTES, Workload

LOGIT_BYTES = 4        # FP32


@dataclass(frozen=True)
class Workspace:
    residual_bytes: int
    largest_transient_bytes: int
    largest_transient: str
    stream_buffer_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.residual_bytes + self.largest_transient_bytes + self.stream_buffer_bytes

    def to_json(self) -> dict:
        return {"residual_bytes": self.residual_bytes, "largest_transient_bytes": self.largest_transient_bytes,
                "largest_transient": self.largest_transient, "stream_buffer_bytes": self.stream_buffer_bytes,
                "total_bytes": self.total_bytes}


def _moe_width(spec) -> tuple[int, int]:
    """(intermediate width one token activates in its MLP, experts per token) for the widest layer."""
    experts = getattr(spec, "num_experts_per_tok", 0)
    if experts:
        moe = (experts + getattr(spec, "n_shared_experts", 0)) * spec.moe_intermediate_size
        return max(moe, getattr(spec, "intermediate_size", 0)), experts
    return spec.intermediate_size, 1


def _query_width(spec) -> int:
    if spec.architecture in (Arch.DEEPSEEK_V3, Arch.DEEPSEEK_V32):
        return spec.num_attention_heads * (spec.qk_nope_head_dim + spec.qk_rope_head_dim)
    return spec.num_attention_heads * spec.head_dim


def _indexer_keys(spec, context_tokens: int) -> int:
    """Keys the indexer scores per query: every compressed entry (V4 CSA: N/4) or every token (V3.2)."""
    if not getattr(spec, "index_topk", 0):
        return 0
    ratios = [r for r in getattr(spec, "compress_ratios", (1,))[: spec.num_hidden_layers] if r and r < 128]
    return ceil(context_tokens / min(ratios)) if ratios else context_tokens


def transients(spec, workload: Workload) -> dict[str, int]:
    tokens = max(workload.chunk_tokens, workload.batch)
    mlp, experts = _moe_width(spec)
    return {
        "attention queries": tokens * _query_width(spec) * ACTIVATION_BYTES,
        "MLP intermediate (gate + up)": tokens * 2 * mlp * ACTIVATION_BYTES,
        "MoE dispatch copy": tokens * experts * spec.hidden_size * ACTIVATION_BYTES,
        "indexer logits": workload.chunk_tokens * _indexer_keys(spec, workload.context_tokens) * LOGIT_BYTES,
        "output logits": workload.batch * spec.vocab_size * LOGIT_BYTES,
    }


def workspace(spec, workload: Workload, stream_buffer_bytes: int = 0) -> Workspace:
    tokens = max(workload.chunk_tokens, workload.batch)
    residual = 2 * tokens * spec.hidden_size * spec.hc_mult * ACTIVATION_BYTES
    name, largest = max(sorted(transients(spec, workload).items()), key=lambda kv: kv[1])
    return Workspace(residual, largest, name, stream_buffer_bytes)


def stream_buffer_bytes(expert_group_bytes: int) -> int:
    """Two buffers of one of a layer's three expert weight tensors."""
    return 2 * ceil(expert_group_bytes / 3)
