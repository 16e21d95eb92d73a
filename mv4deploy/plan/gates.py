"""Hardware gates: whether an engine can run a model on a machine, and in the plan's formats.

Two checks, each refusal one sentence naming the rule and the figure that broke it:

- before planning (``machine_gates``): the engine needs a CUDA GPU; the GPU's compute capability is below
  the engine's floor; the engine does not serve the architecture, or not on this GPU (vLLM's V4 path needs
  FlashMLA's sparse kernels and DeepGEMM: SM90 / SM100 only);
- after placing (``format_gates``): a storage format the engine cannot load (GGUF engines and compressed-
  tensors' NVFP4), a format or KV cache format the GPU generation lacks (NVFP4 and an FP4 cache are
  Blackwell's; FP8 compute needs SM89), where the engine refuses rather than dequantizing weight-only.

A GPU whose profile gives no numeric compute capability (a phone's NPU) passes the capability checks only
for engines that do not need a CUDA GPU.
"""

from __future__ import annotations

from mv4deploy.engines.engine import Engine, capability
from mv4deploy.hardware.profile import DeviceKind, HardwareProfile


def _cc(profile: HardwareProfile) -> tuple[int, ...] | None:
    gpus = profile.gpus
    if gpus is None or gpus.kind is not DeviceKind.GPU or not gpus.compute_capability:
        return None
    try:
        return capability(gpus.compute_capability)
    except ValueError:
        return None


def _sm(cc: tuple[int, ...]) -> str:
    return "SM" + "".join(str(part) for part in cc)


def machine_gates(engine: Engine, profile: HardwareProfile, arch: str) -> list[str]:
    """Why ``engine`` cannot serve ``arch`` on ``profile`` at all ([] when it can)."""
    gpus, cc, name = profile.gpus, _cc(profile), f"{engine.name} {engine.version}"
    if engine.needs_gpu and (gpus is None or gpus.kind is not DeviceKind.GPU):
        return [f"{name} needs a CUDA GPU; {profile.name} has {'none' if gpus is None else gpus.kind.value.upper()}"]
    if gpus is not None and gpus.kind is DeviceKind.NPU and not engine.runs_on_npu:
        return [f"{name} does not drive an NPU ({gpus.model}); build the deployment with `mv4deploy export onnx`"]
    reasons = []
    if cc and engine.min_cc and cc < capability(engine.min_cc):
        reasons.append(f"{name} needs compute capability >= {engine.min_cc}; {gpus.model} is {_sm(cc)}")
    support = engine.architectures.get(arch)
    if support is None:
        return reasons + [f"{name} does not serve {arch} models"]
    why = f" ({support.why})" if support.why else ""
    if cc and support.cc_in and cc not in {capability(c) for c in support.cc_in}:
        allowed = ", ".join(_sm(capability(c)) for c in support.cc_in)
        reasons.append(f"{name} serves {arch} only on {allowed}; {gpus.model} is {_sm(cc)}{why}")
    elif cc and support.min_cc and cc < capability(support.min_cc):
        reasons.append(f"{name} serves {arch} from compute capability {support.min_cc}; {gpus.model} is "
                       f"{_sm(cc)}{why}")
    return reasons


def format_gates(engine: Engine, profile: HardwareProfile, formats: dict[str, str], kv_format: str | None) -> list[str]:
    """Why ``engine`` cannot run the plan's ``formats`` (storage format -> compute format) and KV cache format
    on ``profile`` ([] when it can)."""
    cc, name, reasons = _cc(profile), f"{engine.name} {engine.version}", []
    model = profile.gpus.model if profile.gpus is not None else ""
    for fmt, compute in sorted(formats.items()):
        if fmt in engine.unsupported_formats:
            reasons.append(f"{name} cannot load {fmt} weights")
        elif cc and fmt in engine.format_min_cc and cc < capability(engine.format_min_cc[fmt]):
            reasons.append(f"{fmt} weights need compute capability >= {engine.format_min_cc[fmt]} in {name}; "
                           f"{model} is {_sm(cc)}")
        elif (cc and not engine.weight_only and compute in engine.native_min_cc
              and cc < capability(engine.native_min_cc[compute])):
            reasons.append(f"{name} runs {compute} only natively (compute capability >= "
                           f"{engine.native_min_cc[compute]}); {model} is {_sm(cc)}")
    if cc and kv_format in engine.kv_min_cc and cc < capability(engine.kv_min_cc[kv_format]):
        reasons.append(f"an {kv_format} KV cache needs compute capability >= {engine.kv_min_cc[kv_format]} in "
                       f"{name}; {model} is {_sm(cc)}")
    return reasons
