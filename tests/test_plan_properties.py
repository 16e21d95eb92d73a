"""Placement invariants as property tests over synthetic machines and the tiny and real model presets.

- every tensor is placed exactly once (or left out for a stated reason: MTP, vision);
- no tier holds more than its capacity;
- more GPU memory, or more host bandwidth, never makes an engine's verdict worse, nor, at the same verdict,
  predicts fewer decode tokens/s (engine by engine: the automatic choice may switch to an engine that now fits,
  a plan that does not fit has no speed to keep, and a better verdict ranks before speed);
- the plan never predicts more tokens/s than its bound.

Monotonicity is exact for a fixed prefill mode. When the planner chooses the mode itself it may trade up
to ``planner.DECODE_TIE`` of decode speed for a much faster prefill (streaming reserves a GPU buffer), so
with the mode free the test allows that much and no more.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mv4deploy.hardware.profile import parse_profile
from mv4deploy.model.source import resolve_model
from mv4deploy.plan.make import make_plan
from mv4deploy.plan.planner import DECODE_TIE
from mv4deploy.plan.verdict import Verdict
from mv4deploy.plan.workload import make_workload

TINY = ("tiny-deepseek-v4", "tiny-deepseek-v4.1", "tiny-deepseek-v3.2", "tiny-deepseek-v3", "tiny-qwen2")
MODELS = {name: resolve_model(name) for name in TINY}
KiB = 1024


def machine(gpu_kib: int, host_kib: int, host_gbps: float, gpus: int = 1, nvlink: bool = False,
            nvme: bool = True, host_gflops: float = 500.0) -> dict:
    """A profile sized for the tiny models (whose weights are 1-3 MB)."""
    data = {
        "name": "synthetic",
        "gpus": {"model": "g", "count": gpus, "memory": f"{gpu_kib}KiB", "usable_fraction": 0.9,
                 "bandwidth": "1000GB/s", "compute": {"bf16": "100TFLOPS", "fp8": "200TFLOPS"},
                 "native_formats": ["bf16", "fp8", "int8"], "runtime_reserve": "16KiB"},
        "host": {"memory": f"{host_kib}KiB", "bandwidth": f"{host_gbps}GB/s", "cores": 8,
                 "isa": ["avx512_bf16"], "compute": {"bf16": f"{host_gflops}GFLOPS"}, "reserve": "64KiB"},
        "host_link": {"bandwidth": "32GB/s", "latency": "10us"},
    }
    if gpus > 1:
        data["interconnect"] = {"kind": "nvlink" if nvlink else "pcie", "p2p": nvlink, "bandwidth": "100GB/s"}
    if nvme:
        data["storage"] = {"read_bandwidth": "5GB/s", "capacity": "1GB", "random_read_iops": "1M IOPS"}
    return data


def plan_on(model: str, profile: dict, context: int, batch: int, chunk: int, util: float = 0.9,
            prefill_stream=None):
    return make_plan(MODELS[model], parse_profile(profile, "synthetic"), make_workload(context, batch, chunk),
                     gpu_mem_util=util, suggest=False, prefill_stream=prefill_stream)


def check_exactly_once(p, resolved) -> None:
    from mv4deploy.plan.groups import build_groups
    grouping = build_groups(resolved.inventory)
    ids = sorted(i for g in grouping.groups for i in g.tensor_ids) + [i for _, ids, _ in grouping.excluded for i in ids]
    assert sorted(ids) == list(range(len(resolved.inventory.tensors)))
    covered: dict[str, list] = {}
    for piece in (*p.placement.placed, *p.placement.unplaced):
        covered.setdefault(id(piece.item), []).append((piece.start, piece.stop, piece.item.units))
    for spans in covered.values():                     # each item's units, exactly once, in pieces
        spans.sort()
        assert spans[0][0] == 0 and spans[-1][1] == spans[0][2]
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    placed_groups = {piece.item.group.name for piece in (*p.placement.placed, *p.placement.unplaced)
                     if piece.item.group is not None}
    assert placed_groups == {g.name for g in grouping.groups}


def check_capacity(p) -> None:
    for d in p.devices:
        if p.verdict != "does_not_fit" or not any("workspace alone" in w for w in p.warnings):
            assert d.used_bytes <= d.capacity_bytes, d.name


def check_no_worse(before, after, slack: float) -> None:
    """Engine by engine, ``after`` (more memory or bandwidth) fits at least as well and, at the same verdict
    (one that fits), predicts at least its decode speed; the chosen plan's verdict is at least as good. (A
    better verdict may be slower: the planner ranks the verdict first, so all on the GPUs beats a faster
    plan that offloads.)"""
    assert Verdict(after.verdict).rank <= Verdict(before.verdict).rank
    later = {w.engine: w for w in after.engine.weighed}
    assert set(later) == {w.engine for w in before.engine.weighed}
    for was in before.engine.weighed:
        now = later[was.engine]
        assert Verdict(now.verdict).rank <= Verdict(was.verdict).rank, was.engine
        if now.verdict == was.verdict != Verdict.DOES_NOT_FIT:
            assert now.decode_tokens_per_s >= was.decode_tokens_per_s * (1 - slack), was.engine


common = dict(model=st.sampled_from(TINY), context=st.integers(16, 4096), batch=st.integers(1, 8),
              chunk=st.sampled_from([16, 64, 256]), gpu_kib=st.integers(256, 4096),
              host_kib=st.integers(512, 8192), host_gbps=st.floats(5, 400), gpus=st.sampled_from([1, 2, 4]),
              nvlink=st.booleans(), nvme=st.booleans())
SETTINGS = settings(max_examples=int(__import__("os").environ.get("PLAN_EXAMPLES", "60")), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(**common)
def test_each_tensor_once_capacity_and_bound(model, context, batch, chunk, gpu_kib, host_kib, host_gbps, gpus,
                                             nvlink, nvme):
    p = plan_on(model, machine(gpu_kib, host_kib, host_gbps, gpus, nvlink, nvme), context, batch, chunk)
    check_exactly_once(p, MODELS[model])
    check_capacity(p)
    assert p.estimates.decode_tokens_per_s <= p.estimates.bound_decode_tokens_per_s * (1 + 1e-9)


@SETTINGS
@given(**common, more=st.floats(1.0, 3.0), stream=st.sampled_from([None, False, True]))
@example(model="tiny-deepseek-v4", context=54, batch=1, chunk=64, gpu_kib=256, host_kib=1809, host_gbps=5.0,
         gpus=1, nvlink=False, nvme=False, more=3.0, stream=True)   # sglang did not fit, then ktransformers did
def test_more_gpu_memory_never_predicts_fewer_tokens(model, context, batch, chunk, gpu_kib, host_kib, host_gbps,
                                                     gpus, nvlink, nvme, more, stream):
    profile = machine(gpu_kib, host_kib, host_gbps, gpus, nvlink, nvme)
    small = plan_on(model, profile, context, batch, chunk, util=0.3, prefill_stream=stream)
    large = plan_on(model, profile, context, batch, chunk, util=min(1.0, 0.3 * more), prefill_stream=stream)
    check_no_worse(small, large, DECODE_TIE if stream is None else 1e-9)


@SETTINGS
@given(**common, faster=st.floats(1.0, 4.0), stream=st.sampled_from([None, False, True]))
@example(model="tiny-qwen2", context=111, batch=1, chunk=16, gpu_kib=366, host_kib=512, host_gbps=5.0, gpus=4,
         nvlink=False, nvme=False, faster=2.0, stream=None)    # llama.cpp: KV kept, MLPs sent down (the swap)
# Known limits of filling by density (docs/planner.md, "Placement and the bound"): with host RAM within 4% of
# full, a faster host reorders the GPU pass and what is left no longer fits below; a cut expert group leaves
# a KTransformers plan 0.01% slower. Strict: when the planner learns these, the examples fail and go.
@example(model="tiny-deepseek-v3.2", context=967, batch=1, chunk=16, gpu_kib=1133, host_kib=633, host_gbps=5.0,
         gpus=1, nvlink=False, nvme=False, faster=2.0, stream=False).xfail(raises=AssertionError,
                                                                         reason="greedy fill: host overflows")
@example(model="tiny-deepseek-v3.2", context=967, batch=1, chunk=16, gpu_kib=1133, host_kib=655, host_gbps=5.0,
         gpus=1, nvlink=False, nvme=False, faster=2.0, stream=False).xfail(raises=AssertionError,
                                                                         reason="greedy fill: 0.01% slower")
def test_more_host_bandwidth_never_predicts_fewer_tokens(model, context, batch, chunk, gpu_kib, host_kib,
                                                         host_gbps, gpus, nvlink, nvme, faster, stream):
    slow = plan_on(model, machine(gpu_kib, host_kib, host_gbps, gpus, nvlink, nvme), context, batch, chunk,
                   prefill_stream=stream)
    fast = plan_on(model, machine(gpu_kib, host_kib, host_gbps * faster, gpus, nvlink, nvme), context, batch,
                   chunk, prefill_stream=stream)
    check_no_worse(slow, fast, DECODE_TIE if stream is None else 1e-9)


@pytest.mark.parametrize("profile, host", [("rtx5090", None), ("rtx4090x2", None), ("b200", None),
                                           ("rtx5090", 64 * 2**30)])
def test_real_models_keep_the_invariants(profile, host):
    from mv4deploy.hardware.profile import load_profile
    flash = resolve_model("deepseek-v4-flash")
    base = load_profile(profile)
    plans = [make_plan(flash, base, make_workload(), host_mem_bytes=host, gpu_mem_util=u, suggest=False,
                       prefill_stream=False) for u in (0.5, 0.7, 0.94)]
    for p in plans:
        check_exactly_once(p, flash)
        check_capacity(p)
        assert p.estimates.decode_tokens_per_s <= p.estimates.bound_decode_tokens_per_s * (1 + 1e-9)
    speeds = [p.estimates.decode_tokens_per_s for p in plans]
    assert speeds == sorted(speeds)


def big_machine(gpu_gib: int, host_gib: int, host_gbps: float, gpus: int, nvlink: bool) -> dict:
    data = machine(gpu_gib * 1024 * 1024, host_gib * 1024 * 1024, host_gbps, gpus, nvlink, nvme=True,
                   host_gflops=2000.0)
    data["gpus"]["runtime_reserve"] = "1GiB"
    data["host"]["reserve"] = "6GiB"
    data["storage"]["capacity"] = "4TB"
    return data


REAL = {name: resolve_model(name) for name in ("deepseek-v4-flash", "deepseek-v3.2")}
real = dict(model=st.sampled_from(sorted(REAL)), context=st.sampled_from([8192, 131072]),
            batch=st.sampled_from([1, 4]), gpu_gib=st.integers(16, 192), host_gib=st.integers(64, 1024),
            host_gbps=st.floats(20, 500), gpus=st.sampled_from([1, 2]), nvlink=st.booleans(),
            more=st.floats(1.0, 3.0), faster=st.floats(1.0, 4.0))
REAL_SETTINGS = settings(max_examples=int(__import__("os").environ.get("PLAN_REAL_EXAMPLES", "8")), deadline=None,
                         suppress_health_check=[HealthCheck.too_slow])


@REAL_SETTINGS
@given(**real)
def test_real_models_on_random_machines(model, context, batch, gpu_gib, host_gib, host_gbps, gpus, nvlink, more,
                                        faster):
    def run(gbps, util):
        return make_plan(REAL[model], parse_profile(big_machine(gpu_gib, host_gib, gbps, gpus, nvlink), "m"),
                         make_workload(context, batch, 2048), gpu_mem_util=util, suggest=False,
                         prefill_stream=False)
    base = run(host_gbps, 0.3)
    check_exactly_once(base, REAL[model])
    check_capacity(base)
    assert base.estimates.decode_tokens_per_s <= base.estimates.bound_decode_tokens_per_s * (1 + 1e-9)
    assert run(host_gbps, min(1.0, 0.3 * more)).estimates.decode_tokens_per_s >= \
        base.estimates.decode_tokens_per_s * (1 - 1e-9)
    assert run(host_gbps * faster, 0.3).estimates.decode_tokens_per_s >= base.estimates.decode_tokens_per_s * (1 - 1e-9)
