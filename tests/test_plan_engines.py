"""Whole-plan decode (and prefill) tokens/s pinned by hand, with a serving engine's fixed costs, at batch 1 and
batch 4: one GPU, four GPUs in tensor parallel on NVLink, and routed experts offloaded to the CPU (KTransformers).

Nothing here calls the cost functions under test: every expected value is derived in the comments from the
model's config (tiny-deepseek-v3), the synthetic profile's round figures and the engine's YAML figures (data,
read from the engine object). The tolerance is the arithmetic's own rounding (1e-9 relative), so a bug in any
term, however small beside the engine's fixed 2 ms, fails.

tiny-deepseek-v3 (mv4deploy/model/presets/tiny-deepseek-v3.json): hidden 128, 4 heads, q_lora 64, kv_lora 32,
qk_nope 16, qk_rope 16, v_head 16, intermediate 256, moe_intermediate 64, vocab 512, 3 layers (layer 0 dense),
E = 8 routed experts, k = 2 per token, 1 shared expert. Weights fp8-e4m3 with one fp32 scale per 128 x 128
block: an [N, K] matrix is N*K + ceil(N/128)*ceil(K/128)*4 bytes; the rest BF16 (routers' bias f32).
"""

from __future__ import annotations

from math import ceil

import pytest

from mv4deploy.engines.engine import load_engine
from mv4deploy.hardware.profile import parse_profile
from mv4deploy.model.source import resolve_model
from mv4deploy.plan.make import make_plan
from mv4deploy.plan.workload import make_workload
from mv4deploy.plan.workspace import workspace

REL = 1e-9          # float rounding of a few dozen additions and divisions; the hand values are exact sums
MODEL = "tiny-deepseek-v3"
CONTEXT = 256
HIDDEN, VOCAB, LAYERS, MOE_LAYERS = 128, 512, 3, 2
E, K = 8, 2


def fp8(n: int, k: int) -> int:
    """Bytes of an [n, k] fp8-e4m3 matrix with fp32 128 x 128 block scales."""
    return n * k + ceil(n / 128) * ceil(k / 128) * 4


# ---- the model, by hand from its config ----------------------------------------------------------------
# attention: q_a [64, 128], q_b [4 x (16 + 16), 64], kv_a [32 + 16, 128], kv_b [4 x (16 + 16), 32], o [128, 4 x 16]
ATTENTION = fp8(64, 128) + fp8(128, 64) + fp8(48, 128) + fp8(128, 32) + fp8(128, 64)      # 34,836 B
ATTENTION_PARAMS = 64 * 128 + 128 * 64 + 48 * 128 + 128 * 32 + 128 * 64                  # 34,816
DENSE_MLP = 2 * fp8(256, 128) + fp8(128, 256)                                             # 98,328 B (gate, up, down)
EXPERT = 2 * fp8(64, 128) + fp8(128, 64)                                                  # 24,588 B, shared alike
EXPERT_PARAMS = 3 * 64 * 128                                                              # 24,576
ROUTER = E * HIDDEN * 2 + E * 4                                                           # 2,080 B (bf16 + f32 bias)
NORM_PARAMS = HIDDEN + HIDDEN + 64 + 32                                                   # input, post, q_a, kv_a
NORMS = NORM_PARAMS * 2                                                                   # 704 B
EMBED_ROW = HIDDEN * 2                                                                    # 256 B, one row per token
HEAD = VOCAB * HIDDEN * 2 + HIDDEN * 2                                                    # 131,328 B (+ final norm)
# read whole at every step, whatever the batch: layer 0 (attention, dense MLP, norms), layers 1-2 (attention,
# shared expert, router, norms), the head: 133,868 + 2 x 62,208 + 131,328 = 389,612 B
DENSE = (ATTENTION + DENSE_MLP + NORMS) + MOE_LAYERS * (ATTENTION + EXPERT + ROUTER + NORMS) + HEAD
# MLA cache, BF16: kv_lora_rank 32 + qk_rope_head_dim 16 elements x 2 B = 96 B per layer per token
KV_ENTRY = (32 + 16) * 2

