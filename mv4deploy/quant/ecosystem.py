"""The ``quantization_config`` the ecosystem reads, for the formats a quantize job writes.

A checkpoint is only as portable as its config.json: transformers, vLLM and SGLang pick their loader from
``quantization_config.quant_method`` and ignore a method they do not know (they then load *random* weights
for every tensor they cannot place). So the output's ``quantization_config`` is the ecosystem's own, chosen
by the formats the job writes (``QuantFormat.config_family``):

- ``fp8``: FP8 e4m3 block weights as DeepSeek ships them and transformers' fine-grained FP8 reads them
  (``weight_block_size``, ``scale_fmt: ue8m0`` for V4's E8M0 scales, ``expert_dtype: fp4`` for MXFP4 experts);
- ``compressed-tensors``: INT4 groups as ``pack-quantized`` W4A16 (the config is compressed-tensors' own
  ``QuantizationConfig``);
- ``bitsandbytes``: NF4 as transformers serializes a ``Linear4bit`` (``load_in_4bit``, blocksize 64).

Weights that stay in a plain dtype are named so the loader leaves them alone (``modules_to_not_convert``,
``ignore``, ``llm_int8_skip_modules``; transformers' module names, known for HF-named checkpoints). Our own
per-weight rules travel beside it in config.json under ``OURS_KEY`` (``model.config`` reads them back).
FP8 linears with routed experts in another 4-bit layout (``int4-experts``) keep DeepSeek's FP8 config with
``expert_dtype`` naming that layout (``int4``): the honest description, which transformers refuses loudly.
Any other mix of families has no ecosystem layout: ``ecosystem_config`` returns None and the output says
``quant_method: mv4deploy`` (only mv4deploy loads it; ``quantize`` warns).
"""

from __future__ import annotations

from mv4deploy.formats import FORMATS
from mv4deploy.formats.catalog import FP8Block
from mv4deploy.model.spec import Arch
from mv4deploy.model.tensors import Role

DENSE = (Arch.QWEN2, Arch.LLAMA, Arch.DEEPSEEK_V3, Arch.DEEPSEEK_V32)  # HF module names in the checkpoint
V4_FAMILY = (Arch.DEEPSEEK_V4, Arch.DEEPSEEK_V41)
NF4_CONFIG = {  # what transformers' BitsAndBytesConfig(load_in_4bit=True, nf4, bf16 compute).to_dict() holds
    "quant_method": "bitsandbytes", "load_in_4bit": True, "load_in_8bit": False,
    "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_use_double_quant": False,
    "bnb_4bit_quant_storage": "uint8", "llm_int8_threshold": 6.0, "llm_int8_has_fp16_weight": False,
}


def families(targets: set[str]) -> set[str | None]:
    """The ecosystem families of a set of format names (None for plain dtypes and raw tables)."""
    return {FORMATS[t].config_family if t in FORMATS else None for t in targets} - {None}


def ecosystem_config(job) -> dict | None:
    """The ecosystem ``quantization_config`` for ``job``'s output, or None: no quantized weight at all
    (then config.json has none), or formats no single ecosystem layout holds (see the module doc)."""
    targets = {w.target for s in job.shards for w in s.weights}
    found = families(targets)
    experts = {w.target for s in job.shards for w in s.weights if w.weight.role is Role.ROUTED_EXPERT}
    others = targets - experts
    if len(found) > 1 and families(others) == {"fp8"}:   # FP8 linears + experts in another family
        return _fp8(job.spec.architecture, targets, _plain_linears(job), _expert_dtype(experts))
    if len(found) != 1:
        return None
    family = found.pop()
    if family == "fp8":
        return _fp8(job.spec.architecture, targets, _plain_linears(job))
    if family == "compressed-tensors":
        return _compressed_tensors(job, targets)
    return {**NF4_CONFIG, "llm_int8_skip_modules": _plain_linears(job) or None}


def _plain_linears(job) -> list[str]:
    """transformers module names of the matrices a job keeps plain, where the checkpoint uses HF names
    (V4's native names are renamed by transformers' own conversion table; its FP8 and bitsandbytes loaders
    need no list)."""
    if job.spec.architecture not in DENSE:
        return []
    return _plain_matrices(job)


def _plain_matrices(job) -> list[str]:
    return sorted(w.weight.name[: -len(".weight")] for s in job.shards for w in s.weights
                  if w.weight.name.endswith(".weight") and len(w.weight.shape) == 2
                  and w.weight.role is not Role.EMBEDDING and FORMATS.get(w.target) is not None
                  and FORMATS[w.target].config_family is None)


