"""Read a ``plan.json`` for execution and check it belongs to the checkpoint and the machine (no torch).

A plan says where each tensor group, KV pool and Engram table goes for one model on one profile. Running
it against another checkpoint would place tensors that are not there (or miss ones that are), and against
another machine it would predict for hardware it does not run on, so ``mv4deploy run`` refuses both, with
one line naming the field: the plan's ``fingerprint.model`` (tensor count, bytes and a hash of the placed
groups, recomputed here from the checkpoint's config) and ``fingerprint.profile`` (the profile's name and a
hash of its parsed figures, recomputed from the profile the run names, or the shipped profile of that name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mv4deploy.core.errors import InputError
from mv4deploy.core import schema

REQUIRED = ("model", "profile", "workload", "devices", "groups", "kv_cache", "estimates", "fingerprint")
_TIER = re.compile(r"gpu:\d{1,4}|host|nvme")
_CUT = re.compile(r"^(?P<base>.+?)(?:\[(?P<start>\d+):(?P<stop>\d+)\])?$")


@dataclass(frozen=True)
class GroupRow:
    """One row of ``groups``: a whole group, or a range of a routed-expert group's experts."""

    name: str                       # the group's name without the "[start:stop]" of a cut
    role: str
    layer: int | None
    tier: str                       # "gpu:0", "host", "nvme" ("unplaced" is refused)
    decode: str                     # how it executes per phase: "gpu", "cpu", "stream", "nvme+cpu", ...
    prefill: str
    experts: tuple[int, int] | None  # [start, stop) among the group's experts; None for other groups
    nbytes: int
    format: str                     # the format the plan counts its bytes in


@dataclass(frozen=True)
class PlanFile:
    path: Path
    model: str
    profile: str
    workload: dict
    groups: tuple[GroupRow, ...]
    kv_pools: tuple[dict, ...]      # {name, tier, bytes}, in the planner's order (stage by stage)
    devices: dict[str, dict]        # name -> {capacity_bytes, used_bytes, breakdown}
    estimates: dict
    fingerprint: dict
    raw: dict

    @property
    def gpu_tiers(self) -> list[str]:
        return sorted({r.tier for r in self.groups if r.tier.startswith("gpu")} |
                      {p["tier"] for p in self.kv_pools if p["tier"].startswith("gpu")})


def read_plan(path: str | Path) -> PlanFile:
    """The plan at ``path`` (what ``mv4deploy plan --out`` or ``--json`` wrote); one-line errors otherwise."""
    path = Path(path)
    data = schema.load_json(path)
    if not isinstance(data, dict):
        raise InputError(path, None, type(data).__name__, "a plan is a JSON object (what `mv4deploy plan --out` "
                         "writes)")
    if "points" in data and "groups" not in data:
        raise InputError(path, None, None, "a sweep, not a plan: plan one point (no --sweep) to run it")
    for key in REQUIRED:
        if key not in data:
            hint = " (written by an older mv4deploy: plan again)" if key == "fingerprint" else ""
            raise InputError(path, key, None, f"missing from the plan{hint}")
    workload = schema.Section(data["workload"], str(path), "workload")
    for key in ("context_tokens", "batch", "prefill_chunk"):
        workload.get(key, schema.positive_int)
    rows = tuple(_row(path, i, g) for i, g in enumerate(_list(path, "groups", data["groups"])))
    kv = schema.Section(data["kv_cache"], str(path), "kv_cache")
    pools = tuple(_list(path, "kv_cache.pools", kv.get("pools", lambda v: v)))
    for i, pool in enumerate(pools):
        _keys(path, f"kv_cache.pools[{i}]", pool, ("name", "tier", "bytes"))
        if not isinstance(pool["tier"], str) or not _TIER.fullmatch(pool["tier"]):
            raise InputError(path, f"kv_cache.pools[{i}].tier", pool["tier"], "unknown tier; expected gpu:N, host or nvme")
    devices = _list(path, "devices", data["devices"])
    for i, device in enumerate(devices):
        _keys(path, f"devices[{i}]", device, ("name", "capacity_bytes", "used_bytes", "breakdown"))
        if not isinstance(device["name"], str):
            raise InputError(path, f"devices[{i}].name", device["name"], "must be a device name; plan again")
    for key in ("fingerprint", "estimates"):
        if not isinstance(data[key], dict):
            raise InputError(path, key, type(data[key]).__name__, "must be an object; plan again")
    return PlanFile(path, data["model"], data["profile"], data["workload"], rows, pools,
                    {d["name"]: d for d in devices}, data["estimates"], data["fingerprint"], data)


