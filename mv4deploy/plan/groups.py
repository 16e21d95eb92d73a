"""Tensor groups: the units the planner places, built from an ``Inventory`` in one pass.

Per layer: attention, indexer, compressor, shared expert, dense MLP, routed experts (one group, or a
hot and a cold set under a routing skew), hash router, router, norms + mHC, Engram table, Engram
projection; then the embedding and the head (final norm and mHC head included). MTP / draft layers
are left out unless asked; the vision tower always is (the plan is for text decoding).

Each group knows its tensors (indices into the inventory, so "every tensor placed exactly once" can be
checked), its bytes as stored, the logical shapes of its quantizable weights (to size it in any other
format through ``mv4deploy.formats``), and how a decoded token reads it: entirely (attention,
dense and shared blocks), by rows (embedding, ``tid2eid``, Engram tables), or by routing (experts).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from itertools import groupby
from math import prod
from operator import itemgetter
from typing import Callable

from mv4deploy.model.tensors import RAW_FORMAT, ExpertBlock, Inventory, Role
from mv4deploy.formats.dtypes import tensor_nbytes
from mv4deploy.plan.workload import ExpertSkew
from mv4deploy.formats import FORMATS, get_format


class GroupClass(str, Enum):
    EMBEDDING = "embedding"
    ATTENTION = "attention"
    INDEXER = "indexer"
    COMPRESSOR = "compressor"
    SHARED_EXPERT = "shared_expert"
    DENSE_MLP = "dense_mlp"
    ROUTED_EXPERTS = "routed_experts"
    HASH_ROUTER = "hash_router"
    ROUTER = "router"
    NORMS_MHC = "norms_mhc"
    ENGRAM_TABLE = "engram_table"
    ENGRAM_PROJ = "engram_proj"
    HEAD = "head"


ROLE_CLASS = {
    Role.EMBEDDING: GroupClass.EMBEDDING, Role.ATTENTION: GroupClass.ATTENTION, Role.INDEXER: GroupClass.INDEXER,
    Role.COMPRESSOR: GroupClass.COMPRESSOR, Role.ROUTED_EXPERT: GroupClass.ROUTED_EXPERTS,
    Role.SHARED_EXPERT: GroupClass.SHARED_EXPERT, Role.DENSE_MLP: GroupClass.DENSE_MLP,
    Role.HASH_ROUTER: GroupClass.HASH_ROUTER, Role.ROUTER: GroupClass.ROUTER,
    Role.ENGRAM_TABLE: GroupClass.ENGRAM_TABLE, Role.ENGRAM_PROJ: GroupClass.ENGRAM_PROJ,
    Role.MHC: GroupClass.NORMS_MHC, Role.NORM: GroupClass.NORMS_MHC, Role.LM_HEAD: GroupClass.HEAD,
}
# Kept exactly as stored whatever the policy: precision-critical or not a matmul weight.
FIXED_ROLES = frozenset({Role.NORM, Role.MHC, Role.ENGRAM_TABLE, Role.VISION})
# The inverse of ROLE_CLASS without the fixed roles: the inventory roles whose weights a policy converts in
# a group of each class. A plan's group row names its class; this turns it into quantize rules (one per role).
CLASS_ROLES: dict[GroupClass, tuple[Role, ...]] = {
    cls: tuple(role for role, c in ROLE_CLASS.items() if c is cls and role not in FIXED_ROLES) for cls in GroupClass}
ROW_ROLES = frozenset({Role.EMBEDDING, Role.ENGRAM_TABLE})  # a token reads one row (per hash column)


@dataclass(frozen=True)
class Group:
    name: str
    cls: GroupClass
    layer: int | None
    tensor_ids: tuple[int, ...]        # indices into inventory.tensors
    native_bytes: int                  # as stored
    fixed_bytes: int                   # tensors no policy converts (norms, mHC, f32, integer tables)
    weights: tuple[tuple[tuple[int, ...], str, int], ...]  # (logical shape, stored format, count)
    params: int
    row_bytes: int = 0                 # native bytes of row-read tables (embedding, tid2eid, Engram rows)
    rows: int = 0                      # rows of those tables
    rows_per_token: int = 0            # rows one token reads
    experts: int = 0                   # routed experts in this group
    expert_probability: float = 0.0    # chance one token is routed to a given expert of this group
    flops_per_token: float = 0.0       # matmul FLOPs one token spends here (2 per parameter used)
    main_format: str = ""              # the stored format holding most of the group's bytes

    def resident_bytes(self, target: Callable[[GroupClass, str], str] | None = None) -> int:
        """Bytes in memory when ``target(cls, stored_format)`` names each weight's format (None: as stored)."""
        if target is None:
            return self.native_bytes
        return self.fixed_bytes + sum(count * _nbytes(target(self.cls, fmt), shape)
                                      for shape, fmt, count in self.weights)

    def touched_fraction(self, tokens: int) -> float:
        """Fraction of the group's bytes that ``tokens`` tokens processed together read (a decode step of
        a batch, or a prefill chunk): all of it, the rows they look up, or the experts they route to."""
        if self.experts:
            return 1.0 - (1.0 - self.expert_probability) ** tokens
        dense = self.native_bytes - self.row_bytes
        rows = min(self.row_bytes, self.row_bytes * tokens * self.rows_per_token / self.rows) if self.rows else 0
        return (dense + rows) / self.native_bytes if self.native_bytes else 0.0

    def rows_read(self, tokens: int) -> int:
        return tokens * self.rows_per_token


