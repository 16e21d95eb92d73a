"""The tensor inventory's types, and the registry of per-family builders: every tensor of a checkpoint as shipped, built from the config alone.

Each entry has the checkpoint's own name (V4: no ``model.`` prefix and ``.scale`` in F8_E8M0; V3:
``weight_scale_inv`` in F32; distillates: HF names), its stored dtype and shape, the format of the
logical weight it belongs to, its role, layer and expert. Scales are entries of their own (0 params),
so ``checkpoint_bytes`` and ``len(tensors)`` describe the files exactly. Never touches weights.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from functools import cached_property, lru_cache
from typing import NamedTuple

from mv4deploy.formats.dtypes import tensor_nbytes
from mv4deploy.model.spec import Arch, ModelSpec
from mv4deploy.formats import get_format


RAW_FORMAT = "raw"  # a tensor outside the format registry, kept exactly as stored


class Role(str, Enum):
    EMBEDDING = "embedding"
    ATTENTION = "attention"
    INDEXER = "indexer"
    COMPRESSOR = "compressor"
    ROUTED_EXPERT = "routed_expert"
    SHARED_EXPERT = "shared_expert"
    DENSE_MLP = "dense_mlp"
    HASH_ROUTER = "hash_router"
    ROUTER = "router"
    ENGRAM_TABLE = "engram_table"
    ENGRAM_PROJ = "engram_proj"
    MHC = "mhc"
    NORM = "norm"
    LM_HEAD = "lm_head"
    VISION = "vision"


class TensorInfo(NamedTuple):
    """One tensor of a checkpoint. A NamedTuple, not a frozen dataclass: V4-Pro has 145K of them and a
    tuple is built ~3.5x faster, which is most of what a cold ``plan`` spends on the inventory."""

    name: str
    dtype: str                 # safetensors dtype as stored
    shape: tuple[int, ...]     # stored shape (FP4 packed: half the columns)
    role: Role
    format: str                # format of the logical weight this tensor belongs to
    params: int                # logical parameters it carries (0 for scales)
    layer: int | None = None
    expert: int | None = None
    mtp: bool = False          # part of the multi-token-prediction (draft) layers

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.dtype, self.shape)


class ExpertBlock(NamedTuple):
    """A layer's routed experts ``0 .. count-1`` as one run of the inventory: per expert, the stored tensors
    ``rows`` ((name tail, dtype, shape, params), in order) named ``{prefix}{e}.{tail}``."""

    prefix: str
    rows: tuple[tuple[str, str, tuple[int, ...], int], ...]
    count: int
    format: str
    layer: int
    mtp: bool

    @property
    def size(self) -> int:
        return self.count * len(self.rows)

    def expand(self) -> list[TensorInfo]:
        new, role = tuple.__new__, Role.ROUTED_EXPERT    # TensorInfo's own __new__ is a Python-level call
        return [new(TensorInfo, (f"{self.prefix}{e}.{tail}", dtype, shape, role, self.format, params, self.layer, e,
                                 self.mtp))
                for e in range(self.count) for tail, dtype, shape, params in self.rows]


class TensorTable(Sequence):
    """An inventory's tensors in checkpoint order, built as runs: single tensors, and each layer's routed
    experts as one ``ExpertBlock`` (V4-Pro: 145K tensors, 142K of them experts in 62 blocks). Indexing or
    iterating expands them into ``TensorInfo`` tuples once; the planner reads ``runs()`` and never does."""

    __slots__ = ("_items", "_len", "_flat")

    def __init__(self, items):
        self._items = tuple(items)
        self._len = sum(x.size if type(x) is ExpertBlock else 1 for x in self._items)
        self._flat = None

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index):
        return self._expanded()[index]

    def __iter__(self):
        return iter(self._expanded())

    def __eq__(self, other) -> bool:
        return isinstance(other, (TensorTable, tuple, list)) and tuple(self) == tuple(other)

    def __hash__(self) -> int:              # equal tables (however built) have equal lengths
        return hash(self._len)

    def _expanded(self) -> tuple[TensorInfo, ...]:
        if self._flat is None:
            flat = []
            for x in self._items:
                if type(x) is ExpertBlock:
                    flat.extend(x.expand())
                else:
                    flat.append(x)
            self._flat = tuple(flat)
        return self._flat

    def runs(self):
        """(index of its first tensor, run): consecutive single tensors as a list, experts as their block."""
        start, singles = 0, []
        for x in self._items:
            if type(x) is ExpertBlock:
                if singles:
                    yield start - len(singles), singles
                    singles = []
                yield start, x
                start += x.size
            else:
                singles.append(x)
                start += 1
        if singles:
            yield start - len(singles), singles

    def duplicate_name(self) -> str | None:
        """A name two tensors share (a builder bug), found without expanding the experts: single names are
        unique, block prefixes are unique, and no single tensor has a name one of the blocks expands to."""
        singles = [x.name for x in self._items if type(x) is not ExpertBlock]
        blocks = {x.prefix: x for x in self._items if type(x) is ExpertBlock}
        if len(set(singles)) != len(singles):
            return next(name for name, count in Counter(singles).items() if count > 1)
        if len(blocks) != len(self._items) - len(singles):
            prefixes = [x.prefix for x in self._items if type(x) is ExpertBlock]
            return next(name for name, count in Counter(prefixes).items() if count > 1) + "*"
        under = tuple(blocks)
        return next((name for name in singles if under and name.startswith(under) and _expands_to(blocks, name)),
                    None)


def _expands_to(blocks: dict[str, ExpertBlock], name: str) -> bool:
    """Whether a block names one of its tensors ``name``: ``{prefix}{e}.{tail}`` with e < count, tail a row's."""
    for prefix, block in blocks.items():
        if name.startswith(prefix):
            expert, _, tail = name[len(prefix):].partition(".")
            if expert.isdigit() and int(expert) < block.count and any(tail == row[0] for row in block.rows):
                return True
    return False


