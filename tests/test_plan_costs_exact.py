"""plan.costs at its edges, against hand-worked values: the roofline's limit names and ties, the GPU's
compute efficiency, the activations' round trip, the choice between CPU execution and streaming (ties
keep the CPU), NVMe reads overlapped with the rest, the engine's fixed costs, attention FLOPs per family
and the expert-parallel imbalance against an exact count written differently (labelled balls into bins
by a binomial recurrence, and brute-force enumeration). Tiers are built by hand with round figures so
every second below is exact. Found by mutation testing (docs/ci.md, "Mutation testing")."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest

from mv4deploy.engines.engine import StepCost
from mv4deploy.hardware.profile import RuntimeOverhead
from mv4deploy.model.spec import Arch
from mv4deploy.plan.costs import (UNAVAILABLE, Cost, Work, _p_max_at_most, _roofline, attention_flops, ep_imbalance,
                                  expert_calls, hops_s, mean_attention_flops, on_gpu, on_host, on_nvme, overhead_s,
                                  prefill_overhead_s)
from mv4deploy.plan.tiers import Tier, TierKind


def gpu_tier(**kw) -> Tier:
    """A GPU: 1000 B/s (kernels reach half of it, a quarter computing in fp8), 400 FLOP/s bf16 and 800 fp8
    (fp8 kernels reach half of that), host link 10 B/s with 0.01 s per transfer."""
    fields = dict(name="g", kind=TierKind.GPU, devices=("g",), bandwidth_bytes_per_s=1000.0,
                  compute_flops_per_s={"bf16": 400.0, "fp8": 800.0}, native_formats=frozenset({"bf16", "fp8"}),
                  efficiency={"default": 0.5, "fp8": 0.25}, compute_efficiency={"fp8": 0.5},
                  link_bytes_per_s=10.0, latency_s=0.01)
    return Tier(**{**fields, **kw})


def host_tier(**kw) -> Tier:
    """A CPU: 100 B/s, 50 FLOP/s in bf16."""
    fields = dict(name="host", kind=TierKind.HOST, devices=("host",), bandwidth_bytes_per_s=100.0,
                  compute_flops_per_s={"bf16": 50.0}, native_formats=frozenset({"bf16", "fp32"}))
    return Tier(**{**fields, **kw})


def nvme_tier(**kw) -> Tier:
    fields = dict(name="nvme", kind=TierKind.NVME, devices=("nvme",), bandwidth_bytes_per_s=5.0, latency_s=0.1)
    return Tier(**{**fields, **kw})


# ---------------------------------------------------------------- the roofline
def test_roofline_names_its_limit_and_a_tie_is_the_bandwidth():
    assert _roofline(100, None, 10, 5.0, "x") is None and _roofline(100, 0.0, 10, 5.0, "x") is None
    # 100 B / 50 B/s = 2 s against 10 FLOPs / 5 FLOP/s = 2 s: a tie names the bandwidth (or the link)
    assert _roofline(100, 50.0, 10, 5.0, "x") == Cost(2.0, "", True, "x bandwidth")
    assert _roofline(100, 50.0, 10, 5.0, "x", link=True) == Cost(2.0, "", True, "x link")
    # 100 / 50 = 2 s against 30 / 5 = 6 s: compute
    assert _roofline(100, 50.0, 30, 5.0, "x") == Cost(6.0, "", True, "x compute")
    # no compute figure: the read alone (0.5 s, not max(0.5, 1)), and the compute is unknown when there are FLOPs
    assert _roofline(25, 50.0, 30, None, "x") == Cost(0.5, "", False, "x bandwidth")
    assert _roofline(25, 50.0, 0, None, "x") == Cost(0.5, "", True, "x bandwidth")


def test_on_gpu_applies_bandwidth_and_compute_efficiency_per_format():
    gpu = gpu_tier()
    # bf16: read 100 B at 1000 x 0.5 = 500 B/s = 0.2 s; 200 FLOPs at 400 x 1 (no compute efficiency) = 0.5 s
    assert on_gpu(Work(100, 200, "bf16"), gpu) == Cost(0.5, "gpu", True, "g compute")
    # fp8: read 100 B at 1000 x 0.25 = 250 B/s = 0.4 s; 200 FLOPs at 800 x 0.5 = 400 FLOP/s = 0.5 s
    assert on_gpu(Work(100, 200, "fp8"), gpu) == Cost(0.5, "gpu", True, "g compute")
    # fp8 with 150 FLOPs: 0.375 s < 0.4 s read (at full fp8 compute, 800, it would be 0.1875 either way)
    assert on_gpu(Work(100, 150, "fp8"), gpu) == Cost(0.4, "gpu", True, "g bandwidth")
    # a GPU whose profile has no compute figure: the read alone, compute unknown
    bare = gpu_tier(compute_flops_per_s={})
    assert on_gpu(Work(100, 200, "bf16"), bare) == Cost(0.2, "gpu", False, "g bandwidth")


def test_hops_of_running_off_the_gpu():
    assert hops_s(None, 1000.0) == (0.0, 0.0)
    # one way: 0.01 s latency + 20 B / 10 B/s = 2.01 s; the CPU path pays it twice, streaming one latency
    assert hops_s(gpu_tier(), 20.0) == pytest.approx((4.02, 0.01), rel=1e-15)
    assert hops_s(gpu_tier(link_bytes_per_s=None), 20.0) == (0.02, 0.01)   # no link figure: the latencies


# ---------------------------------------------------------------- host: CPU or streaming
def test_on_host_takes_the_cheaper_of_cpu_and_stream():
    host, gpu = host_tier(), gpu_tier()
    # CPU: max(100 / 100 = 1 s, 100 / 50 = 2 s) + 2 x 0.01 s = 2.02 s;
    # stream: max(100 / 10 = 10 s link, 100 / 400 = 0.25 s) + 0.01 = 10.01 s
    assert on_host(Work(100, 100, "bf16"), host, gpu) == Cost(2.02, "cpu", True, "host compute")
    # 10 B: CPU max(0.1, 2) + 0.02 = 2.02; stream max(10 / 10 = 1 s, 0.25) + 0.01 = 1.01 s over the link
    assert on_host(Work(10, 100, "bf16"), host, gpu) == Cost(1.01, "stream", True, "host link")
    # 800 FLOPs: CPU 16.02 s; stream max(1 s, 800 / 400 = 2 s) + 0.01: the GPU's compute sets it
    assert on_host(Work(10, 800, "bf16"), host, gpu) == Cost(2.01, "stream", True, "g compute")
    # 50 B: CPU max(0.5, 2) + 0.02 = 2.02 beats the stream's max(5, 0.25) + 0.01 = 5.01 ...
    assert on_host(Work(50, 100, "bf16"), host, gpu).mode == "cpu"
    # ... until the activations' round trip (20 B each way) counts before comparing: CPU 2 + 2 x 2.01 = 6.02
    cost = on_host(Work(50, 100, "bf16"), host, gpu, activation_bytes=20.0)
    assert cost.mode == "stream" and cost.seconds == pytest.approx(5.01)


def test_a_tie_between_cpu_and_stream_keeps_the_cpu():
    host, gpu = host_tier(), gpu_tier(latency_s=0.0)
    # CPU max(10 / 100, 50 / 50) = 1 s; stream max(10 / 10, 50 / 400) = 1 s; no latency
    assert on_host(Work(10, 50, "bf16"), host, gpu) == Cost(1.0, "cpu", True, "host compute")


def test_streaming_whole_modules_and_what_disables_each_path():
    host, work = host_tier(), Work(10, 100, "bf16", whole_bytes=50.0)
    # accelerate moves the whole module: 50 B / 10 B/s = 5 s + 0.01 (CPU 2.02 wins)
    assert on_host(work, host, gpu_tier(streams_whole=True)).mode == "cpu"
    assert on_host(work, host_tier(cpu_execution=False), gpu_tier(streams_whole=True)) == \
        Cost(5.01, "stream", True, "host link")
    # whole bytes unknown (0): the bytes read
    assert on_host(Work(10, 100, "bf16"), host_tier(cpu_execution=False), gpu_tier(streams_whole=True)).seconds \
        == pytest.approx(1.01)
    # no streaming engine, or no link figure: the CPU
    assert on_host(Work(10, 100, "bf16"), host, gpu_tier(streams=False)).mode == "cpu"
    assert on_host(Work(10, 100, "bf16"), host, gpu_tier(link_bytes_per_s=None)) == \
        Cost(2.02, "cpu", True, "host compute")
    # no GPU: the CPU, no hops (2 s)
    assert on_host(Work(10, 100, "bf16"), host, None) == Cost(2.0, "cpu", True, "host compute")
    # a CPU with no float compute figure (int8 only) executes nothing: with no GPU nothing runs it
    int8_only = host_tier(compute_flops_per_s={"int8": 50.0}, native_formats=frozenset({"int8"}))
    assert on_host(Work(10, 100, "bf16"), int8_only, None) == UNAVAILABLE


def test_each_side_computes_in_the_work_s_own_format():
    # a CPU with int8 units at 200 FLOP/s beside bf16 at 50: 400 int8 FLOPs take 2 s (not 400 / 50 = 8 s)
    host = host_tier(compute_flops_per_s={"bf16": 50.0, "int8": 200.0},
                     native_formats=frozenset({"bf16", "int8"}))
    assert on_host(Work(10, 400, "int8"), host, None) == Cost(2.0, "cpu", True, "host compute")
    # streamed fp8 runs at the GPU's fp8 rate, 800 FLOP/s (not bf16's 400): max(1 s link, 1600 / 800 = 2 s) + 0.01
    assert on_host(Work(10, 1600, "fp8"), host_tier(cpu_execution=False), gpu_tier()) == \
        Cost(2.01, "stream", True, "g compute")


def test_streaming_to_another_gpu_than_the_one_holding_activations():
    host, gpu = host_tier(cpu_execution=False), gpu_tier()
    other = gpu_tier(name="g2", link_bytes_per_s=20.0, latency_s=0.5)
    # streamed to g2: 10 B / 20 B/s = 0.5 s vs 100 / 400 = 0.25 s; the hop is the activations' GPU's latency 0.01
    assert on_host(Work(10, 100, "bf16"), host, gpu, stream_gpu=other) == Cost(0.51, "stream", True, "host link")
    cost = on_host(Work(10, 400, "bf16"), host, gpu, stream_gpu=other)      # 400 / 400 = 1 s on g2
    assert cost == Cost(1.01, "stream", True, "g2 compute")


# ---------------------------------------------------------------- NVMe
def test_nvme_read_overlaps_and_names_itself_when_it_is_longer():
    host, gpu, nvme = host_tier(), gpu_tier(), nvme_tier()
    assert on_nvme(Work(10, 100, "bf16"), nvme, None, gpu) == UNAVAILABLE
    # read 0.1 s + 10 B / 5 B/s = 2.1 s; CPU 2 s < 2.1: 2.1 + 0.02; stream 1 s < 2.1: 2.1 + 0.01 (cheaper)
    assert on_nvme(Work(10, 100, "bf16"), nvme, host, gpu) == Cost(2.11, "nvme+stream", True, "nvme read")
    assert on_nvme(Work(10, 100, "bf16"), nvme, host, None) == Cost(2.1, "nvme+cpu", True, "nvme read")
    # 500 FLOPs: CPU 10 s > 2.1 s read: the compute names it
    assert on_nvme(Work(10, 500, "bf16"), nvme, host, None) == Cost(10.0, "nvme+cpu", True, "host compute")
    # read exactly as long as the compute (0 + 10 / 10 = 1 s; CPU 50 / 50 = 1 s): the compute keeps its name
    tie = on_nvme(Work(10, 50, "bf16"), nvme_tier(bandwidth_bytes_per_s=10.0, latency_s=0.0), host, None)
    assert tie == Cost(1.0, "nvme+cpu", True, "host compute")
    # no activations given: no transfer beside the latencies, 2.1 + 2 x 0.01 (CPU)
    assert on_nvme(Work(10, 100, "bf16"), nvme, host, gpu_tier(streams=False)).seconds == pytest.approx(2.12)
    # streamed to another GPU than the one holding the activations (which cannot receive streams itself)
    assert on_nvme(Work(10, 100, "bf16"), nvme, host_tier(cpu_execution=False), gpu_tier(streams=False),
                   stream_gpu=gpu_tier(name="g2")) == Cost(2.11, "nvme+stream", True, "nvme read")
    # activations' round trip is added after the overlap: 2.1 + 2 x (0.01 + 20 / 10) = 6.12 (CPU), stream 2.11
    assert on_nvme(Work(10, 100, "bf16"), nvme, host_tier(), gpu_tier(streams=False), 20.0).seconds == \
        pytest.approx(6.12)


# ---------------------------------------------------------------- the engine's fixed costs
def test_expert_calls_and_overheads_by_hand():
    groups = [SimpleNamespace(experts=4, touched_fraction=lambda t: 1 - 0.5 ** t),
              SimpleNamespace(experts=0, touched_fraction=lambda t: 1.0),     # not an expert group
              SimpleNamespace(experts=8, touched_fraction=lambda t: 0.25 * t)]
    # 4 x (1 - 0.5^2) + 8 x 0.5 = 3 + 4 = 7
    assert expert_calls(groups, 2) == 7.0
    overhead = RuntimeOverhead(per_step_s=1.0, per_layer_s=0.5, per_expert_s=0.25, prefill_per_layer_s=2.0)
    assert overhead_s(overhead, 10, 8.0, "dense", 4) == 1.0 + 0.5 * 10 + 0.25 * 8   # 8 s: any layer, any GPUs
    # an engine's: per step, more on several GPUs; per layer by the layer's family
    step = StepCost(per_step_s=1.0, per_step_multi_gpu_s=3.0, family_layer_s={"deepseek": 0.5, "dense": 0.1})
    assert overhead_s(step, 10, 0.0, "dense", 1) == pytest.approx(1.0 + 0.1 * 10)            # 2 s
    assert overhead_s(step, 10, 0.0, "deepseek", 2) == pytest.approx(1.0 + 3.0 + 0.5 * 10)   # 9 s
    assert prefill_overhead_s(overhead, 10) == 20.0


# ---------------------------------------------------------------- attention FLOPs
def v4_spec(arch=Arch.DEEPSEEK_V4):
    """2 heads x 3 dims: 4 x 2 x 3 = 24 FLOPs per attended entry; window 8; top-5; indexer 2 x 7 x 11 = 154
    FLOPs per scored key. Layers: 0 window only, 1 CSA (ratio 4, owns the indexer), 2 HCA (128), 3 ratio 2
    without its own indexer; layer 4 (past the ratios: an MTP layer) window only."""
    ratios = (0, 4, 128, 2)
    return SimpleNamespace(architecture=arch, num_attention_heads=2, head_dim=3, sliding_window=8, index_topk=5,
                           index_n_heads=7, index_head_dim=11, compress_ratios=ratios,
                           ratio=lambda layer: ratios[layer], owns_indexer=lambda layer: layer == 1)


def test_v4_attention_terms_by_hand():
    spec = v4_spec()
    assert attention_flops(spec, 0, 100) == 24 * 8                                   # window only: 192
    # CSA at 100 tokens: 192 + 24 x min(100 / 4, 5) + 154 x 100 / 4 = 192 + 120 + 3850
    assert attention_flops(spec, 1, 100) == 4162
    # HCA at 1000 tokens: every compressed entry, no top-k: 192 + 24 x 1000 / 128 = 192 + 187.5
    assert attention_flops(spec, 2, 1000) == 379.5
    # ratio 2 without an indexer on V4: all 50 compressed entries: 192 + 24 x 50
    assert attention_flops(spec, 3, 100) == 1392
    assert attention_flops(spec, 4, 100) == 192                                      # MTP layer: window only
    v41 = v4_spec(Arch.DEEPSEEK_V41)
    # V4.1 layers reuse an indexer's top-k: 192 + 24 x min(50, 5) = 312; at ratio 128 no top-k: 379.5
    assert attention_flops(v41, 3, 100) == 312
    assert attention_flops(v41, 2, 1000) == 379.5


def test_mean_attention_flops_on_both_sides_of_the_knee():
    spec = v4_spec()
    # 100 tokens, layer 1: window knee 8 x 1 = 8 < 100: 8 x (1 - 8 / 200) = 7.68 -> 24 x 7.68 = 184.32;
    # top-k knee 5 x 4 = 20: 5 x (1 - 20 / 200) = 4.5 -> 108; indexer (no cap): 100 / 8 = 12.5 -> 1925
    assert mean_attention_flops(spec, 1, 100) == pytest.approx(184.32 + 108 + 1925, rel=1e-14)
    # 4 tokens, below every knee: N / (2 r): 24 x 2 + 24 x 0.5 + 154 x 0.5 = 48 + 12 + 77
    assert mean_attention_flops(spec, 1, 4) == 137.0


def test_mla_and_gqa_attention_by_hand():
    mla = SimpleNamespace(architecture=Arch.DEEPSEEK_V3, num_attention_heads=3, kv_lora_rank=5, qk_rope_head_dim=7,
                          index_topk=0)
    # 2 x 3 heads x (2 x 5 + 7) = 102 FLOPs per entry, every entry: 102 x 50
    assert attention_flops(mla, 0, 50) == 5100
    dsa = SimpleNamespace(**{**vars(mla), "architecture": Arch.DEEPSEEK_V32, "index_topk": 10, "index_n_heads": 2,
                             "index_head_dim": 13})
    # top-10 entries, and the indexer 2 x 2 x 13 = 52 FLOPs on each of 50 keys: 1020 + 2600
    assert attention_flops(dsa, 0, 50) == 3620
    assert attention_flops(dsa, 0, 5) == 102 * 5 + 52 * 5                          # below the top-10: 770
    for arch in (Arch.QWEN2, Arch.LLAMA):
        gqa = SimpleNamespace(architecture=arch, num_attention_heads=3, head_dim=5)
        assert attention_flops(gqa, 0, 50) == 4 * 3 * 5 * 50                        # 3000
    # DeepSeek-V3 itself: 2 x 128 x (1024 + 64) = 278,528 FLOPs per entry
    v3 = SimpleNamespace(architecture=Arch.DEEPSEEK_V3, num_attention_heads=128, kv_lora_rank=512,
                         qk_rope_head_dim=64, index_topk=0)
    assert attention_flops(v3, 0, 1) == 278_528


# ---------------------------------------------------------------- expert-parallel imbalance
def _exact_ratio(balls: int, bins: int) -> float:
    """E[max load] / mean by counting: assignments of labelled balls with every bin <= m, one bin at a
    time (ways[k] = sum_j C(k, j) ways_prev[k - j]), in exact integers."""
    def at_most(m):
        ways = [1] + [0] * balls
        for _ in range(bins):
            ways = [sum(math.comb(k, j) * ways[k - j] for j in range(min(k, m) + 1)) for k in range(balls + 1)]
        return ways[balls]
    total = bins ** balls
    expected = sum(m * (at_most(m) - at_most(m - 1)) for m in range(1, balls + 1)) / total
    return expected / (balls / bins)


def _brute_ratio(balls: int, bins: int) -> float:
    """Every one of bins^balls assignments, enumerated."""
    loads = np.array([np.bincount(a, minlength=bins).max() for a in itertools.product(range(bins), repeat=balls)])
    return loads.mean() / (balls / bins)


@pytest.fixture
def fresh_imbalance():
    """ep_imbalance is cached per process: start from an empty cache, so each value is computed here."""
    ep_imbalance.cache_clear()
    yield
    ep_imbalance.cache_clear()


def test_ep_imbalance_against_counts(fresh_imbalance):
    assert ep_imbalance(0, 8) == 1.0 and ep_imbalance(5, 1) == 1.0 and ep_imbalance(5, 0) == 1.0
    # 3 balls in 2 bins: loads (3, 0) with p 2/8, else (2, 1): E[max] = 0.75 + 1.5 = 2.25 over mean 1.5
    assert ep_imbalance(3, 2) == pytest.approx(1.5, rel=1e-12)
    # 2 balls in 3 bins: both in one bin with p 1/3: E[max] = 2/3 + 2/3 = 4/3 over mean 2/3
    assert ep_imbalance(2, 3) == pytest.approx(2.0, rel=1e-12)
    for balls, bins in ((4, 4), (6, 3), (5, 4)):
        assert ep_imbalance(balls, bins) == pytest.approx(_brute_ratio(balls, bins), rel=1e-12)
    # the docstring's example, 6 uses on 8 GPUs: 2.903 simulated
    assert ep_imbalance(6, 8) == pytest.approx(_exact_ratio(6, 8), rel=1e-12)
    # the exact count holds up to 64 balls
    assert ep_imbalance(64, 8) == pytest.approx(_exact_ratio(64, 8), rel=1e-9)
    assert ep_imbalance(40, 16) == pytest.approx(_exact_ratio(40, 16), rel=1e-9)


def test_ep_imbalance_normal_approximation_beyond_64(fresh_imbalance):
    # 80 on 8: mean 10, sigma = sqrt(10 x 7/8) = 2.958040, sqrt(2 ln 8) = 2.039334: 1 + 6.032431 / 10
    assert ep_imbalance(80, 8) == pytest.approx(1.6032431, abs=1e-7)
    # 65 on 4: mean 16.25, sigma = sqrt(16.25 x 3/4) = 3.491060, sqrt(2 ln 4) = 1.665109: 1 + 5.812996 / 16.25
    assert ep_imbalance(65, 4) == pytest.approx(1.3577228, abs=1e-7)


def test_p_max_at_most_by_hand():
    # 4 balls in 2 bins, each bin at most 2: only (2, 2), C(4, 2) = 6 of 2^4 = 16 assignments
    assert _p_max_at_most(4, 2, 2) == pytest.approx(6 / 16, rel=1e-15)
    # 5 balls cannot fit 2 bins of at most 2: the product polynomial stops at x^4
    assert _p_max_at_most(5, 2, 2) == 0.0