# FLOPs per token (2 per parameter used; routed experts: k of them); MLA attention core per context entry:
# 2 x heads x (2 x kv_lora + rope) = 2 x 4 x 80 = 640 (QK over 48, PV over 32, absorbed)
FLOPS = 2 * (3 * ATTENTION_PARAMS + (2 * 256 * 128 + 128 * 256) + 3 * NORM_PARAMS + MOE_LAYERS * EXPERT_PARAMS
             + MOE_LAYERS * K * EXPERT_PARAMS + MOE_LAYERS * (E * HIDDEN + E) + (VOCAB * HIDDEN + HIDDEN))
ATTN_PER_ENTRY = 2 * 4 * (2 * 32 + 16)


def experts_read(batch: int) -> float:
    """Routed-expert bytes a step of ``batch`` tokens reads per MoE layer: E x (1 - (1 - k/E)^B) distinct
    experts (each expert is missed by one token with probability 1 - k/E): B=1 -> 2, B=4 -> 5.46875."""
    return E * (1 - (1 - K / E) ** batch) * EXPERT


def kv_read(batch: int, context: int = CONTEXT) -> int:
    return batch * LAYERS * context * KV_ENTRY


def profile(gpu_bw: str, gpu_compute: str, count: int = 1, gpu_memory: str = "80GiB", host_bw: str = "1GB/s",
            link: str = "1GB/s") -> dict:
    """Round figures, every efficiency 1.0, no reserve: achievable = nominal."""
    data = {"name": "pins", "description": "hand-pinned planner figures",
            "gpus": {"kind": "gpu", "model": "G", "count": count, "memory": gpu_memory, "usable_fraction": 1.0,
                     "bandwidth": gpu_bw, "compute": {"bf16": gpu_compute}, "native_formats": ["bf16"],
                     "compute_capability": "9.0", "runtime_reserve": 0},
            "host": {"memory": "64GiB", "bandwidth": host_bw, "cores": 16, "isa": ["avx2", "avx512f", "avx512_bf16"],
                     "compute": {"bf16": "1TFLOPS"}, "reserve": 0},
            "host_link": {"pcie_gen": 5, "lanes": 16, "bandwidth": link, "latency": "10us"},
            "efficiency": {"gpu_bandwidth": 1.0, "gpu_compute": 1.0, "host_bandwidth": 1.0, "host_compute": 1.0,
                           "host_link": 1.0}}
    if count > 1:
        data["interconnect"] = {"kind": "nvlink", "p2p": True, "bandwidth": "100GB/s", "latency": "5us"}
    return data


@pytest.fixture(scope="module")
def tiny():
    return resolve_model(MODEL)


def plan(tiny, data: dict, engine: str, batch: int, context: int = CONTEXT, chunk: int = 2048, **kw):
    return make_plan(tiny, parse_profile(data, "pins"), make_workload(context, batch, chunk), engine=engine,
                     suggest=False, **kw)


def test_the_hand_sizes_are_the_models():
    """The config arithmetic above is what the inventory holds (so the pins below rest on the right bytes)."""
    assert (ATTENTION, DENSE_MLP, EXPERT, ROUTER, HEAD, DENSE) == (34_836, 98_328, 24_588, 2_080, 131_328, 389_612)
    assert FLOPS == 837_984
    assert experts_read(1) == 2 * EXPERT and experts_read(4) == 5.46875 * EXPERT


# ---- 1. one GPU, everything resident ----------------------------------------------------------------------
# GPU 1 GB/s (slowed so the roofline, ~1-4 ms, weighs as much as vLLM's fixed ~2.4 ms), 500 GFLOPS: every
# decode item is bandwidth-bound (the heaviest, attention at batch 4: 4 x (69,632 + 640 x 256) = 0.93 MFLOP
# = 1.9 us against 34,836 B = 35 us). vLLM: no GPU efficiency table (every read at 1.0), per step 0.48 ms on one
# GPU (1.32 ms more on several), per DeepSeek layer 220 us, no per-expert cost.

