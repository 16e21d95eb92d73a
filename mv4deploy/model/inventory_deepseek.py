"""Inventories of the DeepSeek families: V3 / V3.2 (HF names) and V4 / V4.1 (DeepSeek-native names).

Layouts follow the shipped checkpoints; each reproduces the released tensor count and payload bytes
exactly (tests/test_inventory.py pins them; the sources are listed in docs/inventory.md).
"""

from __future__ import annotations

from mv4deploy.model.tensors import Role, TensorTable, _Builder, registers
from mv4deploy.model.spec import Arch, DeepseekV3Spec, DeepseekV4Spec


@registers(Arch.DEEPSEEK_V3, Arch.DEEPSEEK_V32)
def deepseek_v3_tensors(spec: DeepseekV3Spec) -> TensorTable:
    """``model.layers.N.*``; layers ``num_hidden_layers`` onward are MTP modules: a full decoder layer
    plus ``enorm``/``hnorm``/``eh_proj`` (BF16) and their own stored copies of embedding and head."""
    n_layers, mtp = spec.num_hidden_layers, spec.num_nextn_predict_layers
    b = _Builder(mtp_from=n_layers)
    plain, norm, h, vocab = spec.formats.plain, spec.formats.norm, spec.hidden_size, spec.vocab_size
    b.add("model.embed_tokens.weight", (vocab, h), plain, Role.EMBEDDING)
    for i in range(n_layers + mtp):
        _v3_layer(b, spec, i)
        if i >= n_layers:
            p = f"model.layers.{i}."
            b.add(f"{p}embed_tokens.weight", (vocab, h), plain, Role.EMBEDDING, i)
            b.add(f"{p}enorm.weight", (h,), norm, Role.NORM, i)
            b.add(f"{p}hnorm.weight", (h,), norm, Role.NORM, i)
            b.add(f"{p}eh_proj.weight", (h, 2 * h), plain, Role.ATTENTION, i)
            b.add(f"{p}shared_head.norm.weight", (h,), norm, Role.NORM, i)
            b.add(f"{p}shared_head.head.weight", (vocab, h), plain, Role.LM_HEAD, i)
    b.add("model.norm.weight", (h,), norm, Role.NORM)
    b.add("lm_head.weight", (vocab, h), plain, Role.LM_HEAD)
    return b.built()


def _v3_layer(b: _Builder, spec: DeepseekV3Spec, i: int) -> None:
    p, h, fmt, norm = f"model.layers.{i}.", spec.hidden_size, spec.formats.linear, spec.formats.norm
    heads, qk_dim = spec.num_attention_heads, spec.qk_nope_head_dim + spec.qk_rope_head_dim
    a = f"{p}self_attn."
    if spec.q_lora_rank:
        b.add(f"{a}q_a_proj.weight", (spec.q_lora_rank, h), fmt, Role.ATTENTION, i)
        b.add(f"{a}q_a_layernorm.weight", (spec.q_lora_rank,), norm, Role.NORM, i)
        b.add(f"{a}q_b_proj.weight", (heads * qk_dim, spec.q_lora_rank), fmt, Role.ATTENTION, i)
    else:
        b.add(f"{a}q_proj.weight", (heads * qk_dim, h), fmt, Role.ATTENTION, i)
    b.add(f"{a}kv_a_proj_with_mqa.weight", (spec.kv_lora_rank + spec.qk_rope_head_dim, h), fmt, Role.ATTENTION, i)
    b.add(f"{a}kv_a_layernorm.weight", (spec.kv_lora_rank,), norm, Role.NORM, i)
    b.add(f"{a}kv_b_proj.weight", (heads * (spec.qk_nope_head_dim + spec.v_head_dim), spec.kv_lora_rank),
          fmt, Role.ATTENTION, i)
    b.add(f"{a}o_proj.weight", (h, heads * spec.v_head_dim), fmt, Role.ATTENTION, i)
    if spec.index_n_heads:  # V3.2 DSA indexer: LayerNorm with bias on its keys
        x, d = f"{a}indexer.", spec.index_head_dim
        b.add(f"{x}wq_b.weight", (spec.index_n_heads * d, spec.q_lora_rank), fmt, Role.INDEXER, i)
        b.add(f"{x}wk.weight", (d, h), fmt, Role.INDEXER, i)
        b.add(f"{x}k_norm.weight", (d,), norm, Role.INDEXER, i)
        b.add(f"{x}k_norm.bias", (d,), norm, Role.INDEXER, i)
        b.add(f"{x}weights_proj.weight", (spec.index_n_heads, h), spec.formats.plain, Role.INDEXER, i)
    b.add(f"{p}input_layernorm.weight", (h,), norm, Role.NORM, i)
    b.add(f"{p}post_attention_layernorm.weight", (h,), norm, Role.NORM, i)
    m = f"{p}mlp."
    if not spec.is_moe_layer(i):
        _swiglu(b, m, ("gate_proj", "up_proj", "down_proj"), spec.intermediate_size, h, fmt, Role.DENSE_MLP, i)
        return
    b.add(f"{m}gate.weight", (spec.n_routed_experts, h), spec.formats.plain, Role.ROUTER, i)
    b.add(f"{m}gate.e_score_correction_bias", (spec.n_routed_experts,), "f32", Role.ROUTER, i)
    b.experts(f"{m}experts.", _swiglu_shapes(("gate_proj", "up_proj", "down_proj"), spec.moe_intermediate_size, h),
              spec.n_routed_experts, spec.formats.expert, i)
    if spec.n_shared_experts:
        _swiglu(b, f"{m}shared_experts.", ("gate_proj", "up_proj", "down_proj"),
                spec.moe_intermediate_size * spec.n_shared_experts, h, fmt, Role.SHARED_EXPERT, i)