def _ct_ignore(job) -> list[str]:
    """compressed-tensors' ``ignore``: transformers module names of the plain matrices. Its scheme targets
    every ``Linear`` of the model transformers builds, so for V4 (native names in the checkpoint) each name
    goes through transformers' own ``deepseek_v4`` renaming table (``head`` -> ``lm_head``, ``attn.compressor.wkv``
    -> ``model.*.self_attn.compressor.kv_proj``, ...); without it the kept-BF16 head and compressor would be
    left uninitialized by a plain ``from_pretrained`` (NaN logits, no error). compressed-tensors has already
    imported transformers here."""
    if job.spec.architecture not in V4_FAMILY:
        return _plain_linears(job)
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightRenaming, rename_source_key
    renamings = [m for m in get_checkpoint_conversion_mapping("deepseek_v4") if isinstance(m, WeightRenaming)]
    names = []
    for name in _plain_matrices(job):
        hf = rename_source_key(name + ".weight", renamings, [])[0][: -len(".weight")]
        names.append(hf if hf.startswith("lm_head") else "model." + hf)
    return sorted(names)


EXPERT_DTYPES = {"mxfp4": "fp4", "int4-g128": "int4", "int4-g32": "int4", "nvfp4": "nvfp4", "nf4": "nf4"}


def _expert_dtype(experts: set[str]) -> str | None:
    """DeepSeek's ``expert_dtype`` for the routed experts' formats: ``fp4`` (MXFP4, what transformers and
    vLLM read), or the name of another 4-bit layout, which transformers refuses with a clear error
    ("expert_dtype must be 'fp8' or 'fp4'") instead of loading random experts."""
    named = {EXPERT_DTYPES[t] for t in experts if t in EXPERT_DTYPES}
    return "+".join(sorted(named)) or None


def _fp8(arch: Arch, targets: set[str], plain: list[str], expert_dtype: str | None = None) -> dict | None:
    blocks = {FORMATS[t] for t in targets if isinstance(FORMATS.get(t), FP8Block)}
    if len({f.block for f in blocks}) > 1 or len({f.ue8m0 for f in blocks}) > 1:
        return None  # one config holds one block size and one scale type
    block = blocks.pop() if blocks else None
    size = block.block if block else (32 if arch is Arch.DEEPSEEK_V41 else 128)
    ue8m0 = block.ue8m0 if block else arch in V4_FAMILY
    config = {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
              "weight_block_size": [size, size]}
    if ue8m0:
        config["scale_fmt"] = "ue8m0"
    if expert_dtype or "mxfp4" in targets:
        config["expert_dtype"] = expert_dtype or "fp4"
    if plain:
        config["modules_to_not_convert"] = plain
    return config


def _compressed_tensors(job, targets: set[str]) -> dict:
    """compressed-tensors' own config: one group per (scheme, group size) written (W4A16 ``pack-quantized``,
    NVFP4A16 ``nvfp4-pack-quantized``); ``mixed-precision`` when the groups use different compressors."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus, preset_name_to_scheme
    kinds = sorted({_ct_kind(t) for t in targets} - {None})
    groups = {}
    for i, ((preset, fmt), size) in enumerate(kinds):
        modules = sorted(w.weight.name[: -len(".weight")] for s in job.shards for w in s.weights
                         if _ct_kind(w.target) == ((preset, fmt), size))
        scheme = preset_name_to_scheme(preset, ["Linear"] if len(kinds) == 1 else modules)
        scheme.weights.group_size = size
        scheme.format = fmt
        groups[f"group_{i}"] = scheme
    formats = {fmt for (_, fmt), _ in kinds}
    config = QuantizationConfig(config_groups=groups, format=formats.pop() if len(formats) == 1 else "mixed-precision",
                                ignore=_ct_ignore(job), quantization_status=QuantizationStatus.COMPRESSED)
    return config.model_dump(mode="json")


def _ct_kind(fmt: str):
    """((compressed-tensors preset, format), group size) of a format name, None for other formats."""
    f = FORMATS.get(fmt)
    return (f.ct_scheme, f.group) if f is not None and f.ct_scheme else None


def portability(config_path) -> str | None:
    """None when the ecosystem loads the checkpoint at ``config_path`` as written, else one line saying why
    not (what ``quantize`` warns about)."""
    import json
    from pathlib import Path
    path = Path(config_path)
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    quant = config.get("quantization_config") or {}
    if quant.get("quant_method") == "mv4deploy":
        return ("no ecosystem format holds this mix of formats: transformers, vLLM and SGLang will not load it "
                "(mv4deploy does)")
    if quant.get("expert_dtype") not in (None, "fp4", "fp8"):
        return (f"routed experts in {quant['expert_dtype']} under an FP8 config: transformers refuses "
                f"expert_dtype {quant['expert_dtype']!r} (mv4deploy loads it)")
    if config.get("model_type", "").startswith("deepseek_v4") and "nvfp4" in json.dumps(quant):
        # transformers 5.25 integrations/compressed_tensors.py, CompressedTensorsDequantize: the fused-experts
        # path decompresses each expert from weight_packed / weight_scale / weight_shape only
        return ("NVFP4 routed experts: transformers dequantizes V4's fused experts without their "
                "weight_global_scale and loads wrong expert weights, silently (mv4deploy loads them)")
    return None
