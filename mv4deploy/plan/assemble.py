"""``assemble_plan``: weigh the candidates, keep the best, and assemble the ``Plan`` a user reads
(``make.make_plan`` adds the suggestions). It is pure: it reads the resolved model and the profile it is
given, imports no torch, probes no device and writes nothing.
"""

from __future__ import annotations

from dataclasses import replace

from mv4deploy.hardware.profile import HardwareProfile
from mv4deploy.model.source import ResolvedModel
from mv4deploy.engines.engine import AUTO as AUTO_ENGINE, load_engine
from mv4deploy.plan.engine_choice import EngineChoice, Weighed, weigh_engines, why_chosen
from mv4deploy.plan.engram import engram_summary
from mv4deploy.plan.groups import Grouping
from mv4deploy.plan.hints import Hints, engine_hints
from mv4deploy.plan.items import ItemKind
from mv4deploy.plan.kv_tiering import kv_summary
from mv4deploy.plan.multigpu import reason
from mv4deploy.plan.plan import (Decisions, Exclusion, Fingerprint, FormatUse, Parallelism, Plan, PolicyChoice,
                                 Unplaced, device_usage, group_rows, model_fingerprint, profile_fingerprint)
from mv4deploy.plan.planner import Candidate, candidates, choose, expert_execution, with_bound, workspace_devices
from mv4deploy.plan.policy import AUTO, Policy
from mv4deploy.plan.tiers import Machine, TierKind
from mv4deploy.plan.verdict import Verdict
from mv4deploy.plan.workload import Workload
from mv4deploy.formats import FORMATS


def assemble_plan(resolved: ResolvedModel, profile: HardwareProfile, workload: Workload, policy: str = AUTO,
                  host_mem_bytes: int | None = None, gpu_mem_util: float | None = None,
                  prefill_stream: bool | None = None, quick: bool = False,
                  grouping: Grouping | None = None, engine: str = AUTO_ENGINE) -> tuple[Plan, Candidate, Grouping]:
    """The plan without suggestions, with the chosen candidate and the grouping (what ``suggest`` needs).
    ``quick`` weighs fewer candidates (no prefill streaming) and derives no engine hints: what
    suggestion re-plans use; ``prefill_stream`` forces streaming offloaded experts to the GPU for prefill
    on or off (None: the planner chooses); ``grouping``: the model's groups when the caller already built
    them (a sweep, a re-plan); ``engine``: the engine to model, or ``auto`` (``engine_choice``)."""
    def weigh(e):
        nonlocal grouping
        found, machine, chosen_policy, grouping = candidates(resolved, profile, workload, policy, host_mem_bytes,
                                                             gpu_mem_util, quick=quick, prefill_stream=prefill_stream,
                                                             grouping=grouping, engine=e)
        return (*choose(found), machine, chosen_policy)

    runs, refused, forced = weigh_engines(engine, profile, resolved.spec.architecture.value, weigh)
    name = min(runs, key=lambda n: (runs[n][0].verdict.rank, -runs[n][0].estimates.decode_tokens_per_s))
    best, by_mode, machine, chosen_policy = runs[name]
    best = with_bound(best, workload.batch)
    weighed = [Weighed(n, r[0].verdict.value, r[0].estimates.decode_tokens_per_s) for n, r in runs.items()]
    choice = EngineChoice(name, machine.engine.version, why_chosen(name, engine, weighed, refused),
                          tuple(weighed), tuple(refused))
    kinds: dict = {}
    for p in best.placement.placed:
        kinds.setdefault(p.item.kind, []).append(p)
    engram = None
    if kinds.get(ItemKind.ENGRAM):
        engram = engram_summary(kinds[ItemKind.ENGRAM], best.estimates.engram_windows_s, best.placement.free_bytes)
        engram = replace(engram, traffic_bytes_per_s=engram.bytes_per_token * best.estimates.decode_tokens_per_s)
    activations = dict.fromkeys(workspace_devices(machine), best.workspace.total_bytes)
    devices = device_usage(machine.devices, best.placement.placed, activations)
    decisions = _decisions(best, by_mode, machine, chosen_policy, grouping, resolved)
    beyond_model = workload.context_tokens > resolved.spec.max_position_embeddings
    verdict = Verdict.DOES_NOT_FIT if beyond_model or forced else best.verdict
    plan = Plan(model=resolved.spec.name, profile=profile.name, workload=workload, verdict=verdict,
                devices=devices, groups=group_rows(best.placement),
                kv_cache=kv_summary(kinds.get(ItemKind.KV, [])), engram=engram, estimates=best.estimates,
                hints=Hints(), suggestions=(),
                warnings=tuple(_warnings(best, machine, resolved, workload) + _refused(choice, forced)),
                decisions=decisions, placement=best.placement,
                fingerprint=Fingerprint(model_fingerprint(resolved.inventory, grouping.groups),
                                        profile_fingerprint(profile)), engine=choice)
    if quick or verdict is Verdict.DOES_NOT_FIT:   # no launch line for what cannot run
        return plan, best, grouping
    hints, hint_warnings = engine_hints(plan, best, resolved, machine, _refused_launches(choice))
    return replace(plan, hints=hints, warnings=plan.warnings + tuple(hint_warnings)), best, grouping