def _list(path: Path, field: str, value) -> list:
    if not isinstance(value, list):
        raise InputError(path, field, type(value).__name__, "must be a list; plan again")
    return value


def _keys(path: Path, field: str, value, keys: tuple[str, ...]) -> None:
    missing = [k for k in keys if not isinstance(value, dict) or k not in value]
    if missing:
        raise InputError(path, field, None, f"malformed (missing {missing[0]!r}); plan again")


def _row(path: Path, index: int, g: dict) -> GroupRow:
    where = f"groups[{index}]"
    try:
        tier, execution = g["tier"], g["execution"]
        if tier == "unplaced" or execution is None:
            raise InputError(path, f"{where}.tier", g["name"], "unplaced: the plan does not fit, nothing to run")
        if not isinstance(tier, str) or not _TIER.fullmatch(tier):
            raise InputError(path, f"{where}.tier", tier, "unknown tier; expected gpu:N, host or nvme")
        match = _CUT.match(g["name"])
        experts = tuple(g["experts"]) if g.get("experts") is not None else None
        return GroupRow(match["base"], g["role"], g["layer"], tier, execution["decode"], execution["prefill"],
                        experts, int(g["bytes"]), g["format"])
    except KeyError as exc:
        raise InputError(path, where, None, f"malformed group row (missing {exc}); plan again") from None
    except (TypeError, ValueError) as exc:
        raise InputError(path, where, None, f"malformed group row ({exc}); plan again") from None


def check_model(plan: PlanFile, fingerprint: dict, checkpoint: str | Path) -> None:
    """Refuse a plan whose groups are not this checkpoint's (``fingerprint`` from ``plan.model_fingerprint``)."""
    want = plan.fingerprint.get("model") or {}
    if want != fingerprint:
        raise InputError(plan.path, "fingerprint.model", plan.model,
                         f"plan made for another model ({_describe(want)}); {checkpoint} has {_describe(fingerprint)}")


def check_profile(plan: PlanFile, fingerprint: dict, profile_source: str) -> None:
    """Refuse a plan made for another profile, or for an earlier version of this one (figures changed)."""
    want = plan.fingerprint.get("profile") or {}
    if want.get("name") != fingerprint["name"]:
        raise InputError(plan.path, "fingerprint.profile", want.get("name"),
                         f"plan made for another profile; {profile_source} is {fingerprint['name']!r}")
    if want.get("sha256") != fingerprint["sha256"]:
        raise InputError(plan.path, "fingerprint.profile", want.get("name"),
                         f"the figures of {profile_source} changed since the plan was made (re-probed or "
                         f"re-calibrated?): plan again")


def _describe(fp: dict) -> str:
    if not fp:
        return "no fingerprint"
    return f"{fp.get('tensors', '?'):,} tensors, {fp.get('placed_bytes', 0):,} bytes placed, groups " \
           f"{fp.get('groups_sha256', '?')}"


def expert_skew(plan: PlanFile):
    """The plan's routing skew (hot/cold expert groups), as the planner's ``ExpertSkew``."""
    from mv4deploy.plan.workload import ExpertSkew
    skew = plan.workload.get("expert_skew")
    return ExpertSkew(*skew) if skew else None


def parse_device_map(pairs: list[str] | None) -> dict[str, str]:
    """'gpu:0=cpu' pairs (``--device-map``) -> {tier: torch device}; lets a CPU run a GPU plan's split."""
    out = {}
    for pair in pairs or ():
        tier, sep, device = pair.partition("=")
        if not sep or not re.fullmatch(r"gpu:\d+|host|nvme", tier) or not re.fullmatch(r"cpu|cuda(:\d+)?", device):
            raise InputError(None, "--device-map", pair, "expected TIER=DEVICE like gpu:0=cpu or gpu:1=cuda:0")
        out[tier] = device
    return out
