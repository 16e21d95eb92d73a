"""From a plan's group rows to the model's parameters: which tier holds each, and how it executes.

The plan places *groups* (``layers.3.routed_experts[0:37]``, ``layers.3.attention``, ``embedding``) of the
checkpoint's native tensors. Here the groups are rebuilt from the checkpoint's inventory exactly as the
planner built them (``plan.groups.build_groups``), each native tensor is followed through the runtime's name
map to the transformers parameter it fills, and every parameter gets a ``Where``: the tier and the execution
mode per phase. Routed experts are kept per expert (a group may be cut between the GPU and host RAM), Engram
tables per layer, KV pools per layer. Each layer runs on one GPU tier (the one holding its attention), or on
the host on a CPU-only plan. What the runtime cannot execute as planned is listed in ``deviations`` (printed
with the run) instead of silently differing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from mv4deploy.core.errors import InputError
from mv4deploy.runtime.planfile import PlanFile
from mv4deploy.model.tensors import Role
from mv4deploy.model.kv import Access, kv_layout
from mv4deploy.runtime import name_map

HOST, NVME = "host", "nvme"
CPU_MODES = frozenset({"cpu", "nvme+cpu"})
STREAM_MODES = frozenset({"stream", "nvme+stream"})


@dataclass(frozen=True)
class Where:
    tier: str                 # "gpu:0", "host", "nvme"
    decode: str               # "gpu", "cpu", "stream", "nvme+cpu", "nvme+stream", "lookup"
    prefill: str

    def mode(self, phase: str) -> str:
        """"resident" (runs where it lives), "cpu" (runs beside its weights in host RAM, away from the GPU
        that runs its layer) or "stream" (copied to that GPU for each call)."""
        raw = self.decode if phase == "decode" else self.prefill
        if raw in CPU_MODES:
            return "cpu"
        if raw in STREAM_MODES:
            return "stream"
        return "resident"

    @property
    def off_gpu(self) -> bool:
        return not self.tier.startswith("gpu")


@dataclass(frozen=True)
class ExpertPart:
    experts: tuple[int, ...]  # absolute expert indices of the layer
    where: Where


@dataclass
class ModelPlacement:
    params: dict[str, Where] = field(default_factory=dict)          # transformers name -> where (non-expert)
    experts: dict[int, list[ExpertPart]] = field(default_factory=lambda: defaultdict(list))   # layer -> parts
    engram: dict[int, Where] = field(default_factory=dict)          # layer -> its table
    layer_tier: dict[int, str] = field(default_factory=dict)        # layer -> the tier that runs it
    kv: dict[int, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))  # layer -> pool -> tier
    host_topk_pools: dict[int, str] = field(default_factory=dict)   # layer -> top-k pool kept in host RAM
    deviations: list[str] = field(default_factory=list)

    @property
    def primary_tier(self) -> str:
        """Where the model's own inputs live (positions, masks): the tier of the first layer."""
        return self.layer_tier[min(self.layer_tier)] if self.layer_tier else HOST


def resolve_placement(plan: PlanFile, inventory, grouping) -> ModelPlacement:
    if plan.raw.get("decisions", {}).get("parallelism", {}).get("mode") == "tensor+expert parallel":
        raise InputError(plan.path, "decisions.parallelism.mode", "tensor+expert parallel",
                         "sharded tiers need a serving engine (vLLM, SGLang); mv4deploy run executes single-GPU, "
                         "pipeline and CPU plans")
    groups = {g.name: g for g in grouping.groups}
    rows: dict[str, list] = defaultdict(list)
    for row in plan.groups:
        if row.name not in groups:
            raise InputError(plan.path, "groups", row.name, "no such group in this checkpoint")
        rows[row.name].append(row)
    placement = ModelPlacement()
    placement.layer_tier = _layer_tiers(plan, grouping)
    owner = {inventory.tensors[i].name: g.name for g in grouping.groups for i in g.tensor_ids}
    _params(placement, inventory, owner, rows)
    for name, group_rows in rows.items():
        if groups[name].experts:
            _expert_parts(placement, inventory, groups[name], group_rows)
    _kv(placement, plan, inventory.spec)
    _note_modes(placement)
    return placement


def _where(row) -> Where:
    return Where(row.tier, row.decode, row.prefill)