def _swiglu_shapes(names: tuple[str, str, str], inter: int, h: int) -> tuple[tuple[str, tuple[int, int]], ...]:
    """gate [inter, h], down [h, inter], up [inter, h] under the family's names (the order they are listed)."""
    gate, up, down = names
    return ((gate, (inter, h)), (down, (h, inter)), (up, (inter, h)))


def _swiglu(b: _Builder, prefix: str, names: tuple[str, str, str], inter: int, h: int, fmt: str, role: Role,
            layer: int) -> None:
    """One (non-routed) SwiGLU MLP; routed experts go through ``_Builder.experts``."""
    for name, shape in _swiglu_shapes(names, inter, h):
        b.add(f"{prefix}{name}.weight", shape, fmt, role, layer)


V4_SWIGLU = ("w1", "w3", "w2")  # native names of gate, up, down


@registers(Arch.DEEPSEEK_V4, Arch.DEEPSEEK_V41)
def deepseek_v4_tensors(spec: DeepseekV4Spec) -> TensorTable:
    """Native names (no ``model.`` prefix); MTP / DSpark blocks are ``mtp.{i}.*`` and share embed/head."""
    n_layers, h, vocab = spec.num_hidden_layers, spec.hidden_size, spec.vocab_size
    plain, norm, v41 = spec.formats.plain, spec.formats.norm, spec.architecture is Arch.DEEPSEEK_V41
    b = _Builder(mtp_from=n_layers)
    b.add("embed.weight", (vocab, h), plain, Role.EMBEDDING)
    b.add("head.weight", (vocab, h), plain, Role.LM_HEAD)
    b.add("norm.weight", (h,), norm, Role.NORM)
    if not v41:  # V4.1 has no learned hc_head
        _hc_head(b, "", spec, None)
    for i in range(n_layers):
        _v4_block(b, spec, f"layers.{i}.", i)
    for m in range(spec.num_nextn_predict_layers):
        layer, p = n_layers + m, f"mtp.{m}."
        _v4_block(b, spec, p, layer)
        if spec.dspark is not None:  # V4.1, V4-Flash-0731: DSpark draft layers
            _dspark_extras(b, spec, p, m, layer)
        else:
            b.add(f"{p}e_proj.weight", (h, h), spec.formats.linear, Role.ATTENTION, layer)
            b.add(f"{p}h_proj.weight", (h, h), spec.formats.linear, Role.ATTENTION, layer)
            for name in ("enorm", "hnorm", "norm"):
                b.add(f"{p}{name}.weight", (h,), norm, Role.NORM, layer)
            _hc_head(b, p, spec, layer)
    if spec.vision is not None:
        _vision(b, spec)
    return b.built()


def _hc_head(b: _Builder, p: str, spec: DeepseekV4Spec, layer: int | None) -> None:
    hc = spec.hc_mult
    b.add(f"{p}hc_head_fn", (hc, hc * spec.hidden_size), "f32", Role.MHC, layer)
    b.add(f"{p}hc_head_base", (hc,), "f32", Role.MHC, layer)
    b.add(f"{p}hc_head_scale", (1,), "f32", Role.MHC, layer)


