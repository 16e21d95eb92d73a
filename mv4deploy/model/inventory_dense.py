"""Inventory of the Qwen2 / Llama distillates (HF names, one format for every tensor)."""

from __future__ import annotations

from mv4deploy.model.tensors import Role, TensorTable, _Builder, registers
from mv4deploy.model.spec import Arch, DenseSpec


@registers(Arch.QWEN2, Arch.LLAMA)
def dense_tensors(spec: DenseSpec) -> TensorTable:
    b, fmt, plain = _Builder(), spec.formats.linear, spec.formats.plain
    h, kv_dim = spec.hidden_size, spec.num_key_value_heads * spec.head_dim
    q_dim = spec.num_attention_heads * spec.head_dim
    b.add("model.embed_tokens.weight", (spec.vocab_size, h), plain, Role.EMBEDDING)
    for i in range(spec.num_hidden_layers):
        p = f"model.layers.{i}."
        for proj, rows in (("q_proj", q_dim), ("k_proj", kv_dim), ("v_proj", kv_dim)):
            b.add(f"{p}self_attn.{proj}.weight", (rows, h), fmt, Role.ATTENTION, i)
            if spec.attention_bias:
                b.add(f"{p}self_attn.{proj}.bias", (rows,), plain, Role.ATTENTION, i)
        b.add(f"{p}self_attn.o_proj.weight", (h, q_dim), fmt, Role.ATTENTION, i)
        if spec.attention_bias and spec.architecture is Arch.LLAMA:
            b.add(f"{p}self_attn.o_proj.bias", (h,), plain, Role.ATTENTION, i)
        b.add(f"{p}mlp.gate_proj.weight", (spec.intermediate_size, h), fmt, Role.DENSE_MLP, i)
        b.add(f"{p}mlp.up_proj.weight", (spec.intermediate_size, h), fmt, Role.DENSE_MLP, i)
        b.add(f"{p}mlp.down_proj.weight", (h, spec.intermediate_size), fmt, Role.DENSE_MLP, i)
        b.add(f"{p}input_layernorm.weight", (h,), plain, Role.NORM, i)
        b.add(f"{p}post_attention_layernorm.weight", (h,), plain, Role.NORM, i)
    b.add("model.norm.weight", (h,), plain, Role.NORM)
    if not spec.tie_word_embeddings:
        b.add("lm_head.weight", (spec.vocab_size, h), plain, Role.LM_HEAD)
    return b.built()
