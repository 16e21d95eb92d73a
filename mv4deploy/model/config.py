"""Read a config.json (DeepSeek-native keys or transformers' folded ones) into a ModelSpec.

Missing required keys, wrong types, absurd sizes and contradictory keys raise ``InputError`` naming
the file, the key and the value. Keys we know but that do not change what is stored or cached (router
scoring, rope details, token ids) are accepted silently; any other key is listed in
``spec.unknown_keys`` so that a new architecture feature is never silently ignored.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from mv4deploy.core import schema
from mv4deploy.core.errors import InputError
from mv4deploy.model import engram_tables
from mv4deploy.model.spec import (Arch, DeepseekV3Spec, DeepseekV4Spec, DenseSpec, DSparkSpec, EngramSpec,
                                  ModelSpec, VisionSpec)
from mv4deploy.core.schema import Section, boolean, integer, integers
from mv4deploy.model.quant_config import OURS_KEY, stored_formats

MODEL_TYPES = {
    "deepseek_v3": Arch.DEEPSEEK_V3, "kimi_k2": Arch.DEEPSEEK_V3, "deepseek_v32": Arch.DEEPSEEK_V32,
    "deepseek_v4": Arch.DEEPSEEK_V4, "deepseek_v41": Arch.DEEPSEEK_V41, "deepseek_v41_text": Arch.DEEPSEEK_V41,
    "qwen2": Arch.QWEN2, "llama": Arch.LLAMA,
}
ARCHITECTURES = {
    "DeepseekV3ForCausalLM": Arch.DEEPSEEK_V3, "DeepseekV32ForCausalLM": Arch.DEEPSEEK_V32,
    "DeepseekV4ForCausalLM": Arch.DEEPSEEK_V4, "DeepseekV41ForCausalLM": Arch.DEEPSEEK_V41,
    "Qwen2ForCausalLM": Arch.QWEN2, "LlamaForCausalLM": Arch.LLAMA,
}

# Keys that change nothing we count (bytes, tensors, KV): accepted without a warning.
GENERIC_KEYS = frozenset({
    "architectures", "model_type", "torch_dtype", "dtype", "transformers_version", "_name_or_path",
    "bos_token_id", "eos_token_id", "pad_token_id", "initializer_range", "use_cache", "attention_dropout",
    "hidden_act", "auto_map", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
    "quantization_config", "pretraining_tp", "output_router_logits", "router_aux_loss_coef",
    "router_jitter_noise", "mlp_bias", "text_config", "return_dict", "output_hidden_states",
    "output_attentions", "tie_word_embeddings", "max_position_embeddings", "vocab_size",
    "hidden_size", "num_hidden_layers", "num_nextn_predict_layers", "attention_bias",
    # written by transformers' save_pretrained
    "chunk_size_feed_forward", "id2label", "label2id", "is_encoder_decoder", "problem_type",
    OURS_KEY,
})
ROUTER_KEYS = frozenset({"scoring_func", "topk_method", "routed_scaling_factor", "norm_topk_prob",
                         "n_group", "topk_group", "ep_size", "aux_loss_alpha", "seq_aux"})
FAMILY_KEYS = {
    Arch.QWEN2: frozenset({"use_sliding_window", "sliding_window", "max_window_layers", "layer_types",
                           "use_mrope"}),
    Arch.LLAMA: frozenset(),
    Arch.DEEPSEEK_V3: ROUTER_KEYS,
    Arch.DEEPSEEK_V32: ROUTER_KEYS,
    Arch.DEEPSEEK_V4: ROUTER_KEYS | {"swiglu_limit", "hc_sinkhorn_iters", "hc_eps", "compress_rope_theta",
                                     "expert_dtype", "layer_types", "mlp_layer_types", "partial_rotary_factor",
                                     "compress_rates"},
}
FAMILY_KEYS[Arch.DEEPSEEK_V41] = FAMILY_KEYS[Arch.DEEPSEEK_V4] | {
    "candidate_source_layer_id", "candidate_topk_blocks", "candidate_block_size", "image_token_id",
}
_MISSING = object()
_MAX_DIM = 2**22  # 4M: no hidden size, vocabulary or expert count comes near it
_V4_TYPE_RATIO = {"sliding_attention": 0}


class _Reader(Section):
    """Typed access to one config dict through ``schema.Section``; a config is not strict (``done`` is
    never called): keys nobody read are listed by ``unknown`` instead of refused."""

    suggest_typos = False   # a config has dozens of keys: a near name is rarely the one meant

    def __init__(self, cfg: dict, source: str):
        super().__init__(cfg, source)
        self.cfg = cfg
        self.extra_unknown: tuple[str, ...] = ()

    def int(self, key: str, default=_MISSING, minimum: int = 1, maximum: int = _MAX_DIM) -> int | None:
        return self.get(key, integer(minimum, maximum), required=default is _MISSING, default=default)

    def bool(self, key: str, default=_MISSING) -> bool:
        return self.get(key, boolean, required=default is _MISSING, default=default)

    def ints(self, key: str, default=_MISSING, minimum: int = 0) -> tuple[int, ...] | None:
        return self.get(key, integers(minimum), required=default is _MISSING, default=default)

    def unknown(self, arch: Arch) -> tuple[str, ...]:
        accepted = GENERIC_KEYS | FAMILY_KEYS[arch] | self.used
        return tuple(sorted([k for k in self.cfg if k not in accepted] + list(self.extra_unknown)))


def load_json(path: Path) -> dict:
    data = schema.load_json(path)
    if not isinstance(data, dict):
        raise InputError(path, None, type(data).__name__, "config must be a JSON object")
    return data


def read_config(raw: dict, source: str, name: str | None = None) -> ModelSpec:
    """Build the family's spec from a config dict (``source`` names it in errors)."""
    cfg, arch = _flatten(raw, source)
    return _BUILDERS[arch](_Reader(cfg, source), arch, name or source)


