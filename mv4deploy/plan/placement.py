"""Greedy placement by access density, and the fractional bound it is measured against.

Tiers are filled fastest first: GPUs, then host RAM, then NVMe. For a tier, each item still waiting is
scored by the decode time it saves per byte if it lands here rather than in the next tier down
(seconds per byte: its *access density*), and items are taken in that order while they fit; an item
that does not fit is skipped (a divisible one, routed experts, is cut at an expert boundary to fill the
tier exactly). Ties break on the item order (embedding, layers in order, head), so the result is
deterministic. After each pass, a whole item it skipped comes in when the pieces that must make room for it
save less than it does (``_swap_in``: the knapsack's gap that filling by density leaves). Whatever no tier
can hold is left unplaced (the plan does not fit).

The bound relaxes the problem to fractional placement and prices each tier's bytes with a multiplier
lambda >= 0 (Lagrangian / LP weak duality):
    LB(lambda) = sum_i min_t (c_it + lambda_t * b_it) - sum_t lambda_t * capacity_t
is at most the decode time of *any* placement that respects the capacities, the greedy one included.
The multipliers start at the access density where each tier filled up and are improved by a short
coordinate search; ``gap`` is how far the plan is from that bound.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from math import inf, isfinite

from mv4deploy.plan.items import Item, Option, Placed
from mv4deploy.plan.tiers import TierKind

PASSES = (TierKind.GPU, TierKind.HOST, TierKind.NVME)


@dataclass(frozen=True)
class Placement:
    placed: tuple[Placed, ...]
    unplaced: tuple[Placed, ...]            # what no tier could hold (the remaining units of each item)
    free_bytes: dict[str, int]              # per tier, after placement
    boundary: dict[str, Item]               # per tier: the first item that did not (wholly) fit there


def _fallback_s(item: Item, after: TierKind) -> float:
    """Decode cost of the item's best option below ``after`` (inf when it has none)."""
    later = [o.decode.seconds for o in item.options if PASSES.index(o.tier.kind) > PASSES.index(after)]
    return min(later, default=inf)


def _density(option: Option, fallback_s: float) -> float:
    gain = fallback_s - option.decode.seconds
    return gain / max(option.bytes, 1) if isfinite(gain) else inf


def place(items: list[Item], capacity: dict[str, int]) -> Placement:
    """``capacity``: free bytes per tier name (GPU tiers after workspace and reserve)."""
    free = dict(capacity)
    waiting = [(i, item, 0, item.units) for i, item in enumerate(items)]  # (order, item, start, stop)
    placed, boundary = [], {}
    scores: dict = {}           # (options, pass) -> (option, -density): layers repeat, and share their options
    for kind in PASSES:
        scored = []
        for order, item, start, stop in waiting:
            score = scores.get((id(item.options), kind))
            if score is None:
                option = item.option(kind)
                score = scores[id(item.options), kind] = \
                    (option, -_density(option, _fallback_s(item, kind)) if option else None)
            option, neg_density = score
            if option is None:
                continue
            scored.append((neg_density, order, item, option, start, stop))
        scored.sort(key=lambda s: (s[0], s[1]))
        taken, fresh, skipped = {}, [], []       # fresh: (density, order, piece) placed in this pass
        for neg_density, order, item, option, start, stop in scored:
            tier, available = option.tier.name, free.get(option.tier.name, 0)
            fit = _units_that_fit(option.bytes, item.units, start, stop, available)
            if fit < stop - start:
                boundary.setdefault(tier, item)
            if fit <= 0:
                skipped.append((-neg_density, order, item, option))
                continue
            piece = Placed(item, option, start, start + fit)
            free[tier] -= piece.bytes
            fresh.append((-neg_density, order, piece))
            taken[order] = start + fit
        _swap_in(skipped, fresh, free, taken)
        placed += [piece for _, _, piece in fresh]
        waiting = [(o, it, taken.get(o, s), e) for o, it, s, e in waiting if taken.get(o, s) < e]
    unplaced = tuple(Placed(it, it.options[-1] if it.options else None, s, e) for _, it, s, e in waiting)
    order = {id(item): i for i, item in enumerate(items)}          # report in model order, not fill order
    placed.sort(key=lambda p: (order[id(p.item)], p.start))
    return Placement(tuple(placed), unplaced, free, boundary)


def _swap_in(skipped: list, fresh: list, free: dict[str, int], taken: dict[int, int]) -> None:
    """Filling by density can leave a tier's last bytes unused while an item that saves more than the denser
    pieces in its way waits below (the knapsack's classic gap). For each whole item the pass skipped, in
    density order, two ways to make room on its tier are priced: the one cheapest piece that frees enough,
    and the least dense pieces in turn until enough is free; the cheaper is swapped out when it saves less
    than the item does. Only pieces placed in this pass move (to the passes below), so by this pass's
    prices the result is never worse than the greedy fill."""
    rooms: dict[str, _Room] = {}                       # per tier, rebuilt only after a swap there
    for density, order, item, option in skipped:
        if item.units != 1:
            continue                                   # a divisible item was cut to fill the tier already
        tier = option.tier.name
        gain, need = density * max(option.bytes, 1), option.bytes - free.get(tier, 0)
        room = rooms.get(tier) or rooms.setdefault(tier, _Room([e for e in fresh if e[2].option.tier.name == tier]))
        out = room.cheapest(need)
        if out is None or sum(map(_saving, out)) >= gain:
            continue
        for entry in out:
            fresh.remove(entry)
            taken.pop(entry[1])
            free[tier] += entry[2].bytes
        piece = Placed(item, option, 0, 1)
        free[tier] -= piece.bytes
        fresh.append((density, order, piece))
        taken[order] = 1
        rooms.pop(tier)