@pytest.mark.parametrize("batch, expected_step_s", [(1, 1.701948e-3), (4, 2.09447925e-3)])
def test_one_gpu_vllm_decode(tiny, batch, expected_step_s):
    vllm = load_engine("vllm")
    p = plan(tiny, profile("1GB/s", "500GFLOPS"), "vllm", batch)
    assert {g.tier for g in p.groups} == {"gpu:0"} and p.decisions.parallelism.mode == "single"
    assert not vllm.gpu_efficiency and not vllm.step.per_expert_s          # every read at 1.0; no per-expert cost
    # bytes per step: dense 389,612 + B embedding rows x 256 + 2 MoE layers x experts_read(B) + KV B x 3 x 256 x 96
    #   B=1: 389,612 + 256 + 98,352 + 73,728 = 561,948 B -> 0.561948 ms
    #   B=4: 389,612 + 1,024 + 268,931.25 + 294,912 = 954,479.25 B -> 0.95447925 ms
    fixed = vllm.step.step_s(1) + LAYERS * vllm.step.layer_s("deepseek")     # 0.48 ms + 3 x 220 us = 1.14 ms
    step = (DENSE + batch * EMBED_ROW + MOE_LAYERS * experts_read(batch) + kv_read(batch)) / 1e9 + fixed
    assert fixed == pytest.approx(1.14e-3, rel=REL)
    assert step == pytest.approx(expected_step_s, rel=REL)
    assert p.estimates.decode_tokens_per_s == pytest.approx(batch / step, rel=REL)
    # B=1: 1 / 1.701948 ms = 587.56 tok/s; B=4: 4 / 2.09447925 ms = 1,909.8 tok/s


def test_one_gpu_vllm_prefill(tiny):
    """Context 2048 in one chunk of 2048 at 500 GFLOPS: every group but the embedding is compute-bound (the
    lowest FLOPs per byte, the routed experts, 2,048 x 98,304 / 196,704 B = 1,024 FLOP/B > 500 FLOP/B); the
    embedding (no FLOPs) reads all its 512 rows; KV on the GPU costs a prefill nothing; vLLM prefill
    efficiency 1.0 and no per-layer prefill cost."""
    p = plan(tiny, profile("1GB/s", "500GFLOPS"), "vllm", 1, context=2048)
    # mean attention over positions 1..2048: 640 x 2048 / 2 = 655,360 per token per layer
    flops = 2048 * (FLOPS + LAYERS * ATTN_PER_ENTRY * 2048 / 2)             # 2,048 x 2,804,064 = 5.7427 GFLOP
    chunk_s = flops / 500e9 + VOCAB * EMBED_ROW / 1e9                        # 11.48545 ms + 0.131072 ms
    assert chunk_s == pytest.approx(11.616518144e-3, rel=REL)
    assert p.estimates.prefill_tokens_per_s == pytest.approx(2048 / chunk_s, rel=REL)
    assert 2048 / chunk_s == pytest.approx(176_300.676, rel=1e-8)


# ---- 2. four GPUs, tensor parallel on NVLink --------------------------------------------------------------
# Each GPU 1 GB/s: the sharded tier reads every weight at 4 GB/s. MLA keeps one latent per token for all heads,
# so every rank holds and reads the whole cache (a replica per GPU, read in parallel): KV / 1 GB/s.
# Two all-reduces per layer of 2 x (4-1)/4 x B x 128 x 2 B = 384 B x B (ring), at vLLM's NVLink all-reduce in a
# CUDA graph: 5.7 us + bytes / (100 GB/s x 0.33).