def _flatten(raw: dict, source: str) -> tuple[dict, Arch]:
    """Lift V4.1's ``text_config`` to the top (quantization_config stays) and find the family."""
    cfg = dict(raw)
    text = cfg.pop("text_config", None)
    if text is not None:
        if not isinstance(text, dict):
            raise InputError(source, "text_config", text, "must be an object")
        outer_type = cfg.get("model_type")
        cfg = {**{k: v for k, v in cfg.items() if k != "model_type"}, **text}
        cfg.setdefault("model_type", outer_type)
    model_type = cfg.get("model_type")
    architectures = cfg.get("architectures") or []
    arch = MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
    if arch is None and isinstance(architectures, list):
        arch = next((ARCHITECTURES[a] for a in architectures if a in ARCHITECTURES), None)
    if arch is None:
        known = ", ".join(sorted(MODEL_TYPES))
        raise InputError(source, "model_type", model_type, f"unsupported architecture; supported: {known}")
    return cfg, arch


def _dense(r: _Reader, arch: Arch, name: str) -> DenseSpec:
    hidden = r.int("hidden_size")
    heads = r.int("num_attention_heads")
    kv_heads = r.int("num_key_value_heads", heads)
    if heads % kv_heads:
        raise InputError(r.source, "num_key_value_heads", kv_heads,
                         f"must divide num_attention_heads ({heads})")
    head_dim = r.int("head_dim", None)
    if head_dim is None:
        if hidden % heads:
            raise InputError(r.source, "num_attention_heads", heads, f"must divide hidden_size ({hidden})")
        head_dim = hidden // heads
    spec = DenseSpec(
        name=name, architecture=arch, vocab_size=r.int("vocab_size"), hidden_size=hidden,
        num_hidden_layers=r.int("num_hidden_layers"), intermediate_size=r.int("intermediate_size"),
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
        attention_bias=arch is Arch.QWEN2 or r.bool("attention_bias", False),
        max_position_embeddings=r.int("max_position_embeddings", 4096, maximum=2**24),
        tie_word_embeddings=r.bool("tie_word_embeddings", False),
        formats=stored_formats(r.cfg, r.source, arch))
    return _with_unknown(spec, r, arch)