@lru_cache(maxsize=4096)
def _nbytes(fmt: str, shape: tuple[int, ...]) -> int:
    return get_format(fmt).nbytes(shape)


def _logical_shape(stored: tuple[int, ...], params: int) -> tuple[int, ...]:
    """Formats pack along the last axis only: the logical last dimension is params / the others."""
    lead = prod(stored[:-1]) if len(stored) > 1 else 1
    return (*stored[:-1], params // lead)


@dataclass(frozen=True)
class Grouping:
    groups: tuple[Group, ...]
    excluded: tuple[tuple[str, tuple[int, ...], int], ...]   # (reason, tensor ids, bytes) left out of the plan
    inventory: Inventory | None = field(default=None, compare=False, repr=False)  # what it was built from
    include_mtp: bool = False
    skew: ExpertSkew | None = None
    memo: dict = field(default_factory=dict, compare=False, repr=False)   # what the planner derives from it, by key

    def serves(self, inventory: Inventory, include_mtp: bool, skew: ExpertSkew | None) -> bool:
        """Whether this grouping is the one ``build_groups(inventory, include_mtp, skew)`` would return."""
        return self.inventory is inventory and (self.include_mtp, self.skew) == (include_mtp, skew)


class _Acc:
    """One group while the inventory is scanned: its tensor ids and a count of each tensor kind
    (dtype, shape, params, format, role); bytes and shapes are worked out once per kind afterwards."""

    __slots__ = ("ids", "kinds", "experts")

    def __init__(self):
        self.ids, self.kinds, self.experts = [], Counter(), set()


def _routing(spec, layer: int | None) -> tuple[int, int]:
    """(routed experts, experts per token) of a layer; V4.1's draft layers have their own."""
    draft = getattr(spec, "dspark", None)
    if draft is not None and layer is not None and layer >= spec.num_hidden_layers:
        return draft.n_routed_experts, draft.num_experts_per_tok
    return getattr(spec, "n_routed_experts", 0), getattr(spec, "num_experts_per_tok", 0)


def hot_count(experts: int, skew: ExpertSkew) -> int:
    return min(experts - 1, max(1, round(skew.hot_fraction * experts)))


def _class(role: Role, layer: int | None) -> GroupClass:
    cls = ROLE_CLASS[role]
    return GroupClass.HEAD if layer is None and cls is GroupClass.NORMS_MHC else cls  # final norm, mHC head


_RUN = itemgetter(3, 6, 8)                 # (role, layer, mtp): what a run of consecutive tensors shares
_KIND = itemgetter(1, 2, 5, 4, 3)          # (dtype, shape, params, format, role)
_EXPERT = itemgetter(7)
_VISION = "vision tower (text-only plan)"
_MTP = "MTP / draft layers (add --mtp to place them)"


def _scan(inventory: Inventory, include_mtp: bool, skew: ExpertSkew | None):
    """One pass over the inventory's runs, kept lean: 145K tensors (V4-Pro) must group in well under a second.
    A layer's routed experts come as one block (counted per row, never expanded); the single tensors in
    between as runs of the same role, layer and MTP flag (``groupby``, in C), counted in bulk."""
    spec, accs, left_ids, left_bytes = inventory.spec, {}, defaultdict(list), Counter()
    for start, run in inventory.tensors.runs():
        if isinstance(run, ExpertBlock):
            if run.mtp and not include_mtp:
                left_ids[_MTP].extend(range(start, start + run.size))
                left_bytes[_MTP] += run.count * sum(tensor_nbytes(dtype, shape) for _, dtype, shape, _ in run.rows)
            else:
                _scan_experts(spec, accs, start, run, skew)
            continue
        for (role, layer, mtp), tensors in groupby(run, key=_RUN):
            tensors = list(tensors)
            ids = range(start, start + len(tensors))
            start += len(tensors)
            reason = _VISION if role is Role.VISION else _MTP if mtp and not include_mtp else None
            if reason:
                left_ids[reason].extend(ids)
                left_bytes[reason] += sum(tensor_nbytes(t.dtype, t.shape) for t in tensors)
                continue
            cls = _class(role, layer)
            if skew is None or role is not Role.ROUTED_EXPERT:
                _count(accs, (cls, layer, ""), ids, tensors)
                continue
            hot = hot_count(_routing(spec, layer)[0], skew)   # loose experts (a quantized checkpoint's inventory)
            for part, pairs in groupby(zip(ids, tensors), key=lambda pair: "hot" if pair[1].expert < hot else "cold"):
                pairs = list(pairs)
                _count(accs, (cls, layer, part), [i for i, _ in pairs], [t for _, t in pairs])
    return accs, {reason: (tuple(ids), left_bytes[reason]) for reason, ids in left_ids.items()}


def _scan_experts(spec, accs: dict, start: int, block: ExpertBlock, skew: ExpertSkew | None) -> None:
    """One layer's routed experts: each row kind x the experts of each part (hot ones first, then cold)."""
    per_expert, cls = len(block.rows), _class(Role.ROUTED_EXPERT, block.layer)
    kinds = Counter((dtype, shape, params, block.format, Role.ROUTED_EXPERT) for _, dtype, shape, params in block.rows)
    hot = hot_count(_routing(spec, block.layer)[0], skew) if skew is not None else block.count
    for part, experts in (("hot", range(hot)), ("cold", range(hot, block.count))) if skew else (("", range(hot)),):
        acc = _acc(accs, (cls, block.layer, part))
        acc.ids.extend(range(start + experts.start * per_expert, start + experts.stop * per_expert))
        acc.kinds.update({kind: n * len(experts) for kind, n in kinds.items()})
        acc.experts.update(experts)


def _count(accs: dict, key, ids, tensors: list) -> None:
    acc = _acc(accs, key)
    acc.ids.extend(ids)
    acc.kinds.update(map(_KIND, tensors))
    if tensors[0].expert is not None:
        acc.experts.update(map(_EXPERT, tensors))


def _acc(accs: dict, key) -> _Acc:
    acc = accs.get(key)
    if acc is None:
        acc = accs[key] = _Acc()
    return acc


def _convertible(shape, params: int, fmt: str, role: Role) -> bool:
    return bool(params) and len(shape) >= 2 and role not in FIXED_ROLES and fmt in FORMATS and fmt != "f32"


def _row_read(fmt: str, role: Role) -> bool:
    return role in ROW_ROLES or (fmt == RAW_FORMAT and role is Role.HASH_ROUTER)


def _name(spec, cls: GroupClass, layer: int | None, part: str) -> str:
    if layer is None:
        return cls.value
    n = spec.num_hidden_layers
    prefix = f"layers.{layer}" if layer < n else f"mtp.{layer - n}"
    return f"{prefix}.{cls.value}" + (f".{part}" if part else "")


def _group(spec, key, acc: _Acc, skew: ExpertSkew | None) -> Group:
    cls, layer, part = key
    native = params = row_bytes = row_params = rows = rows_per_token = 0
    weights: dict = defaultdict(int)
    by_format: dict = defaultdict(int)
    engram_columns = spec.engram.hash_columns if getattr(spec, "engram", None) else 0
    for (dtype, shape, n_params, fmt, role), count in acc.kinds.items():
        nbytes = tensor_nbytes(dtype, shape) * count
        native, params = native + nbytes, params + n_params * count
        by_format[fmt] += nbytes
        tied_head = role is Role.EMBEDDING and spec.tie_word_embeddings    # the head reads it whole every step
        if _row_read(fmt, role) and not tied_head:
            row_bytes, row_params = row_bytes + nbytes, row_params + n_params * count
            if n_params or fmt == RAW_FORMAT:
                rows, rows_per_token = shape[0], engram_columns if role is Role.ENGRAM_TABLE else 1
        if _convertible(shape, n_params, fmt, role):
            weights[(_logical_shape(shape, n_params), fmt)] += count
    # what no policy converts: everything but the quantizable weights (payload + scales, as their format stores them)
    fixed = native - sum(count * _nbytes(fmt, shape) for (shape, fmt), count in weights.items())
    probability, flops = 0.0, 2.0 * (params - row_params)
    if cls is GroupClass.ROUTED_EXPERTS:
        total, top_k = _routing(spec, layer)
        probability = top_k / total
        if part:
            hot = hot_count(total, skew)
            share = skew.hot_share if part == "hot" else 1.0 - skew.hot_share
            probability = min(1.0, share * top_k / (hot if part == "hot" else total - hot))
        flops *= probability
    return Group(name=_name(spec, cls, layer, part), cls=cls, layer=layer, tensor_ids=tuple(acc.ids),
                 native_bytes=native, fixed_bytes=fixed,
                 weights=tuple((shape, fmt, count) for (shape, fmt), count in sorted(weights.items())),
                 params=params, row_bytes=row_bytes, rows=rows, rows_per_token=rows_per_token,
                 experts=len(acc.experts), expert_probability=probability, flops_per_token=flops,
                 main_format=max(sorted(by_format), key=by_format.get))


def build_groups(inventory: Inventory, include_mtp: bool = False, skew: ExpertSkew | None = None) -> Grouping:
    """Groups in a stable order (embedding, layers in order, head). Callers that plan the same model
    again (suggestions, sweeps) pass the grouping along instead of rebuilding it (``Grouping.serves``)."""
    accs, excluded = _scan(inventory, include_mtp, skew)
    order = {cls: i for i, cls in enumerate(GroupClass)}

    def sort_key(key):
        cls, layer, part = key
        rank = -1 if cls is GroupClass.EMBEDDING and layer is None else (1 << 30 if layer is None else layer)
        return rank, order[cls], part

    groups = tuple(_group(inventory.spec, key, accs[key], skew) for key in sorted(accs, key=sort_key))
    return Grouping(groups, tuple((reason, ids, nbytes) for reason, (ids, nbytes) in excluded.items()), inventory,
                    include_mtp, skew)