@dataclass(frozen=True)
class Inventory:
    spec: ModelSpec
    tensors: TensorTable

    @cached_property
    def checkpoint_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @cached_property
    def params_total(self) -> int:
        """Logical parameters without the MTP layers (the published figure)."""
        return sum(t.params for t in self.tensors if not t.mtp)

    @cached_property
    def params_mtp(self) -> int:
        return sum(t.params for t in self.tensors if t.mtp)

    @cached_property
    def params_by_role(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for t in self.tensors:
            counts["mtp" if t.mtp else t.role.value] += t.params
        return dict(sorted(counts.items()))

    @cached_property
    def params_active_per_token(self) -> int:
        """Parameters one decoded token touches: all but the routed experts (top-k of E per layer) and the
        Engram tables (one row per hash column); embedding and head counted whole, as DeepSeek counts."""
        spec, active = self.spec, 0.0
        for t in self.tensors:
            if t.mtp:
                continue
            if t.role is Role.ROUTED_EXPERT:
                active += t.params * spec.num_experts_per_tok / spec.n_routed_experts
            elif t.role is Role.ENGRAM_TABLE:
                engram = spec.engram
                active += engram.hash_columns * engram.head_dim if t.params else 0
            else:
                active += t.params
        return round(active)


_SLOT = "\x00"


@lru_cache(maxsize=4096)
def _layout(fmt: str, shape: tuple[int, ...], is_weight: bool) -> tuple[tuple[str, str, tuple, int], ...]:
    """The stored tensors of one weight, names templated on ``_SLOT`` (145K tensors build in well
    under a second because experts share a handful of layouts)."""
    placeholder = _SLOT + ".weight" if is_weight else _SLOT
    return tuple((t.name, t.dtype, t.shape, t.params) for t in get_format(fmt).stored(placeholder, shape))


class _Builder:
    """Collects TensorInfo entries; a quantized weight expands into payload + scale tensors."""

    def __init__(self, mtp_from: int | None = None):
        self.tensors: list[TensorInfo | ExpertBlock] = []
        self.mtp_from = mtp_from

    def add(self, name: str, shape: tuple[int, ...], fmt: str, role: Role,
            layer: int | None = None, expert: int | None = None) -> None:
        mtp = self.mtp_from is not None and layer is not None and layer >= self.mtp_from
        is_weight = name.endswith(".weight")
        base = name[: -len(".weight")] if is_weight else name
        for template, dtype, stored_shape, params in _layout(fmt, tuple(shape), is_weight):
            self.tensors.append(TensorInfo(template.replace(_SLOT, base), dtype, stored_shape, role, fmt, params,
                                           layer, expert, mtp))

    def experts(self, prefix: str, weights: tuple[tuple[str, tuple[int, ...]], ...], count: int, fmt: str,
                layer: int) -> None:
        """Routed experts ``0 .. count-1`` of one layer: ``{prefix}{e}.{name}.weight`` for each (name, shape) in
        ``weights``, in that order. The same tensors as ``add`` per weight, built from one layout per weight
        (a V4-Pro layer has 384 x 3 of them), kept as one ``ExpertBlock`` until someone reads them one by one."""
        mtp = self.mtp_from is not None and layer >= self.mtp_from
        rows = tuple((template.replace(_SLOT, name), dtype, shape, params)
                     for name, logical in weights for template, dtype, shape, params in _layout(fmt, logical, True))
        self.tensors.append(ExpertBlock(prefix, rows, count, fmt, layer, mtp))

    def built(self) -> TensorTable:
        return TensorTable(self.tensors)

    def table(self, name: str, dtype: str, shape: tuple[int, ...], role: Role, layer: int | None = None) -> None:
        """An integer lookup table (V4's ``tid2eid``): stored as given, never quantized, 0 parameters
        (published parameter counts leave it out)."""
        mtp = self.mtp_from is not None and layer is not None and layer >= self.mtp_from
        self.tensors.append(TensorInfo(name, dtype, tuple(shape), role, RAW_FORMAT, 0, layer, None, mtp))


INVENTORY_BUILDERS: dict[Arch, callable] = {}


def registers(*arches: Arch):
    def wrap(fn):
        for arch in arches:
            INVENTORY_BUILDERS[arch] = fn
        return fn
    return wrap