def _deepseek_v3(r: _Reader, arch: Arch, name: str) -> DeepseekV3Spec:
    layers = r.int("num_hidden_layers")
    routed = r.int("n_routed_experts")
    spec = DeepseekV3Spec(
        name=name, architecture=arch, vocab_size=r.int("vocab_size"), hidden_size=r.int("hidden_size"),
        num_hidden_layers=layers, num_nextn_predict_layers=r.int("num_nextn_predict_layers", 0, minimum=0),
        max_position_embeddings=r.int("max_position_embeddings", 4096, maximum=2**24),
        tie_word_embeddings=r.bool("tie_word_embeddings", False),
        intermediate_size=r.int("intermediate_size"), moe_intermediate_size=r.int("moe_intermediate_size"),
        first_k_dense_replace=r.int("first_k_dense_replace", 0, minimum=0, maximum=layers),
        moe_layer_freq=r.int("moe_layer_freq", 1), n_routed_experts=routed,
        n_shared_experts=r.int("n_shared_experts", 0, minimum=0),
        num_experts_per_tok=r.int("num_experts_per_tok", maximum=routed),
        num_attention_heads=r.int("num_attention_heads"), q_lora_rank=r.int("q_lora_rank", None),
        kv_lora_rank=r.int("kv_lora_rank"), qk_nope_head_dim=r.int("qk_nope_head_dim"),
        qk_rope_head_dim=r.int("qk_rope_head_dim"), v_head_dim=r.int("v_head_dim"),
        formats=stored_formats(r.cfg, r.source, arch),
        **_indexer(r, arch))
    heads, kv_heads = spec.num_attention_heads, r.int("num_key_value_heads", spec.num_attention_heads)
    if kv_heads != heads:
        raise InputError(r.source, "num_key_value_heads", kv_heads,
                         f"MLA models use num_key_value_heads == num_attention_heads ({heads})")
    return _with_unknown(spec, r, arch)


def _indexer(r: _Reader, arch: Arch) -> dict:
    if arch is not Arch.DEEPSEEK_V32:
        return {}
    return {"index_n_heads": r.int("index_n_heads"), "index_head_dim": r.int("index_head_dim"),
            "index_topk": r.int("index_topk")}


def _deepseek_v4(r: _Reader, arch: Arch, name: str) -> DeepseekV4Spec:
    layers = r.int("num_hidden_layers")
    mtp = r.int("num_nextn_predict_layers", 0, minimum=0)
    routed = r.int("n_routed_experts")
    head_dim = r.int("head_dim")
    spec = DeepseekV4Spec(
        name=name, architecture=arch, vocab_size=r.int("vocab_size"), hidden_size=r.int("hidden_size"),
        num_hidden_layers=layers, num_nextn_predict_layers=mtp,
        max_position_embeddings=r.int("max_position_embeddings", 4096, maximum=2**24),
        tie_word_embeddings=r.bool("tie_word_embeddings", False),
        moe_intermediate_size=r.int("moe_intermediate_size"), num_attention_heads=r.int("num_attention_heads"),
        num_key_value_heads=r.int("num_key_value_heads", 1, maximum=1), head_dim=head_dim,
        qk_rope_head_dim=_rope_head_dim(r, head_dim), q_lora_rank=r.int("q_lora_rank"),
        o_groups=r.int("o_groups"), o_lora_rank=r.int("o_lora_rank"), n_routed_experts=routed,
        n_shared_experts=r.int("n_shared_experts", 0, minimum=0),
        num_experts_per_tok=r.int("num_experts_per_tok", maximum=routed),
        num_hash_layers=_num_hash_layers(r, layers), compress_ratios=_compress_ratios(r, arch, layers, mtp),
        sliding_window=r.int("sliding_window"), index_n_heads=r.int("index_n_heads"),
        index_head_dim=r.int("index_head_dim"), index_topk=r.int("index_topk"),
        hc_mult=r.int("hc_mult", 1, maximum=64), formats=stored_formats(r.cfg, r.source, arch),
        engram=_engram(r, layers), dspark=_dspark(r, layers), vision=_vision(r),
        kv_source_layer_ids=_layer_ids(r, "kv_source_layer_ids", layers),
        index_source_layer_ids=_layer_ids(r, "index_source_layer_ids", layers))
    if spec.num_attention_heads % spec.o_groups:
        raise InputError(r.source, "o_groups", spec.o_groups,
                         f"must divide num_attention_heads ({spec.num_attention_heads})")
    return _with_unknown(spec, r, arch)