@pytest.mark.parametrize("batch", [1, 4])
def test_four_gpus_tensor_parallel_vllm_decode(tiny, batch):
    vllm = load_engine("vllm")
    ar = vllm.collective("nvlink", "all_reduce")
    assert (ar.latency_s, ar.bandwidth_fraction) == pytest.approx((5.7e-6, 0.33))
    p = plan(tiny, profile("1GB/s", "500GFLOPS", count=4), "vllm", batch)
    assert p.decisions.parallelism.mode == "tensor parallel"
    assert {g.tier for g in p.groups} == {"gpu:0-3"}
    weights = DENSE + batch * EMBED_ROW + MOE_LAYERS * experts_read(batch)
    reduce_s = ar.latency_s + 2 * 3 / 4 * batch * HIDDEN * 2 / (100e9 * ar.bandwidth_fraction)
    fixed = vllm.step.step_s(4) + LAYERS * vllm.step.layer_s("deepseek")     # 0.48 + 1.32 ms + 3 x 220 us = 2.46 ms
    assert fixed == pytest.approx(2.46e-3, rel=REL)
    step = weights / 4e9 + kv_read(batch) / 1e9 + LAYERS * 2 * reduce_s + fixed
    # B=1: 488,220 B / 4 GB/s = 122.055 us + 73,728 B / 1 GB/s = 73.728 us + 6 x (5.7 us + 11.64 ns) + 2.46 ms
    #      = 2.690053 ms -> 371.74 tok/s
    # B=4: 659,567.25 B / 4 GB/s = 164.892 us + 294.912 us + 6 x (5.7 us + 46.55 ns) + 2.46 ms
    #      = 2.954283 ms -> 1,353.97 tok/s
    assert step == pytest.approx({1: 2.690052818182e-3, 4: 2.954283085227e-3}[batch], rel=1e-12)
    assert p.estimates.decode_tokens_per_s == pytest.approx(batch / step, rel=REL)
    # memory: a full cache on each of the 4 GPUs
    kv_bytes = sum(d.breakdown["kv_cache"] for d in p.devices if d.kind == "gpu")
    assert kv_bytes == 4 * batch * LAYERS * CONTEXT * KV_ENTRY


# ---- 3. routed experts on the CPU (KTransformers) ----------------------------------------------------------
# GPU 10 GB/s (5 TFLOPS), host 1 GB/s, host link 0.1 GB/s (slow, so the KV cache stays on the GPU: KTransformers
# reads it at 0.052 of the GPU bandwidth, 520 MB/s, still faster than fetching it over the link), 10 us latency.
# The GPU holds everything but the routed experts and the embedding (too small for one more expert): those run
# on the CPU at the host bandwidth x KTransformers' AVX-512 fraction (0.47), each call paying an activation
# round trip: 2 x (10 us + B x 128 x 2 B / 0.1 GB/s).

def _offload_profile(tiny, batch: int) -> dict:
    """A GPU that holds the dense weights, the batch's KV cache and the activations, and half an expert more."""
    ws = workspace(tiny.spec, make_workload(CONTEXT, batch, 2048)).total_bytes     # 393,216 B (chunk 256)
    gpu_bytes = DENSE + kv_read(batch) + ws + EXPERT // 2
    return profile("10GB/s", "5TFLOPS", gpu_memory=f"{gpu_bytes}B", host_bw="1GB/s", link="0.1GB/s")


