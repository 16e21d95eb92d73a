"""Plans over a cluster: which parallel layout, aggregated or disaggregated serving, and how fast (issue 17).

For a workload of I input and O output tokens per request (``Serving``), every layout the engine implements
(``cluster_model.ClusterLayout``: TP within a node, DP-attention, EP within and across nodes, PP across nodes)
is priced by ``cluster_model.step_cost`` at each per-rank batch B (1, 2, 4, ... 512), where it fits in memory
(weights, the KV of B x pp sequences of I + O tokens, the workspace and the reserve per GPU). With
D = B x dp x pp sequences per instance of g GPUs:

- decode: TPOT = pp x stage step + pipeline crossings; decode tokens/s of an instance = D / TPOT;
- prefill: TTFT = pp x stage prefill of I tokens per DP rank + crossings; prefill tokens/s = I x dp / stage;
- aggregated (prefill and decode share the instance, chunked): requests/s of an instance
  R = 1 / (I / prefill tokens/s + O / decode tokens/s); the prefill share f = R x I / prefill tokens/s stalls
  decode, so a user sees (1 - f) / TPOT tokens/s; TTFT adds one decode step (the one running);
  tokens/s per GPU = O x R x (N // g) / N over all N GPUs of the cluster;
- disaggregated: n_p prefill workers (layout A) and n_d decode workers (layout B, batch B) with
  n_p g_A + n_d g_B <= N; R = min(n_p x prefill tokens/s_A / I, n_d x D_B / (O x TPOT_B)); TTFT adds the KV of
  I tokens over the network (bytes / (per-GPU network x min(g_A, g_B)) + latency); a user sees 1 / TPOT_B;
- a given concurrency C caps R by Little's law, R <= C / (TTFT + O x TPOT), and sets the batch (agg:
  B = ceil(C / instances / (dp x pp))).

Latency targets (``--ttft-ms``, ``--tpot-ms``) filter; the best is the most output tokens/s per GPU, then per
user. Queueing is not modelled (TTFT is an idle instance's), nor overlap of communication with compute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from math import ceil

from mv4deploy.core.jsonify import JsonResult
from mv4deploy.plan.cluster_model import (ClusterLayout, ModelShape, StageCost, kv_per_gpu, links_of, shape_of,
                                          step_cost, weights_per_gpu)

BATCHES = tuple(2 ** i for i in range(10))      # sequences per DP rank: 1 ... 512
TOP = 3                                          # the chosen layout and its runners-up
DISAGG_DECODE_POOL = 40                          # decode candidates combined with each prefill candidate


@dataclass(frozen=True)
class Serving:
    """The served workload: lengths per request, and a concurrency or latency targets (None: not given)."""

    input_tokens: int = 4000
    output_tokens: int = 1000
    concurrency: int | None = None
    ttft_s: float | None = None
    tpot_s: float | None = None

    def to_json(self) -> dict:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "concurrency": self.concurrency, "ttft_s_target": self.ttft_s, "tpot_s_target": self.tpot_s}


@dataclass(frozen=True)
class Worker(JsonResult):
    """One kind of engine instance: its layout, batch per DP rank, how many, and what a step costs."""

    role: str                    # "both" (aggregated), "prefill" or "decode"
    tp: int
    dp: int
    ep: int
    pp: int
    moe: str
    batch: int
    workers: int
    gpus: int                    # per worker
    memory_per_gpu_bytes: int
    step_s: float                # decode: TPOT; prefill: time of one prefill of the input
    seconds_by_resource: dict


@dataclass(frozen=True)
class Option(JsonResult):
    mode: str                    # "agg" | "disagg"
    layout: str
    tokens_per_s_per_gpu: float
    tokens_per_s_per_user: float
    ttft_s: float
    tpot_s: float
    concurrency: int
    gpus_used: int
    memory_per_gpu_bytes: int
    bottleneck: str
    meets_targets: bool
    workers: tuple[Worker, ...]


@dataclass(frozen=True)
class ClusterPlan:
    nodes: int
    gpus_per_node: int
    engine: str
    serving: Serving
    verdict: str                  # "fits" | "does_not_fit"
    options: tuple[Option, ...]   # best first: the chosen one and its runners-up
    search_s: float
    commands: dict = field(default_factory=dict)   # filled by cluster_launch
    notes: tuple[str, ...] = ()

    @property
    def chosen(self) -> Option | None:
        return self.options[0] if self.options else None

    def to_json(self) -> dict:
        best = self.chosen
        out = {"nodes": self.nodes, "gpus_per_node": self.gpus_per_node, "gpus": self.nodes * self.gpus_per_node,
               "engine": self.engine, "serving": self.serving.to_json(), "verdict": self.verdict,
               "search_s": self.search_s, "runners_up": [o.to_json() for o in self.options[1:]],
               "commands": self.commands, "notes": list(self.notes)}
        if best is not None:
            out.update(best.to_json())
            out.update(_layout_keys(best))
        return out


def _layout_keys(option: Option) -> dict:
    """tp (attention) / dp / ep / pp / batch (per DP rank) of the chosen layout (aggregated), or a prefill and a
    decode dict (disaggregated): the names AIConfigurator's estimate takes (benchmarks/vs_aiconfigurator.py)."""
    def keys(w: Worker) -> dict:
        return {"tp": w.tp, "dp": w.dp, "ep": w.ep, "pp": w.pp, "batch": w.batch, "workers": w.workers}
    if option.mode == "agg":         # "workers" stays the list of worker kinds; the instance count is "replicas"
        flat = keys(option.workers[0])
        flat["replicas"] = flat.pop("workers")
        return flat
    return {w.role: keys(w) for w in option.workers}


