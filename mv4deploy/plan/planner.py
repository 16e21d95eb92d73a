"""The planner's search (pure: no torch, no device probing): candidates per layout and policy, and the choice.

For each way the GPUs can share the model (``multigpu``) and each prefill mode (CPU-side, or streaming
offloaded experts to the GPU, which needs a stream buffer there), it builds the items with their costs,
places them (``placement``), bounds the result, estimates speeds and judges the fit; the best candidate
wins: the best verdict, then the fastest decode, where a decode within ``DECODE_TIE`` of the fastest
counts as a tie broken by prefill speed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mv4deploy.engines.engine import Engine
from mv4deploy.hardware.profile import HardwareProfile
from mv4deploy.model.kv import kv_layout
from mv4deploy.model.source import ResolvedModel
from mv4deploy.plan.costs import expert_calls, graph_overhead_s, overhead_s, prefill_overhead_s
from mv4deploy.plan.engram import engram_item
from mv4deploy.plan.estimates import Estimates, bound_tps, estimate
from mv4deploy.plan.groups import GroupClass, Grouping, build_groups
from mv4deploy.plan.items import Item, group_work, weight_item
from mv4deploy.plan.kv_tiering import kv_items
from mv4deploy.plan.multigpu import Layout, Mode, build_layout, candidate_modes, crossing_s, kv_replicas
from mv4deploy.plan.placement import Placement, lower_bound, multipliers, place
from mv4deploy.plan.plan import ExpertExecution
from mv4deploy.plan.policy import Policy, resolve_policy
from mv4deploy.plan.tiers import Machine, TierKind, build_machine
from mv4deploy.plan.verdict import Verdict, verdict_of
from mv4deploy.plan.workload import Workload
from mv4deploy.plan.workspace import Workspace, stream_buffer_bytes, workspace

DECODE_TIE = 0.03


@dataclass(frozen=True)
class Candidate:
    layout: Layout
    stream_prefill: bool
    items: tuple[Item, ...]
    capacity: dict[str, int]
    placement: Placement
    estimates: Estimates
    verdict: Verdict
    workspace: Workspace
    workspace_fits: bool
    fixed_decode_s: float = 0.0      # crossings + engine overhead per decode step: what the bound adds too


def _items(resolved: ResolvedModel, grouping: Grouping, policy: Policy, workload: Workload, layout: Layout,
           machine: Machine, stream_prefill: bool, cache: dict) -> list[Item]:
    """``cache``: weight costs already priced on this machine (``items.weight_item``), shared by its candidates."""
    spec, items = resolved.spec, []
    for group, work in zip(grouping.groups, group_works(grouping, policy, spec, workload)):
        gpu = layout.gpu_for(group.layer, group.cls)
        if group.cls is GroupClass.ENGRAM_TABLE:
            items.append(engram_item(group, workload, gpu, machine.host, machine.nvme))
        else:
            items.append(weight_item(group, work, spec, workload, gpu, machine.host, machine.nvme,
                                     layout.expert_shards, stream_prefill, cache))
    layers = sorted({g.layer for g in grouping.groups if g.layer is not None})
    items += kv_items(kv_layout(spec, policy.kv_cache), workload, layout.stage_layers(layers), machine.host,
                      kv_replicas(spec, layout))
    return items


def group_works(grouping: Grouping, policy: Policy, spec, workload: Workload) -> tuple:
    """Each group's ``GroupWork`` (None for an Engram table), worked out once per grouping, policy and workload
    and kept on the grouping: every engine, layout and suggestion prices the same work."""
    key = ("group_works", policy, workload)
    works = grouping.memo.get(key)
    if works is None:
        works = grouping.memo[key] = tuple(None if g.cls is GroupClass.ENGRAM_TABLE else
                                           group_work(g, policy, spec, workload) for g in grouping.groups)
    return works


def workspace_devices(machine: Machine) -> set[str]:
    """Where activations live: every GPU / NPU, or the host when the profile has none."""
    gpus = {d.name for d in machine.devices if d.kind.accelerator}
    return gpus or {"host"}


def _capacity(machine: Machine, layout: Layout, ws: Workspace) -> tuple[dict[str, int], bool]:
    """Free bytes per tier once reserves and the workspace (on each GPU, or the host) are set aside."""
    busy = workspace_devices(machine)
    free = {d.name: d.capacity_bytes - d.reserve_bytes - (ws.total_bytes if d.name in busy else 0)
            for d in machine.devices}
    fits = all(v >= 0 for v in free.values())
    capacity = {t.name: max(0, sum(free[d] for d in t.devices)) for t in layout.gpus}
    for tier in (machine.host, machine.nvme):
        if tier is not None:
            capacity[tier.name] = max(0, free[tier.name])
    return capacity, fits


def _evaluate(resolved, grouping, policy, workload, machine, layout, stream_buffer: int, cache: dict) -> Candidate:
    """One candidate, without its bound (``with_bound`` adds it to the one that is kept: it costs as much as
    the placement and changes no choice)."""
    spec = resolved.spec
    ws = workspace(spec, workload, stream_buffer)
    items = _items(resolved, grouping, policy, workload, layout, machine, stream_buffer > 0, cache)
    capacity, ws_fits = _capacity(machine, layout, ws)
    placement = place(items, capacity)
    layers = sorted({g.layer for g in grouping.groups if g.layer is not None})
    moe_layers = len({g.layer for g in grouping.groups if g.cls is GroupClass.ROUTED_EXPERTS})
    cross_d = crossing_s(machine, layout, spec, workload.batch, moe_layers, len(layers))
    cross_p = crossing_s(machine, layout, spec, workload.chunk_tokens, moe_layers, len(layers))
    overhead = machine.overhead
    graph_s = graph_overhead_s(getattr(overhead, "graph", None), spec.architecture.value, len(layers),
                               bool(layout.gpus), machine.profile.host.cores or 1)
    over_d = overhead_s(overhead, len(layers), expert_calls(grouping.groups, workload.batch),
                        spec.layer_family, layout.gpu_count) + graph_s
    over_p = prefill_overhead_s(overhead, len(layers)) + graph_s
    est = estimate(placement, len(layers), workload, cross_d, cross_p, 0.0, over_d, over_p,
                   overhead.prefill_efficiency)
    return Candidate(layout, stream_buffer > 0, tuple(items), capacity, placement, est,
                     verdict_of(placement, ws_fits, bool(layout.gpus)), ws, ws_fits, cross_d + over_d)


def with_bound(candidate: Candidate, batch: int) -> Candidate:
    """The candidate with its fractional bound (``placement.lower_bound``) in its estimates."""
    placement = candidate.placement
    bound_s = lower_bound(list(candidate.items), candidate.capacity, multipliers(placement, candidate.capacity))
    tps = bound_tps(batch, bound_s + candidate.fixed_decode_s, placement)
    return replace(candidate, estimates=replace(candidate.estimates, bound_decode_tokens_per_s=tps))


def _offloaded_expert_bytes(candidate: Candidate) -> int:
    """Largest routed-expert group left off the GPUs (0: nothing to stream)."""
    sizes = [p.item.options[0].bytes for p in candidate.placement.placed
             if p.item.cls is GroupClass.ROUTED_EXPERTS and p.option.tier.kind is not TierKind.GPU]
    return max(sizes, default=0)


def _best(candidates: list[Candidate]) -> Candidate:
    """Per layout, streaming prefill wins over CPU prefill when its decode is within ``DECODE_TIE`` and its
    prefill is faster (it reserves a stream buffer, so its decode is never higher); across layouts the
    best verdict, then the fastest decode, then the fastest prefill wins."""
    per_layout = {}
    for c in candidates:
        per_layout.setdefault(c.layout.mode, []).append(c)
    finalists = []
    for group in per_layout.values():
        verdict = min(c.verdict.rank for c in group)
        pool = [c for c in group if c.verdict.rank == verdict]
        fastest = max(c.estimates.decode_tokens_per_s for c in pool)
        close = [c for c in pool if c.estimates.decode_tokens_per_s >= (1 - DECODE_TIE) * fastest]
        finalists.append(max(close, key=lambda c: (c.estimates.prefill_tokens_per_s or 0.0,
                                                   c.estimates.decode_tokens_per_s)))
    return min(finalists, key=lambda c: (c.verdict.rank, -c.estimates.decode_tokens_per_s,
                                          -(c.estimates.prefill_tokens_per_s or 0.0)))


def candidates(resolved: ResolvedModel, profile: HardwareProfile, workload: Workload, policy_name: str,
               host_mem_bytes: int | None = None, gpu_mem_util: float | None = None, quick: bool = False,
               prefill_stream: bool | None = None, grouping: Grouping | None = None, engine: Engine | None = None):
    """Every candidate the planner weighs, and the machine, policy and grouping they share. ``quick`` leaves
    out the prefill-streaming candidates (they change prefill, rarely the verdict): suggestions use it.
    ``prefill_stream`` True / False forces streaming offloaded experts for prefill on / off (None: weigh both).
    ``grouping``: the model's groups from an earlier plan, reused when they serve this model and workload.
    ``engine``: whose kernels, layouts and fixed costs the estimates model (None: the bare roofline)."""
    machine = build_machine(profile, host_mem_bytes, gpu_mem_util, engine)
    policy = resolve_policy(policy_name, machine.device_kind, resolved.spec.architecture)
    if grouping is None or not grouping.serves(resolved.inventory, workload.include_mtp, workload.expert_skew):
        grouping = build_groups(resolved.inventory, workload.include_mtp, workload.expert_skew)
    found, cache = [], {}
    for mode in candidate_modes(profile, engine):
        layout = build_layout(machine, mode, grouping)
        plain = _evaluate(resolved, grouping, policy, workload, machine, layout, 0, cache)
        offloaded = _offloaded_expert_bytes(plain)
        can_stream = (offloaded and layout.gpus and machine.host is not None and layout.gpus[0].link_bytes_per_s
                      and layout.gpus[0].streams)
        if prefill_stream is not True or not can_stream:
            found.append(plain)
        if can_stream and prefill_stream is not False and not (quick and prefill_stream is None):
            found.append(_evaluate(resolved, grouping, policy, workload, machine, layout,
                                   stream_buffer_bytes(offloaded), cache))
    return found, machine, policy, grouping


def choose(found: list[Candidate]) -> tuple[Candidate, dict[Mode, tuple[str, float]]]:
    """The best candidate, and per layout mode the best verdict and decode speed it reached."""
    best = _best(found)
    by_mode: dict[Mode, tuple[str, float]] = {}
    for mode in dict.fromkeys(c.layout.mode for c in found):     # first-seen order: deterministic
        top = _best([c for c in found if c.layout.mode is mode])
        by_mode[mode] = (top.verdict.value, top.estimates.decode_tokens_per_s)
    return best, by_mode


def expert_execution(candidate: Candidate) -> ExpertExecution:
    """Where offloaded routed experts execute, per phase, from the modes their costs chose."""
    decode, prefill = set(), set()
    for p in candidate.placement.placed:
        if p.item.cls is GroupClass.ROUTED_EXPERTS and p.option.tier.kind is not TierKind.GPU:
            decode.add(p.option.decode.mode)
            prefill.add(p.option.prefill.mode)
    return ExpertExecution(tuple(sorted(decode)), tuple(sorted(prefill)), candidate.stream_prefill,
                           "each offloaded group takes the cheaper of running on the CPU beside its weights and "
                           "streaming them over the host link to the GPU, per phase")