def _rope_head_dim(r: _Reader, head_dim: int) -> int:
    native = r.int("qk_rope_head_dim", None)
    factor = r.cfg.get("partial_rotary_factor")
    r.used.add("partial_rotary_factor")
    if factor is not None:
        if not isinstance(factor, (int, float)) or not 0 < factor <= 1:
            raise InputError(r.source, "partial_rotary_factor", factor, "must be a number in (0, 1]")
        folded = round(head_dim * factor)
        if native is not None and native != folded:
            raise InputError(r.source, "partial_rotary_factor", factor,
                             f"contradicts qk_rope_head_dim={native} (head_dim {head_dim})")
        return folded
    if native is None:
        raise InputError(r.source, "qk_rope_head_dim", None, "required key is missing (or partial_rotary_factor)")
    if native > head_dim:
        raise InputError(r.source, "qk_rope_head_dim", native, f"exceeds head_dim ({head_dim})")
    return native


def _num_hash_layers(r: _Reader, layers: int) -> int:
    native = r.int("num_hash_layers", None, minimum=0, maximum=layers)
    types = r.cfg.get("mlp_layer_types")
    r.used.add("mlp_layer_types")
    if types is None:
        return native if native is not None else 0
    allowed = {"hash_moe", "moe"}
    if not isinstance(types, list) or len(types) != layers or not set(types) <= allowed:
        raise InputError(r.source, "mlp_layer_types", types,
                         f"must list {layers} entries from {sorted(allowed)}")
    folded = types.count("hash_moe")
    if types[:folded] != ["hash_moe"] * folded:
        raise InputError(r.source, "mlp_layer_types", types, "hash_moe layers must come before moe layers")
    if native is not None and native != folded:
        raise InputError(r.source, "num_hash_layers", native, f"contradicts mlp_layer_types ({folded} hash_moe)")
    return folded


def _compress_ratios(r: _Reader, arch: Arch, layers: int, mtp: int) -> tuple[int, ...]:
    allowed = {0, 1, 2} if arch is Arch.DEEPSEEK_V41 else {0, 4, 128}
    native = r.ints("compress_ratios", None)
    folded = _ratios_from_layer_types(r, layers, mtp)
    if native is None and folded is None:
        raise InputError(r.source, "compress_ratios", None, "required key is missing (or layer_types)")
    if native is not None:
        if len(native) == layers:
            native = native + (0,) * mtp  # an MTP layer is sliding-window only in every released config
        if len(native) != layers + mtp:
            raise InputError(r.source, "compress_ratios", f"{len(native)} entries",
                             f"expected num_hidden_layers + num_nextn_predict_layers = {layers + mtp}")
        bad = sorted(set(native) - allowed)
        if bad:
            raise InputError(r.source, "compress_ratios", bad[0], f"ratio must be one of {sorted(allowed)}")
        if folded is not None and folded[:layers] != native[:layers]:
            raise InputError(r.source, "layer_types", None, "contradicts compress_ratios")
        return native
    return folded


def _ratios_from_layer_types(r: _Reader, layers: int, mtp: int) -> tuple[int, ...] | None:
    types = r.cfg.get("layer_types")
    r.used.update({"layer_types", "compress_rates"})
    if types is None:
        return None
    rates = {"compressed_sparse_attention": 4, "heavily_compressed_attention": 128,
             **(r.cfg.get("compress_rates") or {}), **_V4_TYPE_RATIO}
    if not isinstance(types, list) or len(types) != layers or not all(t in rates for t in types):
        raise InputError(r.source, "layer_types", types, f"must list {layers} entries from {sorted(rates)}")
    return tuple(rates[t] for t in types) + (0,) * mtp


