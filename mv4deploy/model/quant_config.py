"""How a config.json says its weights are stored: DeepSeek's / transformers' FP8 ``quantization_config``
(+ V4's ``expert_dtype``), or the description ``mv4deploy quantize`` writes under ``OURS_KEY`` beside the
ecosystem's own ``quantization_config`` (its recipe's rules on top of the source's formats). Pure Python.
"""

from __future__ import annotations

from dataclasses import replace

from mv4deploy.core.errors import InputError
from mv4deploy.model.spec import Arch, StoredFormats

QUANT_METHOD = "mv4deploy"   # quant_method of an `mv4deploy quantize` output no ecosystem loader reads
# Where `mv4deploy quantize` writes its own description (recipe, per-weight rules, the source's config):
# a top-level config.json key, so that ``quantization_config`` stays the ecosystem's (fp8, compressed-tensors,
# bitsandbytes) and transformers / vLLM load the output as they load any checkpoint of that format.
OURS_KEY = "mv4deploy_quantization"


EXPERT_DTYPES = ("fp4", "fp8")


class MissingExpertDtype(InputError):
    """The config leaves the routed experts' format open and nobody said it (exit 2, like any InputError)."""


def stored_formats(cfg: dict, src: str, arch: Arch, expert_dtype: str | None = None) -> StoredFormats:
    """Map quantization_config (+ V4's expert_dtype, or the caller's ``expert_dtype`` where the config is
    silent) to format names of the checkpoint."""
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    plain = "f32" if dtype in ("float32", "fp32") else "bf16"
    q = cfg.get("quantization_config")
    ours = _ours(cfg)
    if ours is not None:
        return _mv4deploy_formats(cfg, src, arch, ours, expert_dtype)
    if q is None:
        return StoredFormats(linear=plain, expert=plain, engram_table=plain, plain=plain, norm=plain)
    source = f"{src}: quantization_config"
    if not isinstance(q, dict):
        raise InputError(src, "quantization_config", q, "must be an object")
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
    expert = {"fp4": "mxfp4", "fp8": linear}[_expert_dtype(cfg, src, q, expert_dtype)] if v4_family else linear
    table = "fp8-rows-ue8m0" if arch is Arch.DEEPSEEK_V41 else plain
    norm = "f32" if arch is Arch.DEEPSEEK_V32 else "bf16"  # V3.2 ships its RMSNorm weights in F32
    return StoredFormats(linear=linear, expert=expert, engram_table=table, plain="bf16", norm=norm)


def _expert_dtype(cfg: dict, src: str, q: dict, override: str | None) -> str:
    """V4's routed-expert storage: ``quantization_config.expert_dtype`` (V4.1, transformers-saved V4) or
    the top-level ``expert_dtype`` (V4), else the caller's (headers, ``--expert-dtype``). Instruct V4
    ships FP4 experts, the -Base checkpoints FP8: 1.83x the bytes, so a silent config is refused."""
    source = f"{src}: quantization_config"
    declared = q.get("expert_dtype", cfg.get("expert_dtype"))
    for value, where in ((declared, source), (override, "--expert-dtype")):
        if value is not None and value not in EXPERT_DTYPES:
            raise InputError(where, "expert_dtype", value, f"supported: {', '.join(EXPERT_DTYPES)}")
    if declared is not None and override is not None and declared != override:
        raise InputError(source, "expert_dtype", declared, f"contradicts the given expert dtype {override!r}")
    if declared is None and override is None:
        raise MissingExpertDtype(src, "expert_dtype", None,
                                 "missing: the routed experts' format (fp4 or fp8) is not in the config; give "
                                 "--expert-dtype fp4|fp8 or a checkpoint folder whose safetensors headers show it")
    return declared or override


def _mv4deploy_formats(cfg: dict, src: str, arch: Arch, q: dict, expert_dtype: str | None) -> StoredFormats:
    """A checkpoint written by ``mv4deploy quantize``: ``base`` is the source's quantization_config
    (null for a BF16/FP32 source) and gives the native formats; ``rules`` assign each weight's format."""
    from mv4deploy.model.rules import rules_from_json
    source = f"{src}: {OURS_KEY}"
    base = q.get("base")
    if base is not None and (not isinstance(base, dict) or base.get("quant_method") == QUANT_METHOD):
        raise InputError(source, "base", base, "must be the source checkpoint's quantization_config or null")
    source_cfg = {k: v for k, v in cfg.items() if k != OURS_KEY}
    native = stored_formats({**source_cfg, "quantization_config": base}, src, arch, expert_dtype)
    return replace(native, rules=rules_from_json(q.get("rules"), source))


def _ours(raw: dict) -> dict | None:
    """What ``mv4deploy quantize`` wrote about a checkpoint (``OURS_KEY``), or None."""
    ours = raw.get(OURS_KEY)
    if ours is not None and not isinstance(ours, dict):
        raise InputError(None, OURS_KEY, ours, "must be an object")
    return ours


def quantized_by_us(raw: dict) -> bool:
    """Whether a raw config.json was written by ``mv4deploy quantize``."""
    return _ours(raw) is not None