@pytest.mark.parametrize("batch", [1, 4])
def test_cpu_experts_ktransformers_decode(tiny, batch):
    kt = load_engine("ktransformers")
    fraction = kt.cpu_fraction(("avx2", "avx512f"))
    kv_fraction = kt.gpu_efficiency["kv"]
    assert (fraction, kv_fraction) == pytest.approx((0.47, 0.052))
    p = plan(tiny, _offload_profile(tiny, batch), "ktransformers", batch)
    tiers = {g.name: g.tier for g in p.groups}
    assert {n for n, t in tiers.items() if t == "host"} == {"embedding", "layers.1.routed_experts",
                                                           "layers.2.routed_experts"}
    assert {x.tier for x in p.kv_cache.pools} == {"gpu:0"}
    assert p.decisions.routed_experts.offloaded_decode == ("cpu",)
    host_bw = 1e9 * fraction                                              # 470 MB/s
    round_trip = 2 * (10e-6 + batch * HIDDEN * 2 / 0.1e9)                 # B=1: 25.12 us; B=4: 40.48 us
    cpu = (MOE_LAYERS * experts_read(batch) + batch * EMBED_ROW) / host_bw + (MOE_LAYERS + 1) * round_trip
    gpu = DENSE / 10e9 + kv_read(batch) / (10e9 * kv_fraction)
    fixed = kt.step.step_s(1) + LAYERS * kt.step.layer_s("deepseek")     # 0.48 ms + 3 x 98 us = 0.774 ms
    step = cpu + gpu + fixed
    # B=1: CPU 98,608 B / 470 MB/s = 209.804 us + 3 round trips x 25.12 us = 75.36 us; GPU 389,612 B / 10 GB/s
    #      = 38.961 us + KV 73,728 B / 520 MB/s = 141.785 us; fixed 774 us -> 1.239910 ms = 806.51 tok/s
    # B=4: CPU 269,955.25 B / 470 MB/s = 574.373 us + 3 x 40.48 us = 121.44 us; GPU 38.961 us + 294,912 B /
    #      520 MB/s = 567.138 us; fixed 774 us -> 2.075913 ms = 1,926.86 tok/s
    assert step == pytest.approx({1: 1.239910070704e-3, 4: 2.075912533879e-3}[batch], rel=1e-12)
    assert p.estimates.decode_tokens_per_s == pytest.approx(batch / step, rel=REL)


# ---- batch B against batch 1: both sides ------------------------------------------------------------------

@pytest.mark.parametrize("engine, count", [("vllm", 1), ("vllm", 4), ("sglang", 1)])
def test_batch_speedup_is_bounded_on_both_sides(tiny, engine, count):
    """step(B) = fixed + var(B), where fixed (per step + layers x per layer) does not grow with the batch and
    var(1) <= var(B) <= B x var(1): dense weights are read once per step, distinct experts grow as
    E(1 - (1 - k/E)^B) <= B k, KV reads, FLOPs and collectives' bytes grow linearly, latencies not at all.
    So B / (fixed + B var(1)) <= tokens/s(B) <= B / step(1) = B x tokens/s(1). A planner that charges a batch
    its tokens' weights again (B x the batch-1 step) fails the lower side only where the fixed cost is
    non-zero; one that drops the batch from tokens/s fails the upper. On top, since the GPUs hold everything,
    tokens/s(B) <= B / (fixed + dense / bandwidth + B x KV(1) / bandwidth): the bytes no step can skip."""
    e = load_engine(engine)
    fixed = e.step.step_s(count) + LAYERS * e.step.layer_s("deepseek")
    data = profile("1GB/s", "500GFLOPS", count=count)
    one = plan(tiny, data, engine, 1).estimates.decode_tokens_per_s
    var1 = 1 / one - fixed
    assert var1 > 0
    kv_bw = 1e9 * e.gpu_fraction("kv")                     # each rank reads its own copy of the MLA cache
    for batch in (2, 4, 16, 64):
        tps = plan(tiny, data, engine, batch).estimates.decode_tokens_per_s
        assert batch / (fixed + batch * var1) * (1 - REL) <= tps <= batch * one * (1 + REL)
        floor_s = fixed + DENSE / (count * 1e9) + kv_read(batch) / kv_bw
        assert tps <= batch / floor_s * (1 + REL)


# ---- a config the planner does not size from -------------------------------------------------------------

def test_mla_cache_entry_follows_the_config(tiny):
    from mv4deploy.model.kv import kv_layout
    spec = tiny.spec
    assert kv_layout(spec).bytes_per_token == LAYERS * (spec.kv_lora_rank + spec.qk_rope_head_dim) * 2   # 3 x 96 B