def _layer_ids(r: _Reader, key: str, layers: int) -> tuple[int, ...] | None:
    ids = r.ints(key, None)
    if ids is not None and any(i >= layers for i in ids):
        raise InputError(r.source, key, list(ids), f"layer ids must be < num_hidden_layers ({layers})")
    return ids


def _engram(r: _Reader, layers: int) -> EngramSpec | None:
    layer_ids = _layer_ids(r, "engram_layer_ids", layers)
    if not layer_ids:
        return None
    max_n, heads = r.int("engram_max_ngram_size", minimum=2, maximum=16), r.int("engram_n_heads")
    vocab = r.int("engram_vocab_size", maximum=2**40)
    computed = engram_tables.table_rows(vocab, max_n, heads, len(layer_ids))
    rows = r.ints("engram_num_embeddings", None, minimum=1) or computed
    if len(rows) != len(layer_ids):
        raise InputError(r.source, "engram_num_embeddings", list(rows),
                         f"needs one entry per engram layer ({len(layer_ids)})")
    pad = r.int("engram_pad_token_id", None, minimum=0, maximum=2**40)
    if pad is None:
        pad = r.int("engram_pad_id", 0, minimum=0, maximum=2**40)
    return EngramSpec(layer_ids=layer_ids, num_embeddings=rows, max_ngram_size=max_n, n_heads=heads,
                      head_dim=r.int("engram_head_dim"), vocab_size=vocab, pad_token_id=pad,
                      compressed_vocab_size=r.int("engram_compressed_vocab_size", None, maximum=2**40))


def _dspark(r: _Reader, layers: int) -> DSparkSpec | None:
    if r.cfg.get("dspark_n_routed_experts") is None:
        return None
    r.used.update({"dspark_block_size", "dspark_noise_token_id"})  # decoding details, no tensors
    experts = r.int("dspark_n_routed_experts")
    return DSparkSpec(n_routed_experts=experts, num_experts_per_tok=r.int("dspark_num_experts_per_tok", maximum=experts),
                      target_layer_ids=_layer_ids(r, "dspark_target_layer_ids", layers) or (),
                      markov_rank=r.int("dspark_markov_rank"))


VISION_ACCEPTED = frozenset({"model_type", "num_attention_heads", "rope_theta", "max_image_tokens", "min_pixels",
                             "max_wh_ratio"})


def _mapping(value) -> dict:
    if not isinstance(value, dict):
        raise ValueError("must be an object")
    return value


def _vision(r: _Reader) -> VisionSpec | None:
    raw = r.get("vision_config", _mapping, required=False)
    if raw is None:
        return None
    v = _Reader(raw, f"{r.source}: vision_config")
    spec = VisionSpec(num_hidden_layers=v.int("num_hidden_layers"), hidden_size=v.int("hidden_size"),
                      intermediate_size=v.int("intermediate_size"), patch_size=v.int("patch_size"),
                      downsample_ratio=v.int("downsample_ratio"))
    unknown = sorted(set(raw) - v.used - VISION_ACCEPTED)
    r.extra_unknown = tuple(f"vision_config.{k}" for k in unknown)
    return spec


def _with_unknown(spec: ModelSpec, r: _Reader, arch: Arch) -> ModelSpec:
    return replace(spec, unknown_keys=r.unknown(arch))


_BUILDERS = {
    Arch.QWEN2: _dense, Arch.LLAMA: _dense,
    Arch.DEEPSEEK_V3: _deepseek_v3, Arch.DEEPSEEK_V32: _deepseek_v3,
    Arch.DEEPSEEK_V4: _deepseek_v4, Arch.DEEPSEEK_V41: _deepseek_v4,
}
