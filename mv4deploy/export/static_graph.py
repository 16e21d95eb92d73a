"""A Qwen2/Llama decoder with static shapes and an explicit KV window, for NPUs (QNN HTP).

The QNN HTP backend compiles a graph for fixed tensor shapes and has no GroupQueryAttention kernel, so
this module re-states the decoder forward with plain ONNX-friendly ops over the transformers model's own
weights (nothing is copied or re-trained):

- inputs: ``input_ids`` int32 [1, T], ``position_ids`` int32 [1, T], ``attention_bias`` float32
  [1, 1, T, C + T] (0 where a key may be attended, ``MASK_VALUE`` elsewhere; the host builds it), and per
  layer ``past_key_i`` / ``past_value_i`` float32 [1, KV, C, D]: C cache slots, filled left to right;
- outputs: ``logits`` [1, T, V] and per layer ``present_key_i`` / ``present_value_i`` [1, KV, T, D], the
  keys (after RoPE) and values of the T new tokens only. The host writes them into slots n .. n+T-1.

Only the T new entries leave the graph (no ScatterND, which the HTP lacks), and the mask is an input
(no int64 comparisons on the NPU). RoPE comes from a cos/sin table of C + T rows computed by the model's
own rotary module (so rope scaling such as Llama 3's is whatever transformers does), gathered by
``position_ids``. The mask value (``static_host.MASK_VALUE``) is -100, not -inf.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class StaticDecoder(nn.Module):
    """Wraps a ``Qwen2ForCausalLM`` or ``LlamaForCausalLM`` (fp32) for T new tokens over C cache slots."""

    def __init__(self, model: nn.Module, cache_tokens: int, step_tokens: int):
        super().__init__()
        cfg = model.config
        self.model = model
        self.cache_tokens, self.step_tokens = cache_tokens, step_tokens
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        positions = torch.arange(cache_tokens + step_tokens).view(1, -1)
        with torch.no_grad():
            cos, sin = model.model.rotary_emb(torch.zeros(1, dtype=torch.float32), positions)
        self.register_buffer("rope_cos", cos[0].float().contiguous(), persistent=False)   # [C + T, D]
        self.register_buffer("rope_sin", sin[0].float().contiguous(), persistent=False)

    def forward(self, input_ids: Tensor, position_ids: Tensor, attention_bias: Tensor, *past: Tensor):
        inner = self.model.model
        hidden = inner.embed_tokens(input_ids[0])                                # [T, H]
        cos = nn.functional.embedding(position_ids[0], self.rope_cos)            # [T, D]: a Gather
        sin = nn.functional.embedding(position_ids[0], self.rope_sin)
        presents: list[Tensor] = []
        for i, layer in enumerate(inner.layers):
            attn_out, key, value = self._attention(layer.self_attn, _rms_norm(layer.input_layernorm, hidden),
                                                   cos, sin, attention_bias, past[2 * i], past[2 * i + 1])
            presents += [key, value]
            hidden = hidden + attn_out
            hidden = hidden + _mlp(layer.mlp, _rms_norm(layer.post_attention_layernorm, hidden))
        logits = _linear(self.model.lm_head, _rms_norm(inner.norm, hidden))     # [T, V]
        return (logits.unsqueeze(0), *presents)

    def _attention(self, attn, x, cos, sin, bias, past_key, past_value):
        t, d, group = x.shape[0], self.head_dim, self.heads // self.kv_heads
        q = _linear(attn.q_proj, x).view(t, self.heads, d).transpose(0, 1)      # [H, T, D]
        k = _linear(attn.k_proj, x).view(t, self.kv_heads, d).transpose(0, 1)   # [KV, T, D]
        v = _linear(attn.v_proj, x).view(t, self.kv_heads, d).transpose(0, 1)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        keys = torch.cat([past_key[0], k], dim=1)                                # [KV, C + T, D]
        values = torch.cat([past_value[0], v], dim=1)
        slots = keys.shape[1]
        keys = keys.unsqueeze(1).expand(self.kv_heads, group, slots, d).reshape(self.heads, slots, d)
        values = values.unsqueeze(1).expand(self.kv_heads, group, slots, d).reshape(self.heads, slots, d)
        scores = torch.matmul(q * d ** -0.5, keys.transpose(1, 2)) + bias[0]     # [H, T, C + T]
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(probs, values).transpose(0, 1).reshape(t, self.heads * d)
        return _linear(attn.o_proj, out), k.unsqueeze(0), v.unsqueeze(0)


def _linear(module: nn.Linear, x: Tensor) -> Tensor:
    """On a 2-D input F.linear exports as Gemm(transB=1), whose weight [out, in] the QNN quantizer can
    scale per output channel (MatMul weights only get one scale per tensor: too coarse for 4 bits)."""
    return nn.functional.linear(x, module.weight, module.bias)


def _mlp(mlp: nn.Module, x: Tensor) -> Tensor:
    return _linear(mlp.down_proj, mlp.act_fn(_linear(mlp.gate_proj, x)) * _linear(mlp.up_proj, x))


def _rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


def _rms_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """transformers' RMSNorm as x / sqrt(mean(x^2) + eps) * w. Not x * rsqrt(...): rsqrt exports as Sqrt +
    Reciprocal, and the QNN HTP backend (QNN 2.51, 16-bit) returns wrong values for Reciprocal outputs
    above ~1 (1/0.018 came back as 1.33, not 55.6), while Div is exact to the quantization step."""
    variance = x.pow(2).mean(-1, keepdim=True)
    return norm.weight * (x / torch.sqrt(variance + norm.variance_epsilon))
