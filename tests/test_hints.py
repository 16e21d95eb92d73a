"""Launch hints that start as written: never for a plan that does not fit, never a context beyond the model's
maximum, and vLLM's --cpu-offload-gb per GPU (its documented meaning)."""

from __future__ import annotations

import functools

import math
import re

import pytest

from mv4deploy.hardware.profile import list_profiles, load_profile
from mv4deploy.model.source import list_presets, resolve_model
from mv4deploy.plan.groups import build_groups
from mv4deploy.plan.make import make_plan
from mv4deploy.plan.verdict import Verdict
from mv4deploy.plan.workload import make_workload

GiB = 2**30


@functools.lru_cache(maxsize=None)
def _resolved(model: str):
    """Each preset resolved and grouped once for the whole module (V4-Pro's inventory takes ~0.15 s)."""
    resolved = resolve_model(model)
    return resolved, build_groups(resolved.inventory)


def _plan(model, profile, context="131072", **kw):
    resolved, grouping = _resolved(model)
    return make_plan(resolved, load_profile(profile), make_workload(context=context), grouping=grouping, **kw)


def test_a_context_beyond_the_models_maximum_does_not_fit_and_says_why():
    """DeepSeek-V3's max_position_embeddings is 163,840: a 1M context is no fit on any machine, with no
    launch line, and the context suggestion brings it within the maximum."""
    plan = _plan("deepseek-v3", "b200x8", context="1m")
    assert resolve_model("deepseek-v3").spec.max_position_embeddings == 163_840
    assert plan.verdict is Verdict.DOES_NOT_FIT
    assert any("exceeds the model's max_position_embeddings 163,840" in w for w in plan.warnings)
    assert plan.hints.to_json() == {"vllm": None, "sglang": None, "llama_cpp": None, "accelerate_device_map": None}
    context = next(s for s in plan.suggestions if s.kind == "context")
    assert int(context.change.split()[-1]) <= 163_840 and context.verdict is not Verdict.DOES_NOT_FIT
    assert _plan("deepseek-v3", "b200x8", context="163840").verdict is not Verdict.DOES_NOT_FIT


def test_vllm_cpu_offload_is_per_gpu():
    """V3 on two RTX 4090s (pipeline over 2 GPUs; vLLM serves V3 on SM89, not V4): each rank offloads its share
    of the host-resident weights, so --cpu-offload-gb is ceil(host bytes / 2 / GiB), not the total."""
    plan = _plan("deepseek-v3", "rtx4090x2", context="8192", host_mem_bytes=1024 * GiB)
    host_bytes = sum(g.bytes for g in plan.groups if g.tier in ("host", "nvme"))
    assert plan.decisions.parallelism.mode == "pipeline" and host_bytes > 100 * GiB
    offload = int(re.search(r"--cpu-offload-gb (\d+)", plan.hints.vllm).group(1))
    assert offload == math.ceil(host_bytes / 2 / GiB)


@pytest.mark.parametrize("profile", sorted(list_profiles()))
def test_every_preset_gets_hints_only_when_it_fits_and_within_its_context(profile):
    for preset in list_presets():
        plan = _plan(preset, profile, suggest=False)
        lines = [h for h in (plan.hints.vllm, plan.hints.sglang, plan.hints.llama_cpp) if h]
        if plan.verdict is Verdict.DOES_NOT_FIT:
            assert not lines and plan.hints.accelerate_device_map is None, preset
            continue
        maximum = _resolved(preset)[0].spec.max_position_embeddings
        for flag in ("--max-model-len", "--context-length", "-c"):
            for line in lines:
                found = re.search(rf"(?:^| ){re.escape(flag)} (\d+)", line)
                if found:
                    assert int(found.group(1)) <= maximum, (preset, line)


def test_ktransformers_gpu_experts_are_counted_per_moe_layer():
    """V4-Flash on one RTX 5090: the plan keeps some routed experts of its 43 MoE layers on the GPU; sglang-kt
    multiplies --kt-num-gpu-experts by the MoE layers, so the hint is the per-layer share, rounded down."""
    plan = _plan("deepseek-v4-flash", "rtx5090")
    experts = [g for g in plan.groups if g.role == "routed_experts"]
    layers = {g.layer for g in experts}
    on_gpu = sum(g.experts[1] - g.experts[0] for g in experts if g.tier.startswith("gpu"))
    assert len(layers) == 43 and on_gpu > 43
    count = int(re.search(r"--kt-num-gpu-experts (\d+)", plan.hints.sglang).group(1))
    assert count == on_gpu // 43 and count * 43 <= on_gpu
