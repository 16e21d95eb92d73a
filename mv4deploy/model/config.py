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
from mv4deploy.model.spec import Arch, DeepseekV3Spec, DeepseekV4Spec, DenseSpec, ModelSpec, StoredFormats

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
QUANT_METHOD = "mv4deploy"   # quantization_config.quant_method of what `mv4deploy quantize` writes

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
        formats=_stored_formats(r, arch))
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
        formats=_stored_formats(r, arch),
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
        hc_mult=r.int("hc_mult", 1, maximum=64), formats=_stored_formats(r, arch),
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


def _stored_formats(r: Reader, arch: Arch) -> StoredFormats:
    """Map quantization_config (+ V4's top-level expert_dtype) to format names of the checkpoint."""
    dtype = str(r.cfg.get("torch_dtype") or r.cfg.get("dtype") or "bfloat16")
    plain = "f32" if dtype in ("float32", "fp32") else "bf16"
    q = r.cfg.get("quantization_config")
    if q is None:
        return StoredFormats(linear=plain, expert=plain, engram_table=plain, plain=plain, norm=plain)
    source = f"{r.source}: quantization_config"
    if not isinstance(q, dict):
        raise InputError(r.source, "quantization_config", q, "must be an object")
    if q.get("quant_method") == QUANT_METHOD:
        return _mv4deploy_formats(r, arch, q, source)
    if q.get("quant_method") != "fp8":
        raise InputError(source, "quant_method", q.get("quant_method"), "unsupported; supported: fp8, mv4deploy")
    block = q.get("weight_block_size")
    if block not in ([128, 128], [32, 32]):
        raise InputError(source, "weight_block_size", block, "supported: [128, 128] or [32, 32]")
    ue8m0 = q.get("scale_fmt") == "ue8m0"
    v4_family = arch in (Arch.DEEPSEEK_V4, Arch.DEEPSEEK_V41)
    if block == [32, 32]:
        if not (v4_family and ue8m0):
            raise InputError(source, "weight_block_size", block, "32x32 blocks exist only with ue8m0 scales (V4.1)")
        linear = "fp8-e4m3-block32-ue8m0"
    else:
        # V3.1/V3.2 keep F32 `weight_scale_inv` even with ue8m0 values; V4 stores F8_E8M0 `.scale`.
        linear = "fp8-e4m3-block128-ue8m0" if (v4_family and ue8m0) else "fp8-e4m3-block128"
    expert = {"fp4": "mxfp4", "fp8": linear}[_expert_dtype(r, q, source)] if v4_family else linear
    table = "fp8-rows-ue8m0" if arch is Arch.DEEPSEEK_V41 else plain
    norm = "f32" if arch is Arch.DEEPSEEK_V32 else "bf16"  # V3.2 ships its RMSNorm weights in F32
    return StoredFormats(linear=linear, expert=expert, engram_table=table, plain="bf16", norm=norm)


EXPERT_DTYPES = ("fp4", "fp8")


class MissingExpertDtype(InputError):
    """The config leaves the routed experts' format open and nobody said it (exit 2, like any InputError)."""


def _expert_dtype(r: Reader, q: dict, source: str) -> str:
    """V4's routed-expert storage: ``quantization_config.expert_dtype`` (V4.1, transformers-saved V4) or
    the top-level ``expert_dtype`` (V4), else the caller's (headers, ``--expert-dtype``). Instruct V4
    ships FP4 experts, the -Base checkpoints FP8: 1.83x the bytes, so a silent config is refused."""
    declared = q.get("expert_dtype", r.cfg.get("expert_dtype"))
    override = r.expert_dtype_override
    for value, where in ((declared, source), (override, "--expert-dtype")):
        if value is not None and value not in EXPERT_DTYPES:
            raise InputError(where, "expert_dtype", value, f"supported: {', '.join(EXPERT_DTYPES)}")
    if declared is not None and override is not None and declared != override:
        raise InputError(source, "expert_dtype", declared, f"contradicts the given expert dtype {override!r}")
    if declared is None and override is None:
        raise MissingExpertDtype(r.source, "expert_dtype", None,
                         "missing: the routed experts' format (fp4 or fp8) is not in the config; give "
                         "--expert-dtype fp4|fp8 or a checkpoint folder whose safetensors headers show it")
    return declared or override


def _mv4deploy_formats(r: Reader, arch: Arch, q: dict, source: str) -> StoredFormats:
    """A checkpoint written by ``mv4deploy quantize``: ``base`` is the source's quantization_config
    (null for a BF16/FP32 source) and gives the native formats; ``rules`` assign each weight's format."""
    from mv4deploy.model.rules import rules_from_json
    base = q.get("base")
    if base is not None and (not isinstance(base, dict) or base.get("quant_method") == QUANT_METHOD):
        raise InputError(source, "base", base, "must be the source checkpoint's quantization_config or null")
    inner = Reader({**r.cfg, "quantization_config": base}, r.source)
    inner.expert_dtype_override = r.expert_dtype_override
    native = _stored_formats(inner, arch)
    return replace(native, rules=rules_from_json(q.get("rules"), source))


def _with_unknown(spec: ModelSpec, r: Reader, arch: Arch) -> ModelSpec:
    return replace(spec, unknown_keys=r.unknown(arch))


_BUILDERS = {
    Arch.QWEN2: _dense, Arch.LLAMA: _dense,
    Arch.DEEPSEEK_V3: _deepseek_v3, Arch.DEEPSEEK_V32: _deepseek_v3,
    Arch.DEEPSEEK_V4: _deepseek_v4, Arch.DEEPSEEK_V41: _deepseek_v4,
}


def quantized_by_us(raw: dict) -> bool:
    """Whether a raw config.json was written by ``mv4deploy quantize`` (its quant_method is ours)."""
    quant = raw.get("quantization_config")
    return isinstance(quant, dict) and quant.get("quant_method") == QUANT_METHOD