def _saving(entry) -> float:
    """Decode seconds a placed piece saves over its item's best option below (density x bytes)."""
    return entry[0] * entry[2].bytes


class _Room:
    """The pieces a pass placed on one tier, indexed for ``_swap_in``'s two ways to free ``need`` bytes: the
    least dense pieces in turn (prefix sums along density order) and the one piece that frees enough at the
    least saving (a suffix minimum along size order)."""

    def __init__(self, entries: list):
        self.by_density = sorted((e for e in entries if e[2].bytes), key=lambda e: e[:2])
        self.freed, self.saved = [0], [0]
        for e in self.by_density:
            self.freed.append(self.freed[-1] + e[2].bytes)
            self.saved.append(self.saved[-1] + _saving(e))
        rank = {id(e): i for i, e in enumerate(self.by_density)}
        by_size = sorted(self.by_density, key=lambda e: e[2].bytes)
        self.sizes = [e[2].bytes for e in by_size]
        self.best_from: list = [None] * (len(by_size) + 1)          # the least saving at this size or more
        for i in range(len(by_size) - 1, -1, -1):
            e, after = by_size[i], self.best_from[i + 1]
            key = (_saving(e), rank[id(e)])                         # ties: the first in density order
            self.best_from[i] = (key, e) if after is None or key < after[0] else after

    def cheapest(self, need: int) -> list | None:
        """The pieces to swap out to free ``need`` bytes (None: even all of them do not)."""
        k = bisect_left(self.freed, need)
        if k == len(self.freed):
            return None
        single = self.best_from[bisect_left(self.sizes, need)]
        if single is not None and single[0][0] < self.saved[k]:
            return [single[1]]
        return self.by_density[:k]


def _units_that_fit(item_bytes: int, units: int, start: int, stop: int, available: int) -> int:
    """How many of units [start, stop) fit in ``available`` bytes. ``units`` share ``item_bytes``: unit i spans
    bytes [floor(b i / u), floor(b (i + 1) / u)) (``Placed.bytes``: the pieces telescope), so n units from s take
    floor(b (s + n) / u) - floor(b s / u) <= a bytes exactly when b (s + n) <= (a + floor(b s / u) + 1) u - 1."""
    if item_bytes <= 0:
        return stop - start
    top = ((available + item_bytes * start // units + 1) * units - 1) // item_bytes
    return max(0, min(stop, top) - start)


def multipliers(placement: Placement, capacity: dict[str, int]) -> dict[str, float]:
    """Starting prices per byte, slowest tier first: a full tier is worth, per byte, what its boundary
    item would lose by going to its best option below (that option's cost plus the price of its bytes)."""
    lam: dict[str, float] = {}
    for kind in reversed(PASSES):
        for tier, item in placement.boundary.items():
            here = next((o for o in item.options if o.tier.name == tier), None)
            if here is None or here.tier.kind is not kind:
                continue
            below = [o.bound_decode_s + lam.get(o.tier.name, 0.0) * o.bytes for o in item.options
                     if PASSES.index(o.tier.kind) > PASSES.index(kind)]
            lam[tier] = max(0.0, (min(below) - here.bound_decode_s) / max(here.bytes, 1)) if below else 0.0
    return lam


def lower_bound(items: list[Item], capacity: dict[str, int], start: dict[str, float]) -> float:
    """Best Lagrangian bound found from the multipliers ``start`` (tier name -> seconds per byte)."""
    tiers = sorted(capacity)
    index = {tier: i for i, tier in enumerate(tiers)}
    counts: dict = {}
    for item in items:
        row = tuple((index[o.tier.name], o.bound_decode_s, o.bytes) for o in item.options if o.tier.name in index)
        if not row:
            return 0.0                                   # an item with nowhere to go: no finite bound
        counts[row] = counts.get(row, 0) + 1             # repeated layers price alike: count them once
    rows = list(counts.items())
    caps = [capacity[tier] for tier in tiers]
    lam = [start.get(tier, 0.0) if isfinite(start.get(tier, 0.0)) else 0.0 for tier in tiers]
    best = _lagrangian(rows, caps, lam)
    for _ in range(2):                                   # coordinate search: scale each multiplier
        for i in range(len(tiers)):
            base = lam[i]
            for factor in (0.0, 0.25, 0.5, 0.8, 0.95, 1.05, 1.25, 2.0, 4.0):
                trial = lam[:i] + [base * factor] + lam[i + 1:]
                value = _lagrangian(rows, caps, trial)
                if value > best:
                    best, lam = value, trial
    return best


def _lagrangian(rows, caps: list[int], lam: list[float]) -> float:
    total = -sum(l * c for l, c in zip(lam, caps))
    for row, count in rows:
        total += count * min(cost + lam[t] * nbytes for t, cost, nbytes in row)
    return max(total, 0.0)