def make_serving(input_tokens=None, output_tokens=None, concurrency=None, ttft_ms=None, tpot_ms=None) -> Serving | None:
    """Validate the served workload's options (None when none is given); a bad value exits 2 naming the option."""
    from mv4deploy.core.schema import finite, integer, numeric, option
    given = (input_tokens, output_tokens, concurrency, ttft_ms, tpot_ms)
    if all(v is None for v in given):
        return None
    tokens = integer(1, 2**24)

    def number(name, value, parse):
        return None if value is None else option(name, numeric(parse), value)

    def positive(value) -> float:
        value = finite(value)
        if not 0 < value <= 1e7:
            raise ValueError("must be a number of milliseconds > 0")
        return value

    def ms(name, value):
        milliseconds = number(name, value, positive)
        return None if milliseconds is None else milliseconds / 1e3
    d = Serving()
    return Serving(number("--input-tokens", input_tokens, tokens) or d.input_tokens,
                   number("--output-tokens", output_tokens, tokens) or d.output_tokens,
                   number("--concurrency", concurrency, integer(1, 2**20)), ms("--ttft-ms", ttft_ms),
                   ms("--tpot-ms", tpot_ms))


# ---- the search -------------------------------------------------------------------------------------

def layouts(total_gpus: int, gpus_per_node: int, allowed: frozenset[str]) -> list[ClusterLayout]:
    """Every layout the engine implements on ``total_gpus`` GPUs: TP a power of two within a node, DP-attention
    and PP powers of two, a stage wider than a node made of whole nodes, an instance dividing the cluster."""
    powers = [2 ** i for i in range(12) if 2 ** i <= total_gpus]
    found = []
    for tp in (p for p in powers if p <= gpus_per_node and gpus_per_node % p == 0):
        for dp in powers:
            for pp in powers:
                stage, gpus = tp * dp, tp * dp * pp
                if gpus > total_gpus or total_gpus % gpus or (stage > gpus_per_node and stage % gpus_per_node):
                    continue
                if (dp > 1 and "dp_attention" not in allowed) or (pp > 1 and "pipeline" not in allowed):
                    continue
                found.append(ClusterLayout(tp, dp, pp, "tp"))
                if stage > 1 and "tensor_expert" in allowed:
                    found.append(ClusterLayout(tp, dp, pp, "ep"))
    return [l for l in found if l.dp == 1 or l.moe == "ep"]     # DP-attention pairs with expert parallel MoE


@dataclass(frozen=True)
class Priced:
    layout: ClusterLayout
    batch: int
    cost: StageCost
    latency_s: float             # TPOT (decode) or TTFT (prefill)
    tokens_per_s: float          # per instance
    memory_bytes: int


