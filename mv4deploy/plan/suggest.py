"""Suggestions: re-plan with one change each and keep the changes that help (``verdict.improves``).

Cheapest change first: a lower-bit expert policy, a shorter context, more host RAM, another shipped
profile, the distillate. Each re-plan is the full planner without suggestions of its own.
"""

from __future__ import annotations

from dataclasses import replace

from mv4deploy.core.errors import InputError
from mv4deploy.engines.engine import AUTO as AUTO_ENGINE
from mv4deploy.hardware.profile import DeviceKind, HardwareProfile, list_profiles, load_profile
from mv4deploy.core.units import format_bytes
from mv4deploy.model.source import ResolvedModel, resolve_model
from mv4deploy.model.spec import Arch
from mv4deploy.plan.assemble import assemble_plan
from mv4deploy.plan.groups import GroupClass
from mv4deploy.plan.items import ItemKind
from mv4deploy.plan.verdict import (DISTILLATE, MIN_CONTEXT, Change, Verdict, host_needed_bytes, improves,
                                    round_up_host, suggestion)
from mv4deploy.plan.workload import Workload

LOWER_BIT_EXPERTS = "int4-experts"
LOWER_BIT_FP4 = "nvfp4"   # the lower-bit policy where the GPUs run FP4 natively (Blackwell)
CONTEXT_SHARE = 0.10
DENSE = (Arch.QWEN2, Arch.LLAMA)


def _replan(resolved, profile, workload, policy, host_mem, gpu_util, grouping=None, engine: str = AUTO_ENGINE):
    return assemble_plan(resolved, profile, workload, policy, host_mem, gpu_util, quick=True, grouping=grouping,
                         engine=engine)[0]


def _other_profiles(current: str, dense_model: bool) -> dict[str, HardwareProfile]:
    """Shipped profiles other than ``current``, least total accelerator memory first (the cheapest
    machine that helps is the smallest change). Phones only for the dense distillates; a shipped
    profile that does not load is skipped, and so are clusters (``nodes > 1``: their plan is the cluster
    search, not the single-machine placement these suggestions re-plan)."""
    sized = []
    for name in list_profiles():
        if name == current:
            continue
        try:
            profile = load_profile(name)
        except InputError:
            continue
        gpus = profile.gpus
        if profile.nodes > 1 or (gpus is not None and gpus.kind is DeviceKind.NPU and not dense_model):
            continue
        sized.append((gpus.count * gpus.memory_bytes if gpus else 0, name, profile))
    return {name: profile for _, name, profile in sorted(sized, key=lambda s: s[:2])}


def host_memory_needed(plan, best, reserve_bytes: int) -> int:
    """Host RAM that holds what the host holds now, plus what sits on NVMe (row tables excepted) or
    nowhere, plus the host reserve once: ``DeviceUse.used_bytes`` already counts the current reserve,
    which --host-mem caps at the memory, so it is taken out and the profile's full reserve added."""
    host = next((d for d in plan.devices if d.name == "host"), None)
    used = host.used_bytes - host.breakdown["reserve"] if host is not None else 0
    return host_needed_bytes(best.placement, used) + reserve_bytes


def _context_matters(plan, best) -> bool:
    """A shorter context only helps when the KV cache and workspace are a real share of the GPUs
    (at least ``CONTEXT_SHARE``) or some KV pool found no room."""
    gpus = [d for d in plan.devices if d.kind.accelerator]
    capacity = sum(d.capacity_bytes for d in gpus) or 1
    used = sum(d.breakdown["kv_cache"] + d.breakdown["activations"] for d in gpus)
    unplaced_kv = any(p.item.kind is ItemKind.KV for p in best.placement.unplaced)
    return unplaced_kv or used / capacity >= CONTEXT_SHARE


