"""What ``mv4deploy plan`` does, as one library function: validate the options, resolve the model and the
profile, plan (or sweep). The CLI hands the result to ``output``; this module prints nothing."""

from __future__ import annotations

import gc
from contextlib import contextmanager
from dataclasses import dataclass

from mv4deploy.errors import InputError
from mv4deploy.plan.plan import Plan
from mv4deploy.plan.policy import policy_names
from mv4deploy.plan.sweep import Sweep, parse_sweep, sweep_points
from mv4deploy.plan.workload import host_mem_bytes, make_workload
from mv4deploy.schema import fraction, numeric, option


@dataclass(frozen=True)
class PlanResult:
    plan: Plan
    sweep: Sweep | None = None
    points: tuple = ()


@contextmanager
def _without_cyclic_gc():
    """The inventory allocates ~145K small objects (V4-Pro) and none of them form cycles: the cyclic
    collector would rescan them again and again (~15-20% of a plan's time). Restored afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def run_plan(model: str, profile: str, context: str = "131072", batch: str = "1", prefill_chunk: str = "2048",
             policy: str = "auto", host_mem: str | None = None, gpu_mem_util: str | None = None,
             expert_skew: str | None = None, mtp: bool = False, sweep: str | None = None,
             expert_dtype: str | None = None) -> PlanResult:
    """Validate everything before any work, so a bad option costs nothing and says exactly what is wrong."""
    workload = make_workload(context, batch, prefill_chunk, expert_skew, mtp)
    if policy not in policy_names():
        raise InputError(None, "--policy", policy, f"unknown policy; known: {', '.join(policy_names())}")
    host_bytes = host_mem_bytes(host_mem) if host_mem is not None else None
    util = option("--gpu-mem-util", numeric(fraction), gpu_mem_util) if gpu_mem_util is not None else None
    parsed_sweep = parse_sweep(sweep) if sweep is not None else None
    from mv4deploy.hardware.profile import load_profile
    from mv4deploy.model.source import resolve_model
    from mv4deploy.plan.assemble import make_plan
    with _without_cyclic_gc():
        hardware = load_profile(profile)
        resolved = resolve_model(model, expert_dtype)
        if parsed_sweep is None:
            return PlanResult(make_plan(resolved, hardware, workload, policy, host_bytes, util))

        from mv4deploy.plan.groups import build_groups
        grouping = build_groups(resolved.inventory, workload.include_mtp, workload.expert_skew)  # shared by the points

        def plan_fn(w, host):
            return make_plan(resolved, hardware, w, policy, host, util, suggest=False, grouping=grouping)

        points = sweep_points(parsed_sweep, workload, host_bytes, plan_fn)
        return PlanResult(points[-1][1], parsed_sweep, tuple(points))
