"""Precision policies as a table: which format each group's weights take in the plan.

A policy is an ordered list of rules (group classes, target format), first match wins, anything
unmatched stays as stored. ``auto`` picks a policy by the kind of the machine's accelerator: GPUs keep
the native formats (a GPU that lacks a format's compute, e.g. FP4 experts on Ada, runs it as
weight-only dequantization: the bytes stay 4.25 bits, the math runs in BF16/FP8; ``int4-experts`` is
the re-quantized alternative), phones' NPUs run INT4 weights. Norms, mHC mixes and Engram tables are
never converted (``groups.FIXED_ROLES``).
"""

from __future__ import annotations

from dataclasses import dataclass

from mv4deploy.core.errors import InputError
from mv4deploy.hardware.profile import DeviceKind
from mv4deploy.model.kv import CacheFormat, cache_formats
from mv4deploy.model.spec import Arch
from mv4deploy.plan.groups import GroupClass
from mv4deploy.formats import get_format

LINEAR = frozenset({GroupClass.ATTENTION, GroupClass.INDEXER, GroupClass.SHARED_EXPERT, GroupClass.DENSE_MLP,
                    GroupClass.ROUTED_EXPERTS, GroupClass.ENGRAM_PROJ})


@dataclass(frozen=True)
class Rule:
    classes: frozenset[GroupClass]
    target: str                                  # a name in mv4deploy.formats.FORMATS
    unless_compute: frozenset[str] = frozenset()  # leave weights that already compute in one of these


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    rules: tuple[Rule, ...] = ()
    kv_cache: CacheFormat | None = None          # None: the architecture's default cache format

    def target(self, cls: GroupClass, stored: str) -> str:
        for rule in self.rules:
            if cls in rule.classes and get_format(stored).compute not in rule.unless_compute:
                return rule.target
        return stored

    def supports(self, arch: Arch) -> bool:
        """Whether the architecture has this policy's KV cache (the fp32 cache is GQA's alone)."""
        return self.kv_cache is None or self.kv_cache in cache_formats(arch)


# The phone's deployment format: what `onnxruntime_genai.models.builder -p int4 -e cpu` emits with the
# embedding quantized too (exporters/cpu-int4.yaml): MatMulNBits, block 32, symmetric, F32 scales, for
# every MatMul, the LM head and the embedding (GatherBlockQuantized, same bytes), with an fp32 KV cache.
# Checked byte for byte against real exports (tests/test_export.py) and against this plan for the 7B
# (tests/test_export_plan.py).
MOBILE_INT4_FORMAT = "mnb-int4-b32"

POLICIES: dict[str, Policy] = {p.name: p for p in (
    Policy("native", "keep every weight as stored; a tier that lacks the compute format dequantizes "
                     "weight-only"),
    Policy("fp8", "linear weights in FP8 e4m3 with 128x128 UE8M0 block scales (FP4 experts grow 1.9x)",
           (Rule(LINEAR, "fp8-e4m3-block128-ue8m0", frozenset({"fp8"})),)),
    Policy("int4-experts", "routed experts re-quantized to INT4, one BF16 scale per 128 (W4A16); the rest "
                           "as stored", (Rule(frozenset({GroupClass.ROUTED_EXPERTS}), "int4-g128"),)),
    Policy("int4", "every linear weight and the LM head in INT4, one BF16 scale per 128 (W4A16)",
           (Rule(LINEAR | {GroupClass.HEAD}, "int4-g128", frozenset({"int4"})),)),
    Policy("nvfp4", "every linear weight in NVFP4 (e2m1, an FP8 scale per 16, compressed-tensors NVFP4A16: "
                    "Blackwell's FP4 tensor cores); weights already in FP4 (V4's MXFP4 experts) stay",
           (Rule(LINEAR, "nvfp4", frozenset({"fp4"})),)),
    Policy("mobile-int4", "INT4 block 32 for every linear weight, the LM head and the embedding, fp32 KV "
                          "cache (the onnxruntime-genai int4 export, exporters/cpu-int4.yaml)",
           (Rule(LINEAR | {GroupClass.HEAD, GroupClass.EMBEDDING}, MOBILE_INT4_FORMAT),),
           kv_cache=CacheFormat.F32),
)}

AUTO = "auto"
# What ``auto`` picks per accelerator kind (None: a CPU-only machine): the first policy the model supports.
# Phones run INT4 weights; a model without the onnxruntime-genai export (MLA, V4) gets plain INT4.
AUTO_BY_DEVICE_KIND: dict[DeviceKind | None, tuple[str, ...]] = {
    DeviceKind.GPU: ("native",), DeviceKind.NPU: ("mobile-int4", "int4"), None: ("native",)}


def policy_names() -> list[str]:
    return [AUTO, *POLICIES]


def resolve_policy(name: str, device_kind: DeviceKind | None, arch: Arch | None = None) -> Policy:
    """The policy a plan uses on a machine whose accelerator is ``device_kind`` (None: CPU only), for a
    model of ``arch`` (None: not checked). A policy the architecture cannot take is bad input."""
    if name == AUTO:
        return next(POLICIES[n] for n in AUTO_BY_DEVICE_KIND[device_kind] if arch is None or POLICIES[n].supports(arch))
    if name not in POLICIES:
        raise InputError(None, "--policy", name, f"unknown policy; known: {', '.join(policy_names())}")
    policy = POLICIES[name]
    if arch is not None and not policy.supports(arch):
        usable = ", ".join(p.name for p in POLICIES.values() if p.supports(arch))
        raise InputError(None, "--policy", name, f"its {policy.kv_cache.value} KV cache exists only for dense GQA "
                         f"models, not {arch.value}; usable: {usable}")
    return policy


def main_format(group, policy: Policy) -> str:
    """The format of most of a group's bytes under ``policy`` (what the plan reports per group)."""
    stored = group.main_format
    if any(fmt == stored for _, fmt, _ in group.weights):
        return policy.target(group.cls, stored)
    return stored
