"""The ``Plan``: a typed result with the same shape every time, and its JSON contract.

``Plan.to_json()`` keys (stable; other tools read them):
``model, profile, workload{context_tokens, batch, prefill_chunk, prefill_chunk_tokens, expert_skew,
include_mtp}, verdict, devices[{name, kind, capacity_bytes, used_bytes, breakdown{weights, engram, kv_cache,
activations, reserve}}], groups[{name, group, role, layer, stored_format, tier, format, bytes}] (one row per
placed piece of a group: group = the whole group's name, role = its class, stored_format = the checkpoint's
format for most of its bytes, format = the plan's), kv_cache{pools[{name, tier, bytes}], gpu_bytes_saved,
added_s_per_token}, engram (null or a dict), estimates{decode_tokens_per_s, prefill_tokens_per_s,
time_to_first_token_s, bottleneck, bound_decode_tokens_per_s}, hints{vllm, sglang, llama_cpp,
accelerate_device_map}, suggestions[...], warnings[...]``, plus ``decisions``: why the plan is what it is
(parallelism, where experts execute per phase, formats and their execution, workspace, exclusions).

Added for ``mv4deploy run`` (extra keys; the ones above are unchanged): each group row says how it executes
(``execution{decode, prefill}``: "gpu", "cpu", "stream", "nvme+cpu", "nvme+stream", "lookup"; null when
unplaced) and, for routed experts, which experts the row holds (``experts: [start, stop)``; null for other
groups); and ``fingerprint{model{tensors, placed_bytes, groups_sha256}, profile{name, sha256}}`` lets a run refuse a
plan made for another model or machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import NamedTuple

from mv4deploy.core.jsonify import JsonResult
from mv4deploy.plan.engine_choice import EngineChoice
from mv4deploy.plan.engram import EngramUse
from mv4deploy.plan.estimates import Estimates
from mv4deploy.plan.hints import Hints
from mv4deploy.plan.items import ItemKind, Placed
from mv4deploy.plan.kv_tiering import KvCacheUse
from mv4deploy.plan.placement import Placement
from mv4deploy.plan.tiers import Device, MemoryKind
from mv4deploy.plan.verdict import Suggestion, Verdict
from mv4deploy.plan.workload import Workload

BREAKDOWN = ("weights", "engram", "kv_cache", "activations", "reserve")
CATEGORY = {ItemKind.WEIGHTS: "weights", ItemKind.ENGRAM: "engram", ItemKind.KV: "kv_cache"}


@dataclass(frozen=True)
class DeviceUse:
    name: str
    kind: MemoryKind
    capacity_bytes: int
    breakdown: dict[str, int]

    @property
    def used_bytes(self) -> int:
        return sum(self.breakdown.values())

    @property
    def headroom_bytes(self) -> int:
        return self.capacity_bytes - self.used_bytes

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind.value, "capacity_bytes": self.capacity_bytes,
                "used_bytes": self.used_bytes, "breakdown": dict(self.breakdown)}


def device_usage(devices: tuple[Device, ...], placed: tuple[Placed, ...],
                 activations: dict[str, int]) -> tuple[DeviceUse, ...]:
    """Bytes per device and category; a tier sharded over several devices splits each item evenly."""
    use = {d.name: dict.fromkeys(BREAKDOWN, 0) for d in devices}
    for d in devices:
        use[d.name]["reserve"] = d.reserve_bytes
        use[d.name]["activations"] = activations.get(d.name, 0)
    for p in placed:
        members = p.option.tier.devices
        share, rest = divmod(p.bytes, len(members))
        for i, name in enumerate(members):
            use[name][CATEGORY[p.item.kind]] += share + (rest if i == 0 else 0)
    return tuple(DeviceUse(d.name, d.kind, d.capacity_bytes, use[d.name]) for d in devices)


# Leaf records of the plan, in their JSON field order: immutable, compared by value, one line each.
Execution = NamedTuple("Execution", [("decode", str), ("prefill", str)])   # "gpu", "cpu", "stream", "nvme+cpu", ...
ModelFingerprint = NamedTuple("ModelFingerprint", [("tensors", int), ("placed_bytes", int), ("groups_sha256", str)])
ProfileFingerprint = NamedTuple("ProfileFingerprint", [("name", str), ("sha256", str)])
PolicyChoice = NamedTuple("PolicyChoice", [("name", str), ("description", str)])
Parallelism = NamedTuple("Parallelism", [("mode", str), ("reason", str)])
FormatUse = NamedTuple("FormatUse", [("tier", str), ("format", str), ("execution", str)])   # execution: "native" or
Exclusion = NamedTuple("Exclusion", [("reason", str), ("tensors", int), ("bytes", int)])  # how the tier dequantizes
Unplaced = NamedTuple("Unplaced", [("name", str), ("bytes", int)])


@dataclass(frozen=True)
class GroupRow(JsonResult):
    """One placed piece of a group: ``group`` is the whole group's name, ``role`` its class,
    ``stored_format`` the checkpoint's format for most of its bytes, ``format`` the plan's."""

    name: str
    group: str
    role: str
    layer: int | None
    stored_format: str
    tier: str
    format: str
    bytes: int
    execution: Execution | None          # None when unplaced
    experts: tuple[int, int] | None      # routed experts: the row holds [start, stop)


def group_rows(placement: Placement) -> tuple[GroupRow, ...]:
    """One row per placed weight group or Engram table (a cut group gives one row per piece)."""
    rows = []
    for p, placed in [(p, True) for p in placement.placed] + [(p, False) for p in placement.unplaced]:
        if p.item.kind is ItemKind.KV:
            continue
        execution = Execution(p.option.decode.mode, p.option.prefill.mode) if placed else None
        rows.append(GroupRow(p.name, p.item.name, p.item.cls.value, p.item.layer, p.item.group.main_format,
                             p.option.tier.name if placed else "unplaced",
                             p.option.format if p.option else "as-stored", p.bytes if p.option else 0,
                             execution, (p.start, p.stop) if p.item.units > 1 else None))
    return tuple(rows)


def _digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Fingerprint(JsonResult):
    model: ModelFingerprint
    profile: ProfileFingerprint


def model_fingerprint(inventory, groups) -> ModelFingerprint:
    """What a checkpoint must match to run the plan: the count of tensors its config implies, the bytes of
    the groups the plan placed (as stored), and (name, bytes, tensor count) of every group, hashed. Summed
    from the groups, not the 145K tensors of V4-Pro: the plan stays fast."""
    rows = [(g.name, g.native_bytes, len(g.tensor_ids)) for g in groups]
    return ModelFingerprint(len(inventory.tensors), sum(g.native_bytes for g in groups), _digest(rows))


def profile_fingerprint(profile) -> ProfileFingerprint:
    """The profile's name and a hash of every parsed figure (not its description or file path): a plan
    made before a profile was re-probed or re-calibrated no longer matches it."""
    from mv4deploy.hardware.profile import profile_to_dict
    figures = {k: v for k, v in profile_to_dict(profile).items() if k not in ("name", "description", "source")}
    return ProfileFingerprint(profile.name, _digest(figures))


@dataclass(frozen=True)
class ExpertExecution:
    """Where offloaded routed experts execute, per phase."""

    offloaded_decode: tuple[str, ...]
    offloaded_prefill: tuple[str, ...]
    prefill_streams_to_gpu: bool
    why: str


@dataclass(frozen=True)
class Decisions(JsonResult):
    """Why the plan is what it is: policy, parallelism, where offloaded experts execute, formats and their
    execution, the workspace, what was left out or could not be placed, and the time by resource."""

    policy: PolicyChoice
    parallelism: Parallelism
    routed_experts: ExpertExecution
    formats: tuple[FormatUse, ...]
    workspace: dict                      # ``Workspace.to_json()``
    excluded: tuple[Exclusion, ...]
    unplaced: tuple[Unplaced, ...]
    bound_gap: float | None
    decode_seconds_by_resource: dict[str, float]


@dataclass(frozen=True)
class Plan:
    model: str
    profile: str
    workload: Workload
    verdict: Verdict
    devices: tuple[DeviceUse, ...]
    groups: tuple[GroupRow, ...]
    kv_cache: KvCacheUse
    engram: EngramUse | None
    estimates: Estimates
    hints: Hints
    suggestions: tuple[Suggestion, ...]
    warnings: tuple[str, ...]
    decisions: Decisions
    placement: Placement = field(compare=False, repr=False)
    fingerprint: Fingerprint | None = None
    engine: EngineChoice | None = None   # the engine modelled and why
    cluster: object = None           # cluster.ClusterPlan: the layout over every node (clusters, or when asked)

    def to_json(self) -> dict:
        data = self._json()
        if self.cluster is not None:      # only then: a single-node plan's JSON is what it was before clusters
            data["cluster"] = self.cluster.to_json()
        return data

    def _json(self) -> dict:
        return {
            "model": self.model,
            "profile": self.profile,
            "workload": self.workload.to_json(),
            "verdict": self.verdict.value,
            "engine": self.engine.to_json() if self.engine is not None else None,
            "devices": [d.to_json() for d in self.devices],
            "groups": [g.to_json() for g in self.groups],
            "kv_cache": self.kv_cache.to_json(),
            "engram": self.engram.to_json() if self.engram is not None else None,
            "estimates": self.estimates.to_json(),
            "hints": self.hints.to_json(),
            "suggestions": [s.to_json() for s in self.suggestions],
            "warnings": list(self.warnings),
            "decisions": self.decisions.to_json(),
            "fingerprint": self.fingerprint.to_json() if self.fingerprint is not None else {},
        }