def _layer_tiers(plan: PlanFile, grouping) -> dict[int, str]:
    """Each layer runs where its attention is, if that is a GPU; else on any GPU holding part of it; else on
    the plan's first GPU; on a CPU-only plan, on the host."""
    gpus = plan.gpu_tiers
    by_layer: dict[int, dict[str, str]] = defaultdict(dict)
    for row in plan.groups:
        if row.layer is not None:
            by_layer[row.layer][row.role] = row.tier
    layers = sorted({g.layer for g in grouping.groups if g.layer is not None})
    out = {}
    for layer in layers:
        tiers = by_layer.get(layer, {})
        attention = tiers.get("attention", "")
        on_gpu = sorted(t for t in tiers.values() if t.startswith("gpu"))
        out[layer] = attention if attention.startswith("gpu") else (on_gpu or gpus or [HOST])[0]
    return out


def _params(placement: ModelPlacement, inventory, owner: dict[str, str], rows) -> None:
    from mv4deploy.model.rules import logical_weights
    for weight in logical_weights(inventory.spec):
        group = owner.get(weight.payload)
        if group is None:
            continue                                   # MTP / vision: not placed by the plan, not run
        target = name_map.to_target(weight.name)
        if target is None or target.expert is not None:
            continue                                   # skipped by the runtime, or one routed expert
        where = _where(rows[group][0])
        if weight.stored[0].role is Role.ENGRAM_TABLE:
            placement.engram[weight.stored[0].layer] = where
        else:
            placement.params[target.param] = where


def _expert_parts(placement: ModelPlacement, inventory, group, group_rows) -> None:
    experts = sorted({inventory.tensors[i].expert for i in group.tensor_ids})
    for row in group_rows:
        start, stop = row.experts or (0, len(experts))
        placement.experts[group.layer].append(ExpertPart(tuple(experts[start:stop]), _where(row)))


def _kv(placement: ModelPlacement, plan: PlanFile, spec) -> None:
    """Pools are rows in the planner's order: per stage (GPU, in order), per pool of the layout that has
    layers on that stage, then the compressor state once. The layers a row covers follow from that order."""
    layout = kv_layout(spec)
    stages: dict[str, set[int]] = defaultdict(set)
    for layer, tier in placement.layer_tier.items():
        stages[tier].add(layer)
    expected = []
    for index, tier in enumerate(sorted(stages, key=_tier_order)):
        for pool in layout.pools:
            layers = [layer for layer in pool.layers if layer in stages[tier]]
            if layers:
                expected.append((pool, layers))
        if layout.fixed_bytes_per_sequence and index == 0:
            expected.append((None, []))
    if len(expected) != len(plan.kv_pools):
        raise InputError(plan.path, "kv_cache.pools", len(plan.kv_pools),
                         f"expected {len(expected)} pools for this model's layers and stages")
    for (pool, layers), row in zip(expected, plan.kv_pools):
        for layer in layers:
            placement.kv[layer][row["name"]] = row["tier"]
            runs_on_gpu = placement.layer_tier[layer].startswith("gpu")
            if runs_on_gpu and not row["tier"].startswith("gpu"):
                if pool.access is Access.TOPK:
                    placement.host_topk_pools[layer] = row["name"]
                else:
                    placement.deviations.append(f"KV pool {row['name']} of layer {layer} is planned in host RAM "
                                                f"but densely read: kept on the GPU by this runtime")


def _tier_order(tier: str) -> tuple[int, int]:
    return (0, int(tier.split(":")[1])) if tier.startswith("gpu:") else (1, 0)


# Modules whose forward takes and returns plain tensors: the CPU can run them beside their weights.
CPU_CAPABLE = (".mlp.shared_experts.", "model.embed_tokens.", "lm_head.")


def cpu_capable(param: str) -> bool:
    return any(part in f".{param}" or param.startswith(part) for part in CPU_CAPABLE)


def _note_modes(placement: ModelPlacement) -> None:
    streamed = sorted({p.rsplit(".", 2)[-2] if "." in p else p for p, w in placement.params.items()
                       if w.off_gpu and "cpu" in (w.mode("decode"), w.mode("prefill")) and not cpu_capable(p)
                       and placement.layer_tier.get(_layer_of(p), placement.primary_tier).startswith("gpu")})
    if streamed:
        placement.deviations.append(f"{len(streamed)} kinds of module planned to run on the CPU ({', '.join(streamed[:4])}"
                                    f"{', ...' if len(streamed) > 4 else ''}) are streamed to the GPU instead")
    if any(w.tier == NVME for w in placement.params.values()) or any(
            p.where.tier == NVME for parts in placement.experts.values() for p in parts):
        placement.deviations.append("groups planned on NVMe run from host RAM (loaded there; the page cache "
                                    "is not measured)")


def _layer_of(param: str) -> int | None:
    parts = param.split(".")
    if len(parts) > 2 and parts[0] == "model" and parts[1] == "layers":
        return int(parts[2])
    return None