def _changes(plan, resolved: ResolvedModel, profile: HardwareProfile, workload: Workload, policy: str, best):
    """The candidate changes, cheapest first; each is (Change, thunk returning a Plan)."""
    changes = []
    for lower in _lower_bit_policies(profile, best):
        if policy != lower:
            changes.append(Change(f"--policy {lower}", "policy", {"policy": lower}))
    maximum = resolved.spec.max_position_embeddings
    if workload.context_tokens > maximum:   # beyond the model: its own maximum first, then halves of it
        context = maximum
    else:
        context = workload.context_tokens // 2 if _context_matters(plan, best) else 0
    while context >= MIN_CONTEXT:
        changes.append(Change(f"--context {context}", "context", {"workload": replace(workload, context_tokens=context)}))
        context //= 2
    if best.placement.unplaced or plan.verdict is Verdict.DOES_NOT_FIT:
        host = round_up_host(host_memory_needed(plan, best, profile.host.reserve_bytes))
        current = next((d.capacity_bytes for d in plan.devices if d.name == "host"), 0)
        if host and host > current:
            changes.append(Change(f"--host-mem {host // 2**30}GiB", "host_memory", {"host_mem": host}))
    for name, other in _other_profiles(profile.name, resolved.spec.architecture in DENSE).items():
        changes.append(Change(f"--profile {name}", "profile", {"profile": other}))
    if resolved.spec.architecture not in DENSE:
        changes.append(Change(f"--model {DISTILLATE}", "model", {"model": DISTILLATE}))
    return changes


def _lower_bit_policies(profile: HardwareProfile, best) -> list[str]:
    """The lower-bit policies to try: NVFP4 on GPUs with FP4 tensor cores (Blackwell: the format they run
    at full rate), INT4 routed experts for a model that has them; the better plan of the two is suggested."""
    placed = best.placement.placed + best.placement.unplaced
    out = [LOWER_BIT_FP4] if profile.gpus is not None and "fp4" in profile.gpus.native_formats else []
    return out + [LOWER_BIT_EXPERTS] * any(p.item.cls is GroupClass.ROUTED_EXPERTS for p in placed)


def _not_better(kind: str, verdict: Verdict, tps: float, found: tuple) -> bool:
    """Profiles: a better verdict only (the smaller machine, tried first, wins ties); policies: a better
    verdict, or the same one and a faster plan."""
    if kind == "policy":
        return (verdict.rank, -tps) >= (found[1].rank, -found[2])
    return verdict.rank >= found[1].rank


def _apply(change: Change, resolved, profile, workload, policy, host_mem, gpu_util, grouping, engine):
    """Re-plan with one change: on the same machine and model with the plan's engine, on another with the best
    engine there."""
    kw = change.kwargs
    try:
        model = resolve_model(kw["model"]) if "model" in kw else resolved
    except InputError:
        return None
    host = kw.get("host_mem", host_mem if "profile" not in kw else None)
    same_machine = "profile" not in kw and "model" not in kw
    return _replan(model, kw.get("profile", profile), kw.get("workload", workload), kw.get("policy", policy), host,
                   gpu_util if "profile" not in kw else None, grouping, engine if same_machine else AUTO_ENGINE)


def _why(change: Change, plan, new) -> str:
    if change.kind == "host_memory":
        return f"holds every weight read per token in RAM instead of NVMe ({new.verdict.value})"
    if change.kind == "policy":
        weights = sum(g.bytes for g in new.groups)
        what = "linear weights in NVFP4" if change.kwargs["policy"] == LOWER_BIT_FP4 else "routed experts in INT4"
        return f"{what}: weights {format_bytes(weights)}"
    if change.kind == "context":
        return f"KV cache and workspace shrink with the context ({new.verdict.value})"
    return f"{new.verdict.value} at {new.estimates.decode_tokens_per_s:,.1f} tok/s"


def suggestions_for(plan, resolved, profile, workload, policy, host_mem, gpu_util, best, grouping=None,
                    engine: str = AUTO_ENGINE) -> list:
    """Helpful changes, at most one per kind: the first (smallest) that helps, except for profiles, where
    the one with the best verdict wins and the smallest machine breaks ties, and for lower-bit policies,
    where the best verdict, then the fastest plan wins. ``grouping``: the plan's own,
    reused by the re-plans of the same model."""
    base_verdict = plan.verdict
    base_tps = plan.estimates.decode_tokens_per_s
    found: dict[str, tuple] = {}
    for change in _changes(plan, resolved, profile, workload, policy, best):
        settled = change.kind in found and change.kind != "policy" and \
            (change.kind != "profile" or found[change.kind][1] is Verdict.FITS)
        if settled:
            continue
        new = _apply(change, resolved, profile, workload, policy, host_mem, gpu_util, grouping, engine)
        if new is None:
            continue
        verdict, tps = new.verdict, new.estimates.decode_tokens_per_s
        if not improves(base_verdict, base_tps, verdict, tps):
            continue
        if change.kind in found and _not_better(change.kind, verdict, tps, found[change.kind]):
            continue
        found[change.kind] = (change, verdict, tps, _why(change, plan, new))
    return [suggestion(*found[kind]) for kind in ("policy", "context", "host_memory", "profile", "model")
            if kind in found]