def _refused_launches(choice: EngineChoice) -> frozenset[str]:
    """Launch keys no engine behind them can serve: a key is kept while one engine using it was not refused
    (llama.cpp and ik_llama.cpp share one)."""
    refused = {load_engine(r.engine).launch for r in choice.refused}
    kept = {load_engine(w.engine).launch for w in choice.weighed}
    return frozenset(refused - kept)


def _refused(choice: EngineChoice, forced: bool) -> list[str]:
    return [f"does not fit: {r.why}" for r in choice.refused if r.engine == choice.name] if forced else []


def _execution_formats(best: Candidate) -> tuple[FormatUse, ...]:
    """Distinct (tier, format, how it executes) among placed weights: native, or weight-only dequant."""
    seen = {}
    for p in best.placement.placed:
        if p.item.kind is not ItemKind.WEIGHTS or p.option.tier.kind is TierKind.NVME or p.option.format == "raw":
            continue
        tier = p.option.tier
        if tier.kind is TierKind.HOST and p.option.decode.mode == "stream":
            continue
        compute = FORMATS[p.option.format].compute if p.option.format in FORMATS else "bf16"
        _, how = tier.rate(compute)
        seen[(tier.name, p.option.format)] = how
    return tuple(FormatUse(t, f, how) for (t, f), how in sorted(seen.items()))


def _decisions(best: Candidate, by_mode, machine: Machine, policy: Policy, grouping, resolved) -> Decisions:
    excluded = tuple(Exclusion(why, len(ids), nbytes) for why, ids, nbytes in grouping.excluded)
    placement, est = best.placement, best.estimates
    return Decisions(
        policy=PolicyChoice(policy.name, policy.description),
        parallelism=Parallelism(best.layout.mode.value, reason(machine.profile, best.layout, by_mode)),
        routed_experts=expert_execution(best),
        formats=_execution_formats(best),
        workspace=best.workspace.to_json(),
        excluded=excluded,
        unplaced=tuple(Unplaced(p.name, p.bytes if p.option else 0) for p in placement.unplaced),
        bound_gap=est.bound_decode_tokens_per_s / est.decode_tokens_per_s if est.decode_tokens_per_s else None,
        decode_seconds_by_resource=dict(sorted(est.by_resource_s.items())),
    )


def _warnings(best: Candidate, machine: Machine, resolved: ResolvedModel, workload: Workload) -> list[str]:
    profile, notes = machine.profile, []
    spec = resolved.spec
    if workload.context_tokens > spec.max_position_embeddings:
        notes.append(f"does not fit: context {workload.context_tokens:,} exceeds the model's "
                     f"max_position_embeddings {spec.max_position_embeddings:,} (no engine serves it; "
                     f"--context {spec.max_position_embeddings} at most)")
    if machine.host is not None and not (machine.host.bandwidth_bytes_per_s and machine.host.compute_flops_per_s):
        notes.append(f"{profile.name}: host bandwidth or compute unknown, so the CPU is not considered to "
                     f"execute weights (measure with `mv4deploy profile probe`)")
    if profile.gpus is not None and not profile.gpus.compute_flops_per_s:
        notes.append(f"{profile.name}: {profile.gpus.kind.value.upper()} compute unknown: decode is estimated "
                     f"from memory bandwidth alone and prefill is not estimated")
    if profile.storage is not None and not machine.rates.storage_read.value:
        notes.append(f"{profile.name}: storage read bandwidth unknown: NVMe is not used")
    if not best.workspace_fits:
        notes.append("a GPU's reserve and workspace alone exceed its memory: shorten --prefill-chunk or --context")
    engram = [p for p in best.placement.placed if p.item.kind is ItemKind.ENGRAM]
    windows = best.estimates.engram_windows_s
    late = [p.item.layer for p in engram if p.option.decode.seconds > windows.get(p.item.layer, 0.0)]
    if late:
        notes.append(f"Engram lookups of layers {late} outlast the layers before them: part of their time adds "
                     f"to each step")
    return notes
