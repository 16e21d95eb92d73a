"""The roofline cost model: seconds for an item's bytes and FLOPs on the tier that holds it.

For one decode step (a batch of B tokens) or one prefill chunk (C tokens) an item reads some bytes
and does some FLOPs. On a GPU that costs max(bytes / bandwidth, FLOPs / compute). Weights in host RAM
either run on the CPU beside them (max(bytes / host bandwidth, FLOPs / CPU compute)) or stream over
the host link to the GPU (max(bytes / link, FLOPs / GPU compute)); the cheaper is taken, per item and
per phase, so decode and prefill may choose differently. NVMe bytes are read first (storage
bandwidth), then go the host's way. Hops (activations crossing a link, with a latency each) are added
per layer by ``estimates.py``; they do not belong to one item. So is the engine's own fixed time per
forward (operator dispatch, kernel launches: ``overhead_s``), which a profile may carry once it was
fitted on measured runs; it is the same wherever the weights are.

Attention's own FLOPs grow with the context: each layer's cost per token is a sum of terms
``coef * min(t / r, cap)`` over the ``t`` tokens before it (window, compressed entries, top-k
selections, indexer scores), which gives both the decode cost at the full context and the mean over
the positions of a prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import ceil, exp, factorial, inf, lgamma, log, sqrt

from mv4deploy.model.spec import Arch
from mv4deploy.plan.tiers import Tier

Term = tuple[float, float, float]   # (FLOPs per unit, tokens per unit, cap on units)


@dataclass(frozen=True)
class Work:
    """What an item asks of its tier in one decode step or one prefill chunk."""

    bytes_read: float
    flops: float
    compute: str            # the compute format of its weights ("fp8", "fp4", "bf16", ...)
    whole_bytes: float = 0.0  # the item's bytes: what an engine that moves whole modules streams (accelerate)


@dataclass(frozen=True)
class Cost:
    seconds: float
    mode: str               # "gpu", "cpu", "stream", "nvme+cpu", "nvme+stream", "fetch", "lookup"
    compute_known: bool = True
    limit: str = ""         # the resource that set the time: "gpu:0 bandwidth", "host compute", "host link", ...


UNAVAILABLE = Cost(inf, "unavailable")


def _roofline(nbytes: float, bandwidth: float | None, flops: float, rate: float | None,
              where: str, link: bool = False) -> Cost | None:
    """max(bytes / bandwidth, FLOPs / rate); the limit names which one won."""
    if not bandwidth:
        return None
    read_s, compute_s = nbytes / bandwidth, (flops / rate if rate else 0.0)
    limit = f"{where} {'link' if link else 'bandwidth'}" if read_s >= compute_s else f"{where} compute"
    return Cost(max(read_s, compute_s), "", bool(rate) or not flops, limit)


def on_gpu(work: Work, gpu: Tier) -> Cost:
    rate, _ = gpu.rate(work.compute)
    rate = rate * gpu.compute_efficiency.get(work.compute, 1.0) if rate else rate
    cost = _roofline(work.bytes_read, gpu.read_bytes_per_s(work.compute), work.flops, rate, gpu.name)
    return Cost(cost.seconds, "gpu", cost.compute_known, cost.limit)


def hops_s(gpu: Tier | None, activation_bytes: float) -> tuple[float, float]:
    """What running off the GPU adds per call: (CPU execution: activations to the CPU and back, 2 transfers;
    streaming: one transfer latency before the weights arrive). Nothing without a GPU."""
    if gpu is None:
        return 0.0, 0.0
    link = gpu.link_bytes_per_s
    one_way = gpu.latency_s + (activation_bytes / link if link else 0.0)
    return 2 * one_way, gpu.latency_s


def on_host(work: Work, host: Tier, gpu: Tier | None, read_first_s: float = 0.0, prefix: str = "",
            activation_bytes: float = 0.0, stream_gpu: Tier | None = None) -> Cost:
    """Cheaper of: the CPU executes it in place (plus the activations' round trip from ``gpu``); it streams
    over the host link to ``stream_gpu`` (default ``gpu``) and runs there. ``read_first_s`` is time spent
    bringing the bytes into RAM first (NVMe), overlapped with the rest. Hops count before comparing."""
    stream_gpu = gpu if stream_gpu is None else stream_gpu
    cpu_hops, stream_hops = hops_s(gpu, activation_bytes)
    best = UNAVAILABLE
    if host.can_execute:
        rate, _ = host.rate(work.compute)
        if rate:
            read = host.weight_read_bytes_per_s(work.compute)
            best = _finish(_roofline(work.bytes_read, read, work.flops, rate, "host"),
                           prefix + "cpu", read_first_s, cpu_hops)
    if stream_gpu is not None and stream_gpu.link_bytes_per_s and stream_gpu.streams:
        rate, _ = stream_gpu.rate(work.compute)
        moved = work.whole_bytes if stream_gpu.streams_whole and work.whole_bytes else work.bytes_read
        cost = _roofline(moved, stream_gpu.link_bytes_per_s, work.flops, rate, "host", link=True)
        limit = f"{stream_gpu.name} compute" if cost.limit.endswith("compute") else cost.limit
        stream = _finish(Cost(cost.seconds, "", cost.compute_known, limit), prefix + "stream", read_first_s,
                         stream_hops)
        if stream.seconds < best.seconds:
            best = stream
    return best


def _finish(cost: Cost, mode: str, read_first_s: float, hops: float) -> Cost:
    if read_first_s > cost.seconds:
        return Cost(read_first_s + hops, mode, cost.compute_known, "nvme read")
    return Cost(cost.seconds + hops, mode, cost.compute_known, cost.limit)


def on_nvme(work: Work, nvme: Tier, host: Tier | None, gpu: Tier | None, activation_bytes: float = 0.0,
            stream_gpu: Tier | None = None) -> Cost:
    """Read through the page cache at the drive's bandwidth (after one read latency), overlapped with
    executing what has arrived."""
    if host is None:
        return UNAVAILABLE
    read_s = nvme.latency_s + work.bytes_read / nvme.bandwidth_bytes_per_s
    return on_host(work, host, gpu, read_s, "nvme+", activation_bytes, stream_gpu)


# ---- the engine's fixed costs -------------------------------------------------------------------

def expert_calls(groups, tokens: int) -> float:
    """Routed experts one forward of ``tokens`` tokens calls, summed over layers: each distinct expert hit
    is one call (E x (1 - (1 - p)^tokens) per group: top-k at one token, every expert in a long chunk)."""
    return sum(g.experts * g.touched_fraction(tokens) for g in groups if g.experts)


def overhead_s(overhead, layers: int, calls: float, family: str, gpus: int) -> float:
    """Seconds one decode step spends beside the roofline (an engine's ``StepCost`` or the profile's
    ``RuntimeOverhead``): per step on ``gpus`` GPUs, per decoder layer of ``family`` (``ModelSpec.layer_family``),
    per routed-expert call. Zero for a profile that does not model it."""
    return overhead.step_s(gpus) + overhead.layer_s(family) * layers + overhead.per_expert_s * calls


def graph_overhead_s(graph, arch: str, layers: int, on_gpu: bool, threads: int) -> float:
    """Seconds a ggml engine's forward spends on its graph's nodes beside the roofline (``engines.engine.
    GraphCost``; 0 without one, or for an architecture it gives no node count): on the GPUs when the layout has
    any (llama.cpp's -ngl 99; routed experts overridden to the CPU take their few nodes per layer there, not
    counted), else on the CPU's ``threads``."""
    if graph is None or arch not in graph.nodes_per_layer:
        return 0.0
    return layers * graph.nodes_per_layer[arch] * (graph.gpu_node_s if on_gpu else graph.cpu_node_at(threads))


def prefill_overhead_s(overhead, layers: int) -> float:
    """Seconds one prefill chunk spends beside its (efficiency-scaled) roofline: per decoder layer."""
    return overhead.prefill_per_layer_s * layers


# ---- attention FLOPs per token ------------------------------------------------------------------

def _v4_terms(spec, layer: int) -> tuple[Term, ...]:
    """Window + compressed entries (CSA: top-k of t/4; HCA: all t/128), 2 FLOPs per MAC for QK and PV,
    plus the indexer scoring every compressed key on the CSA layers."""
    per_entry = 4.0 * spec.num_attention_heads * spec.head_dim
    terms = [(per_entry, 1.0, float(spec.sliding_window))]
    ratio = spec.ratio(layer) if layer < len(spec.compress_ratios) else 0
    if ratio:
        topk = float(spec.index_topk) if spec.owns_indexer(layer) or spec.architecture is Arch.DEEPSEEK_V41 \
            else inf
        terms.append((per_entry, float(ratio), topk if ratio < 128 else inf))
        if spec.owns_indexer(layer):
            terms.append((2.0 * spec.index_n_heads * spec.index_head_dim, float(ratio), inf))
    return tuple(terms)


def _mla_terms(spec, layer: int) -> tuple[Term, ...]:
    """Absorbed MLA: per entry QK over 576 (latent + RoPE) and PV over the 512 latent, for all heads;
    V3.2 attends to the top-k entries its indexer picks (64 heads x 128 scoring every key)."""
    per_entry = 2.0 * spec.num_attention_heads * (2 * spec.kv_lora_rank + spec.qk_rope_head_dim)
    if not spec.index_topk:
        return ((per_entry, 1.0, inf),)
    return ((per_entry, 1.0, float(spec.index_topk)), (2.0 * spec.index_n_heads * spec.index_head_dim, 1.0, inf))


def _gqa_terms(spec, layer: int) -> tuple[Term, ...]:
    return ((4.0 * spec.num_attention_heads * spec.head_dim, 1.0, inf),)


ATTENTION_TERMS = {Arch.DEEPSEEK_V4: _v4_terms, Arch.DEEPSEEK_V41: _v4_terms, Arch.DEEPSEEK_V3: _mla_terms,
                   Arch.DEEPSEEK_V32: _mla_terms, Arch.QWEN2: _gqa_terms, Arch.LLAMA: _gqa_terms}


def attention_flops(spec, layer: int, context_tokens: int) -> float:
    """FLOPs of one token's attention core at position ``context_tokens`` (decode)."""
    return sum(coef * min(context_tokens / r, cap) for coef, r, cap in ATTENTION_TERMS[spec.architecture](spec, layer))


def mean_attention_flops(spec, layer: int, context_tokens: int) -> float:
    """Mean over positions 1..N of ``attention_flops`` (a prefill of N tokens); continuous approximation:
    mean of min(t/r, cap) over [0, N] is N/(2r) below the cap, cap * (1 - t*/(2N)) with t* = cap * r above."""
    total, n = 0.0, float(context_tokens)
    for coef, r, cap in ATTENTION_TERMS[spec.architecture](spec, layer):
        knee = cap * r
        total += coef * (n / (2 * r) if n <= knee else cap * (1 - knee / (2 * n)))
    return total


# ---- expert parallel load imbalance ----------------------------------------------------------------

@lru_cache(maxsize=256)
def ep_imbalance(balls: int, bins: int) -> float:
    """E[max load] / mean load when ``balls`` routed-expert uses land uniformly on ``bins`` GPUs: the
    busiest GPU sets the pace of an expert-parallel layer (6 uses on 8 GPUs: the busiest gets 2.18 on
    average, not the mean 0.75: a ratio of 2.91, as a 200k-trial simulation gives). Exact up to 64 balls,
    P(max <= m) = n!/g^n [x^n] (sum_{j<=m} x^j/j!)^g; beyond, the normal approximation mean + sigma * sqrt(2 ln g)."""
    if bins <= 1 or balls <= 0:
        return 1.0
    mean = balls / bins
    if balls > 64:
        return 1.0 + sqrt(mean * (1 - 1 / bins)) * sqrt(2 * log(bins)) / mean
    expected, previous = 0.0, 0.0
    for m in range(ceil(mean), balls + 1):
        p = _p_max_at_most(balls, bins, m)
        expected += m * (p - previous)
        previous = p
        if p > 1 - 1e-12:
            break
    return expected / mean


def _p_max_at_most(n: int, g: int, m: int) -> float:
    """n! / g^n * [x^n] (sum_{j<=m} x^j/j!)^g, by repeated polynomial multiplication (log-scaled)."""
    base = [1.0 / factorial(j) for j in range(min(m, n) + 1)]
    poly = [1.0]
    for _ in range(g):
        out = [0.0] * min(len(poly) + len(base) - 1, n + 1)
        for i, a in enumerate(poly):
            if a:
                for j, b in enumerate(base[: n + 1 - i]):
                    out[i + j] += a * b
        poly = out
    if len(poly) <= n or poly[n] <= 0:
        return 0.0
    return min(1.0, exp(log(poly[n]) + lgamma(n + 1) - n * log(g)))