class _Pricer:
    """Prices layouts for one model, cluster and workload (memo of what each (layout, batch) costs)."""

    def __init__(self, shape: ModelShape, machine, engine, serving: Serving, workspace_bytes: int):
        self.shape, self.serving, self.engine = shape, serving, engine
        self.gpu = machine.gpus[0]
        self.links = links_of(machine.profile, engine)
        device = machine.devices[0]
        self.capacity = device.capacity_bytes - device.reserve_bytes - workspace_bytes
        self.step = machine.overhead

    def memory(self, layout: ClusterLayout, batch: int, context: int) -> int:
        return round(weights_per_gpu(self.shape, layout) + kv_per_gpu(self.shape, layout, batch, context))

    def decode(self, layout: ClusterLayout, batch: int) -> Priced | None:
        s = self.serving
        memory = self.memory(layout, batch, s.input_tokens + s.output_tokens)
        if memory > self.capacity:
            return None
        cost = step_cost(self.shape, layout, self.gpu, self.links, self.step, batch,
                         s.input_tokens + s.output_tokens // 2, prefill=False)
        tpot = layout.pp * cost.stage_s + cost.crossing_s
        return Priced(layout, batch, cost, tpot, batch * layout.dp * layout.pp / tpot, memory)

    def prefill(self, layout: ClusterLayout) -> Priced | None:
        s = self.serving
        memory = self.memory(layout, 1, s.input_tokens)
        if memory > self.capacity:
            return None
        cost = step_cost(self.shape, layout, self.gpu, self.links, self.step, s.input_tokens, s.input_tokens,
                         prefill=True)
        ttft = layout.pp * cost.stage_s + cost.crossing_s
        return Priced(layout, 1, cost, ttft, s.input_tokens * layout.dp / cost.stage_s, memory)


def _bottleneck(cost: StageCost) -> str:
    name, seconds = max(cost.by_resource.items(), key=lambda kv: kv[1])
    return f"{name}: {seconds * 1e3:.3g} of {cost.stage_s * 1e3:.3g} ms per stage step"


def _worker(role: str, p: Priced, workers: int) -> Worker:
    l = p.layout
    return Worker(role, l.tp, l.dp, l.ep, l.pp, l.moe, p.batch, workers, l.gpus, p.memory_bytes, p.latency_s,
                  {k: v for k, v in sorted(p.cost.by_resource.items())})


def _meets(serving: Serving, ttft: float, tpot: float) -> bool:
    return (serving.ttft_s is None or ttft <= serving.ttft_s) and (serving.tpot_s is None or tpot <= serving.tpot_s)


def _little(serving: Serving, rate: float, ttft: float, tpot: float) -> float:
    """Requests/s, capped by Little's law when a concurrency is given."""
    if serving.concurrency is None:
        return rate
    return min(rate, serving.concurrency / (ttft + serving.output_tokens * tpot))


def _agg(pricer: _Pricer, layout: ClusterLayout, batch: int, total: int) -> Option | None:
    s = pricer.serving
    d, p = pricer.decode(layout, batch), pricer.prefill(layout)
    if d is None or p is None:
        return None
    instances = total // layout.gpus
    rate = 1.0 / (s.input_tokens / p.tokens_per_s + s.output_tokens / d.tokens_per_s)
    busy = rate * s.input_tokens / p.tokens_per_s
    tpot, ttft = d.latency_s / max(1e-9, 1.0 - busy), p.latency_s + d.latency_s
    rate = _little(s, rate * instances, ttft, tpot)
    return Option("agg", f"agg {instances}x {layout.name} bs{batch}", s.output_tokens * rate / total, 1.0 / tpot,
                  ttft, tpot, batch * layout.dp * layout.pp * instances, layout.gpus * instances,
                  max(d.memory_bytes, p.memory_bytes), _bottleneck(d.cost), _meets(s, ttft, tpot),
                  (_worker("both", d, instances),))


def _disagg(pricer: _Pricer, p: Priced, d: Priced, total: int) -> Option | None:
    s, shape, links = pricer.serving, pricer.shape, pricer.links
    latency, rate = links.network_p2p
    ttft = p.latency_s + latency + shape.kv_bytes(s.input_tokens) / (rate * min(p.layout.gpus, d.layout.gpus))
    best = None
    for n_p in range(1, (total - d.layout.gpus) // p.layout.gpus + 1):
        n_d = (total - n_p * p.layout.gpus) // d.layout.gpus
        if n_d < 1:
            break
        requests = min(n_p * p.tokens_per_s / s.input_tokens, n_d * d.tokens_per_s / s.output_tokens)
        requests = _little(s, requests, ttft, d.latency_s)
        if best is None or requests > best[0]:
            best = (requests, n_p, n_d)
    if best is None:
        return None
    requests, n_p, n_d = best
    used = n_p * p.layout.gpus + n_d * d.layout.gpus
    name = f"disagg {n_p}P {p.layout.name} + {n_d}D {d.layout.name} bs{d.batch}"
    return Option("disagg", name, s.output_tokens * requests / total, 1.0 / d.latency_s, ttft, d.latency_s,
                  d.batch * d.layout.dp * d.layout.pp * n_d, used, max(p.memory_bytes, d.memory_bytes),
                  _bottleneck(d.cost), _meets(s, ttft, d.latency_s), (_worker("prefill", p, n_p), _worker("decode", d, n_d)))


def _batches(serving: Serving, layout: ClusterLayout, instances: int) -> tuple[int, ...]:
    if serving.concurrency is None:
        return BATCHES
    return (max(1, ceil(serving.concurrency / instances / (layout.dp * layout.pp))),)


def _rank(options: list[Option]) -> list[Option]:
    return sorted(options, key=lambda o: (not o.meets_targets, -round(o.tokens_per_s_per_gpu, 6),
                                          -round(o.tokens_per_s_per_user, 6), o.ttft_s, o.gpus_used, o.layout))


def search(pricer: _Pricer, candidates: list[ClusterLayout], total: int, disaggregate: bool) -> list[Option]:
    """Every aggregated (layout, batch) and, when the engine serves it, every disaggregated pairing of the
    best prefill layouts with the best decode (layout, batch) pairs; best first."""
    options = []
    for layout in candidates:
        for batch in _batches(pricer.serving, layout, total // layout.gpus):
            option = _agg(pricer, layout, batch, total)
            if option is not None:
                options.append(option)
    if disaggregate:
        options += _disagg_options(pricer, candidates, total)
    return _rank(options)


def _disagg_options(pricer: _Pricer, candidates: list[ClusterLayout], total: int) -> list[Option]:
    s = pricer.serving
    prefills = [p for p in (pricer.prefill(l) for l in candidates if l.gpus < total) if p is not None
                and (s.ttft_s is None or p.latency_s <= s.ttft_s)]
    prefills = sorted(prefills, key=lambda p: -p.tokens_per_s / p.layout.gpus)[:TOP]
    decodes = [d for d in (pricer.decode(l, b) for l in candidates if l.gpus < total for b in BATCHES)
               if d is not None and (s.tpot_s is None or d.latency_s <= s.tpot_s)]
    decodes = sorted(decodes, key=lambda d: -d.tokens_per_s / d.layout.gpus)[:DISAGG_DECODE_POOL]
    options = [_disagg(pricer, p, d, total) for p in prefills for d in decodes]
    return [o for o in options if o is not None]


def plan_cluster(resolved, profile, serving: Serving, grouping, machine, policy) -> ClusterPlan:
    """The cluster plan for ``machine`` (built with the engine to model, ``tiers.build_machine``)."""
    from mv4deploy.model.kv import kv_layout
    from mv4deploy.plan.workload import Workload
    from mv4deploy.plan.workspace import workspace
    started = time.perf_counter()
    shape = shape_of(resolved.spec, grouping, kv_layout(resolved.spec, policy.kv_cache))
    chunk = min(serving.input_tokens, 8192)
    ws = workspace(resolved.spec, Workload(context_tokens=serving.input_tokens + serving.output_tokens,
                                           prefill_chunk=chunk), 0).total_bytes
    pricer = _Pricer(shape, machine, machine.engine, serving, ws)
    total, engine = profile.gpus.count * profile.nodes, machine.engine
    allowed = engine.layouts if engine is not None else frozenset({"pipeline", "tensor", "tensor_expert"})
    options = search(pricer, layouts(total, profile.gpus.count, allowed), total, "disaggregated" in allowed)
    notes = []
    if options and not options[0].meets_targets:
        notes.append("no layout meets the latency targets: the best of those that fit is shown")
    return ClusterPlan(profile.nodes, profile.gpus.count, engine.name if engine else "roofline", serving,
                       "fits" if options else "does_not_fit", tuple(options[:TOP]),
                       round(time.perf_counter() - started, 4), notes=tuple(notes))