def _v4_block(b: _Builder, spec: DeepseekV4Spec, p: str, i: int) -> None:
    h, fmt, norm, hc = spec.hidden_size, spec.formats.linear, spec.formats.norm, spec.hc_mult
    heads, hd, ql = spec.num_attention_heads, spec.head_dim, spec.q_lora_rank
    a = f"{p}attn."
    b.add(f"{a}attn_sink", (heads,), "f32", Role.ATTENTION, i)
    b.add(f"{a}wq_a.weight", (ql, h), fmt, Role.ATTENTION, i)
    b.add(f"{a}q_norm.weight", (ql,), norm, Role.NORM, i)
    b.add(f"{a}wq_b.weight", (heads * hd, ql), fmt, Role.ATTENTION, i)
    b.add(f"{a}wkv.weight", (hd, h), fmt, Role.ATTENTION, i)  # one shared KV head, K = V
    b.add(f"{a}kv_norm.weight", (hd,), norm, Role.NORM, i)
    group_rows = spec.o_groups * spec.o_lora_rank           # grouped low-rank output projection
    b.add(f"{a}wo_a.weight", (group_rows, heads * hd // spec.o_groups), fmt, Role.ATTENTION, i)
    b.add(f"{a}wo_b.weight", (h, group_rows), fmt, Role.ATTENTION, i)
    if spec.owns_compressor(i):
        _compressor(b, spec, f"{a}compressor.", i, spec.ratio(i), hd)
    if spec.owns_indexer(i):
        x = f"{a}indexer."
        b.add(f"{x}wq_b.weight", (spec.index_n_heads * spec.index_head_dim, ql), fmt, Role.INDEXER, i)
        b.add(f"{x}weights_proj.weight", (spec.index_n_heads, h), spec.formats.plain, Role.INDEXER, i)
        if spec.architecture is Arch.DEEPSEEK_V4:  # V4: the indexer compresses its own keys
            _compressor(b, spec, f"{x}compressor.", i, spec.ratio(i), spec.index_head_dim, Role.INDEXER)
    if spec.architecture is Arch.DEEPSEEK_V41 and spec.owns_compressor(i):  # V4.1: keys from the latent
        b.add(f"{a}indexer.wk.weight", (spec.index_head_dim, hd), spec.formats.plain, Role.INDEXER, i)
        b.add(f"{a}indexer.k_norm.weight", (spec.index_head_dim,), norm, Role.INDEXER, i)
    b.add(f"{p}attn_norm.weight", (h,), norm, Role.NORM, i)
    b.add(f"{p}ffn_norm.weight", (h,), norm, Role.NORM, i)
    for sub in ("attn", "ffn"):  # mHC: (2 + hc) * hc mixes from the flattened hc-wide stream
        b.add(f"{p}hc_{sub}_fn", ((2 + hc) * hc, hc * h), "f32", Role.MHC, i)
        b.add(f"{p}hc_{sub}_base", ((2 + hc) * hc,), "f32", Role.MHC, i)
        b.add(f"{p}hc_{sub}_scale", (3,), "f32", Role.MHC, i)
    _v4_moe(b, spec, f"{p}ffn.", i)
    if spec.engram is not None and i in spec.engram.layer_ids:
        _engram(b, spec, f"{p}engram.", i)


def _compressor(b: _Builder, spec: DeepseekV4Spec, p: str, i: int, ratio: int, dim: int,
                role: Role = Role.COMPRESSOR) -> None:
    """V4: ratio-4 windows overlap (twice the rows and width) and carry a learned position bias ``ape``.
    V4.1: no ``ape``; ratio 1 keeps one latent per token without a gate."""
    width = 2 * dim if ratio == 4 else dim
    v4 = spec.architecture is Arch.DEEPSEEK_V4
    if v4:
        b.add(f"{p}ape", (ratio, width), "f32", role, i)
    b.add(f"{p}wkv.weight", (width, spec.hidden_size), spec.formats.plain, role, i)
    if v4 or ratio > 1:
        b.add(f"{p}wgate.weight", (width, spec.hidden_size), spec.formats.plain, role, i)
    b.add(f"{p}norm.weight", (dim,), spec.formats.norm, role, i)


def _v4_moe(b: _Builder, spec: DeepseekV4Spec, f: str, i: int) -> None:
    h, draft = spec.hidden_size, i >= spec.num_hidden_layers and spec.dspark is not None
    experts = spec.dspark.n_routed_experts if draft else spec.n_routed_experts
    top_k = spec.dspark.num_experts_per_tok if draft else spec.num_experts_per_tok
    hashed = i < spec.num_hash_layers
    b.add(f"{f}gate.weight", (experts, h), spec.formats.plain, Role.HASH_ROUTER if hashed else Role.ROUTER, i)
    if hashed:
        b.table(f"{f}gate.tid2eid", "I64", (spec.vocab_size, top_k), Role.HASH_ROUTER, i)
    else:
        b.add(f"{f}gate.bias", (experts,), "f32", Role.ROUTER, i)
        if spec.architecture is Arch.DEEPSEEK_V41:  # routing bias for image tokens
            b.add(f"{f}gate.bias_vl", (experts,), "f32", Role.ROUTER, i)
    b.experts(f"{f}experts.", _swiglu_shapes(V4_SWIGLU, spec.moe_intermediate_size, h), experts,
              spec.formats.expert, i)
    _swiglu(b, f"{f}shared_experts.", V4_SWIGLU, spec.moe_intermediate_size * spec.n_shared_experts, h,
            spec.formats.linear, Role.SHARED_EXPERT, i)


def _engram(b: _Builder, spec: DeepseekV4Spec, p: str, i: int) -> None:
    """One table of sum(primes) rows x head_dim, then ``wkv`` mapping the concatenated head rows to
    hc keys + 1 value (hence hidden x (hc + 1) rows), and per-stream norm weights for the gate."""
    engram, h, hc = spec.engram, spec.hidden_size, spec.hc_mult
    rows = engram.num_embeddings[engram.layer_ids.index(i)]
    b.add(f"{p}embed.weight", (rows, engram.head_dim), spec.formats.engram_table, Role.ENGRAM_TABLE, i)
    b.add(f"{p}wkv.weight", (h * (hc + 1), engram.hash_columns * engram.head_dim), spec.formats.linear,
          Role.ENGRAM_PROJ, i)
    b.add(f"{p}q_weight", (hc, h), spec.formats.plain, Role.ENGRAM_PROJ, i)
    b.add(f"{p}k_weight", (hc, h), spec.formats.plain, Role.ENGRAM_PROJ, i)


def _dspark_extras(b: _Builder, spec: DeepseekV4Spec, p: str, m: int, layer: int) -> None:
    h, plain, norm = spec.hidden_size, spec.formats.plain, spec.formats.norm
    dspark = spec.dspark
    if m == 0:
        b.add(f"{p}main_proj.weight", (h, h * len(dspark.target_layer_ids)), spec.formats.linear,
              Role.ATTENTION, layer)
        b.add(f"{p}main_norm.weight", (h,), norm, Role.NORM, layer)
    if m == spec.num_nextn_predict_layers - 1:
        b.add(f"{p}norm.weight", (h,), norm, Role.NORM, layer)
        b.add(f"{p}markov_head.embed.weight", (spec.vocab_size, dspark.markov_rank), plain, Role.LM_HEAD, layer)
        b.add(f"{p}markov_head.head.weight", (spec.vocab_size, dspark.markov_rank), plain, Role.LM_HEAD, layer)
        b.add(f"{p}confidence_head.proj.weight", (1, h + dspark.markov_rank), plain, Role.LM_HEAD, layer)
        if spec.architecture is Arch.DEEPSEEK_V4:  # V4-Flash-0731: the last draft layer folds its hc streams
            _hc_head(b, p, spec, layer)


def _vision(b: _Builder, spec: DeepseekV4Spec) -> None:
    v, plain, h = spec.vision, spec.formats.plain, spec.hidden_size
    d = v.hidden_size
    b.add("vision.patch_embed.proj.weight", (d, 3 * v.patch_size**2), plain, Role.VISION)
    b.add("vision.patch_embed.proj.bias", (d,), plain, Role.VISION)
    for k in range(v.num_hidden_layers):
        q = f"vision.blocks.{k}."
        for name, shape in ((f"{q}norm1.weight", (d,)), (f"{q}attn.wqkv.weight", (3 * d, d)),
                            (f"{q}attn.wqkv.bias", (3 * d,)), (f"{q}attn.wo.weight", (d, d)),
                            (f"{q}attn.wo.bias", (d,)), (f"{q}norm2.weight", (d,)),
                            (f"{q}mlp.w1.weight", (2 * v.intermediate_size, d)),
                            (f"{q}mlp.w2.weight", (d, v.intermediate_size))):
            b.add(name, shape, plain, Role.VISION)
    b.add("vision.norm.weight", (d,), plain, Role.VISION)
    b.add("aligner.w1.weight", (h, d * v.downsample_ratio**2), plain, Role.VISION)
    b.add("aligner.w1.bias", (h,), plain, Role.VISION)
    b.add("aligner.w2.weight", (h, h), plain, Role.VISION)
    b.add("aligner.w2.bias", (h,), plain, Role.VISION)
    for name in ("image_start", "image_end", "image_newline"):
        b.add(name, (h,), plain, Role.VISION)
