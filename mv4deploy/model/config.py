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
from mv4deploy.model.config_reader import Reader
from mv4deploy.model.config_v4 import compress_ratios, dspark, engram, layer_ids, num_hash_layers, vision
from mv4deploy.model.spec import Arch, DeepseekV3Spec, DeepseekV4Spec, DenseSpec, ModelSpec
from mv4deploy.model.quant_config import stored_formats

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
def load_json(path: Path) -> dict:
    data = schema.load_json(path)
    if not isinstance(data, dict):
        raise InputError(path, None, type(data).__name__, "config must be a JSON object")
    return data


def read_config(raw: dict, source: str, name: str | None = None, expert_dtype: str | None = None) -> ModelSpec:
    """Build the family's spec from a config dict (``source`` names it in errors).

    ``expert_dtype`` ("fp4" | "fp8") says how the routed experts are stored when the config leaves it
    open (``--expert-dtype``, or a checkpoint's safetensors headers); a V4 config that is silent on it
    and gets none is refused, never guessed."""
    cfg, arch = _flatten(raw, source)
    reader = Reader(cfg, source)
    reader.expert_dtype_override = expert_dtype
    return _BUILDERS[arch](reader, arch, name or source)


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


def _dense(r: Reader, arch: Arch, name: str) -> DenseSpec:
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


def _deepseek_v3(r: Reader, arch: Arch, name: str) -> DeepseekV3Spec:
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


def _indexer(r: Reader, arch: Arch) -> dict:
    if arch is not Arch.DEEPSEEK_V32:
        return {}
    return {"index_n_heads": r.int("index_n_heads"), "index_head_dim": r.int("index_head_dim"),
            "index_topk": r.int("index_topk")}


def _deepseek_v4(r: Reader, arch: Arch, name: str) -> DeepseekV4Spec:
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
        num_hash_layers=num_hash_layers(r, layers), compress_ratios=(ratios := compress_ratios(r, arch, layers, mtp)),
        sliding_window=r.int("sliding_window"), index_n_heads=r.int("index_n_heads"),
        index_head_dim=r.int("index_head_dim"), index_topk=r.int("index_topk"),
        hc_mult=r.int("hc_mult", 1, maximum=64),
        formats=stored_formats(r.cfg, r.source, arch, r.expert_dtype_override),
        engram=engram(r, layers), dspark=dspark(r, layers), vision=vision(r),
        kv_source_layer_ids=layer_ids(r, "kv_source_layer_ids", layers),
        index_source_layer_ids=layer_ids(r, "index_source_layer_ids", layers))
    if len(ratios) > layers + mtp:  # draft layers (V4-Flash-0731): placed like MTP, after it
        spec = replace(spec, num_nextn_predict_layers=len(ratios) - layers)
    if spec.num_attention_heads % spec.o_groups:
        raise InputError(r.source, "o_groups", spec.o_groups,
                         f"must divide num_attention_heads ({spec.num_attention_heads})")
    return _with_unknown(spec, r, arch)


def _rope_head_dim(r: Reader, head_dim: int) -> int:
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


def _with_unknown(spec: ModelSpec, r: Reader, arch: Arch) -> ModelSpec:
    return replace(spec, unknown_keys=r.unknown(arch))


_BUILDERS = {
    Arch.QWEN2: _dense, Arch.LLAMA: _dense,
    Arch.DEEPSEEK_V3: _deepseek_v3, Arch.DEEPSEEK_V32: _deepseek_v3,
    Arch.DEEPSEEK_V4: _deepseek_v4, Arch.DEEPSEEK_V41: _deepseek_v4,
}
