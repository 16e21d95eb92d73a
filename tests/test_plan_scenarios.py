"""The issue's scenarios, pinned, with the hand arithmetic behind each expected value.

Figures from the profiles (achievable = peak x efficiency):
  rtx5090:   GPU 32 GiB x 0.94 = 32,298,154,065 B; 1792 GB/s x 0.8 = 1433.6 GB/s; host 128 GiB, reserve 6 GiB,
             89.6 GB/s x 0.75 = 67.2 GB/s; host link 56.3 GB/s measured; link latency 10 us
  rtx4090x2: 2 x (24 GiB x 0.94 = 24,223,615,549 B); 1008 GB/s x 0.8 = 806.4 GB/s each; no P2P
             (PCIe through host memory, 12.9 GB/s, 20 us); host as rtx5090; host link 25 GB/s
  b200:      179 GiB x 0.97; 7700 GB/s x 0.85 = 6545 GB/s; host 512 GiB (16 GiB reserve), 460.8 x 0.7 =
             322.56 GB/s; host link 63 GB/s x 0.8 = 50.4 GB/s
  b200x8:    8 x b200 on NVLink (900 GB/s, 10 us per collective)
  h200/h100: host bandwidth unknown -> the CPU does not execute weights there (no guessing)
Engine: mv4deploy's own runtime, whose costs are the profile's (zero overhead here), so the figures are the
bare roofline; tests/test_engines.py and tests/test_plan_engines.py pin each engine's terms on top.
Model facts (inventory): V4-Flash expert 13,369,344 B (3 MXFP4 [2048 x 4096] matrices, 4,456,448 B each),
256 per layer = 3,422,552,064 B, 43 layers = 147,169,738,752 B; top-6 routing.
"""

from __future__ import annotations

import pytest

from mv4deploy.hardware.profile import load_profile
from mv4deploy.model.source import resolve_model
from mv4deploy.plan.make import make_plan
from mv4deploy.plan.plan import FormatUse
from mv4deploy.plan.workload import make_workload

GiB = 2**30
MODELS: dict = {}
ROOFLINE = "mv4deploy"   # the hand figures are the bare roofline: mv4deploy's runtime with the profile's overhead (0)


def plan(model, profile, host_mem=None, **workload):
    if model not in MODELS:
        MODELS[model] = resolve_model(model)
    return make_plan(MODELS[model], load_profile(profile), make_workload(**workload), host_mem_bytes=host_mem,
                     engine=ROOFLINE)


def used(p, tier_prefix, role=None):
    return sum(g.bytes for g in p.groups if g.tier.startswith(tier_prefix) and (role is None or g.role == role))


def device(p, name):
    return next(d for d in p.devices if d.name == name)


def assert_within_capacity(p):
    for d in p.devices:
        assert d.used_bytes <= d.capacity_bytes, d.name


def test_v4_flash_on_rtx5090_offloads_experts_to_the_cpu():
    p = plan("deepseek-v4-flash", "rtx5090")
    assert p.verdict == "fits_with_offload"
    assert_within_capacity(p)
    # workspace: residual 134,217,728 + indexer logits 268,435,456 + stream buffer 2 x ceil(3,422,552,064 / 3)
    # = 2,281,701,376 -> 2,684,354,560 B (prefill streams host experts to the GPU one tensor at a time)
    assert p.decisions.workspace["total_bytes"] == 2_684_354_560
    # everything but the experts (and the 1 GiB embedding, read one row per token) stays on the GPU
    assert {g.role for g in p.groups if g.tier == "host"} == {"routed_experts", "embedding"}
    # GPU: 32,298,154,065 - 1 GiB reserve - 2,684,354,560 workspace - 520,080,384 KV - 7,786,897,628
    # other weights = 20,233,079,669 B free for experts -> 1,513 whole experts (x 13,369,344 = 20,227,817,472)
    assert used(p, "gpu", "routed_experts") == 1513 * 13_369_344
    host_experts = used(p, "host", "routed_experts")
    assert host_experts == 147_169_738_752 - 1513 * 13_369_344          # 126,941,921,280 B = 118.2 GiB
    # decode: host experts read 6/256 of their bytes per token at 67.2 GB/s = 44.27 ms, plus 38 CPU round
    # trips of 2 x (10 us + 8 KiB / 56.3 GB/s) = 0.77 ms -> 45.05 ms; the GPU reads ~8.36 GB at 1433.6 GB/s
    # = 5.83 ms -> 50.88 ms per token = 19.65 tok/s
    host_s = host_experts * 6 / 256 / 67.2e9
    assert host_s == pytest.approx(0.04427, rel=1e-3)
    assert p.estimates.decode_tokens_per_s == pytest.approx(19.65, rel=0.01)
    assert p.estimates.bottleneck.startswith("host bandwidth")
    assert p.decisions.routed_experts.offloaded_decode == ("cpu",)      # 67.2 GB/s RAM > 56.3 GB/s link
    assert p.decisions.routed_experts.offloaded_prefill == ("stream",)  # 2048-token chunks: GPU FLOPs win
    assert p.estimates.decode_tokens_per_s <= p.estimates.bound_decode_tokens_per_s
    assert any(s.verdict == "fits" for s in p.suggestions)               # e.g. a B200


def test_v4_flash_on_rtx4090x2_splits_layers_and_offloads_experts():
    p = plan("deepseek-v4-flash", "rtx4090x2")
    assert p.verdict == "fits_with_offload"
    assert_within_capacity(p)
    assert p.decisions.parallelism.mode == "pipeline"                  # no P2P: PCIe through host memory
    assert "no P2P" in p.decisions.parallelism.reason
    # both GPUs carry experts; the head lives on the last GPU, the first layers on the first
    assert used(p, "gpu:0", "routed_experts") > 0 and used(p, "gpu:1", "routed_experts") > 0
    assert used(p, "gpu:1", "head") > 0 and used(p, "gpu:0", "head") == 0
    # host experts ~114.6 GB x 6/256 at 67.2 GB/s = 39.96 ms + ~0.7 ms round trips; the two GPUs read
    # ~8.7 GB at 806.4 GB/s, one after the other = 10.7 ms; one stage crossing 20 us + 32 KiB / 12.9 GB/s
    host_s = used(p, "host", "routed_experts") * 6 / 256 / 67.2e9
    assert host_s == pytest.approx(0.03996, rel=0.01)
    assert p.estimates.decode_tokens_per_s == pytest.approx(1 / (0.0407 + 0.01074 + 0.0000225), rel=0.01)


def test_v4_pro_on_b200x8_fits_with_tensor_parallel():
    p = plan("deepseek-v4-pro", "b200x8")
    assert p.verdict == "fits"
    assert_within_capacity(p)
    assert {g.tier for g in p.groups} == {"gpu:0-7"}
    assert p.decisions.parallelism.mode == "tensor parallel"           # NVLink: bandwidth adds up
    # weights 850.8 GB split evenly: each GPU holds 1/8
    per_gpu = [d.breakdown["weights"] for d in p.devices if d.kind == "gpu"]
    assert max(per_gpu) - min(per_gpu) <= 8
    # tensor parallel: 61 layers x 2 all-reduces x 10 us (+ 25 KB / 900 GB/s, 0.03 us) = 1.22 ms per token;
    # every GPU reads 1/8 of the same 6 routed experts: ~41.2 GB per token at 8 x 6545 GB/s = 0.787 ms
    # -> 2.01 ms = 497 tok/s. Expert parallel would make the busiest GPU of the 6 routed uses set the pace
    # (E[max]/mean = 2.91 on 8 GPUs) and add a dispatch and a combine per MoE layer: 61 x 3 x 10 us = 1.83 ms,
    # 3.09 ms = 324 tok/s; the reason says so.
    by = p.decisions.decode_seconds_by_resource
    assert by["GPU interconnect"] == pytest.approx(61 * 2 * 10e-6, rel=0.01)
    assert by["gpu:0-7 bandwidth"] == pytest.approx(41.2e9 / (8 * 6545e9), rel=0.01)
    assert p.estimates.decode_tokens_per_s == pytest.approx(497, rel=0.02)
    assert "tensor+expert parallel: fits, 323.9 tok/s" in p.decisions.parallelism.reason
    assert p.suggestions == ()                                                # fits: nothing to suggest


def test_v41_flash_on_rtx4090x2_with_256gib_host_keeps_engram_off_the_gpus():
    p = plan("deepseek-v4.1-flash", "rtx4090x2", host_mem=256 * GiB)
    assert p.verdict == "fits_with_offload"
    assert_within_capacity(p)
    e = p.engram
    # 48 rows x 264 B (256 e4m3 + 8 UE8M0 scale bytes) = 12,672 B per token, two tables of 24 rows each
    assert (e.rows_per_token, e.row_bytes, e.bytes_per_token) == (48, 264, 12_672)
    # Host RAM, 256 - 6 GiB reserve = 268,435,456,000 B, goes to the experts first: per byte they are read
    # 6/384 per token (1.6e-2) against ~1e-6 for a table (24 rows x 4 KiB pages of a 101 GB table).
    # Experts 288.8 GB - 25.5 GB on the GPUs = 263.3 GB in RAM leaves 3.75 GB: the 202.8 GB of tables
    # go to NVMe, with those 3.75 GB as page cache for hot rows.
    assert {t.tier for t in e.tables} == {"nvme"}
    assert e.page_cache_bytes == device(p, "host").headroom_bytes
    # lookup per layer: 80 us NVMe latency + 24 x 4 KiB / min(7.45 GB/s x 0.85, 1.4M x 4 KiB) = 17.1 us
    # + 10 us + 24 x 264 B / 25 GB/s over the link = 107.4 us, prefetched behind the layers before:
    # layer 1 has the embedding and layer 0 in front (0.37 ms), so nothing is exposed
    assert e.tables[0].lookup_s == pytest.approx(80e-6 + 24 * 4096 / (1.4e6 * 4096) + 10e-6 + 24 * 264 / 25e9)
    assert e.fits_overlap_window and e.exposed_s_per_token == 0.0
    # V4.1's experts in RAM set the pace: ~262 GB x 6/384 / 67.2 GB/s = 61 ms of a ~73 ms step
    assert p.estimates.bottleneck.startswith("host bandwidth")


def test_v41_flash_engram_moves_to_host_ram_when_it_fits():
    # 512 GiB: experts (263.3 GB) and both tables (202.8 GB) fit beside each other in RAM
    p = plan("deepseek-v4.1-flash", "rtx4090x2", host_mem=512 * GiB)
    assert {t.tier for t in p.engram.tables} == {"host"}
    assert device(p, "host").breakdown["engram"] == 202_758_032_400          # 768,022,850 rows x 264 B
    # pinned host lookup: 10 us + 24 x 264 B / 25 GB/s = 10.25 us per table
    assert p.engram.tables[0].lookup_s == pytest.approx(10e-6 + 24 * 264 / 25e9)


def test_v32_at_128k_tiers_its_mla_latents_when_the_gpu_is_worth_more():
    # batch 4 on one B200: latents 4 x 61 layers x 656 B x 131,072 tokens = 20,979,908,608 B, read through
    # the indexer's top-2048 per layer. In host RAM a step fetches 4 x 61 x 2048 x 656 B = 327,811,072 B over
    # 50.4 GB/s (6.50 ms) + 61 x 10 us, minus the 0.05 ms the GPU read took = 7.06 ms added per step.
    # The 21 GB they free hold experts instead, which a step of 4 tokens touches with probability
    # 1 - (248/256)^4 = 11.9%: 2.50 GB less from RAM at 322.56 GB/s = 7.76 ms saved > 7.06 ms added.
    p = plan("deepseek-v3.2", "b200", batch=4)
    kv = p.kv_cache
    assert {x.name: x.tier for x in kv.pools} == {"mla_latent": "host", "indexer_keys": "gpu:0"}
    assert kv.gpu_bytes_saved == 4 * 61 * 656 * 131_072
    added = 4 * 61 * 2048 * 656 / 50.4e9 + 61 * 10e-6 - 4 * 61 * 2048 * 656 / 6545e9
    assert kv.added_s_per_token == pytest.approx(added)
    assert_within_capacity(p)


def test_v32_at_128k_batch_1_keeps_latents_on_the_gpu():
    # batch 1: freeing 5.24 GB saves only 5.24 GB x 8/256 / 322.56 GB/s = 0.51 ms, fetching costs
    # 61 x 2048 x 656 B / 50.4 GB/s + 0.61 ms = 2.24 ms: the latents stay
    p = plan("deepseek-v3.2", "b200")
    assert p.kv_cache.gpu_bytes_saved == 0
    assert all(x.tier == "gpu:0" for x in p.kv_cache.pools)


def test_distillate_on_the_phone_is_int4_within_the_app_budget():
    p = plan("deepseek-r1-distill-qwen-7b", "snapdragon-8-elite-gen5", context=4096)
    assert p.verdict == "fits"
    npu = device(p, "gpu:0")
    assert npu.kind == "npu"
    assert npu.capacity_bytes == int(16 * GiB * 0.45)                         # the app budget: 45% of RAM
    formats = {g.role: g.format for g in p.groups}
    # the onnxruntime-genai int4 export (exporters/cpu-int4.yaml): MatMulNBits block 32, F32 scales, for every
    # MatMul, the LM head and the embedding; fp32 KV (tests/test_export_plan.py checks it against the export)
    assert formats["attention"] == formats["dense_mlp"] == formats["head"] == formats["embedding"] == "mnb-int4-b32"
    # mnb-int4-b32 per [N, K]: N*K/2 + N*K/32*4 (F32 scales) = 0.625 B/weight. Per layer: q, o [3584, 3584]
    # 8,028,160 each; k, v [512, 3584] 1,146,880 each; BF16 biases 9,216 B -> 18,359,296 x 28 = 514,060,288;
    # MLP 3 x 42,434,560 x 28 = 3,564,503,040; head and embedding [152,064, 3,584] 340,623,360 each;
    # norms 401,408 + 7,168 -> 4,760,218,624 B
    assert npu.breakdown["weights"] == 4_760_218_624
    assert npu.breakdown["kv_cache"] == 4096 * 114_688                         # 28 x 2 x 4 x 128 x 4 B per token
    assert npu.used_bytes <= 0.45 * 16 * GiB and npu.used_bytes / (16 * GiB) > 0.30
    # decode reads everything but 152,063 embedding rows of 2,240 B: 4,419,597,504 + KV 469,762,048 B at
    # 84.8 GB/s x 0.7 = 59.36 GB/s = 82.4 ms -> 12.14 tok/s; NPU compute unknown: no prefill estimate
    assert p.estimates.decode_tokens_per_s == pytest.approx(59.36e9 / (4_419_597_504 + 469_762_048))
    assert p.estimates.prefill_tokens_per_s is None
    assert any("compute unknown" in w for w in p.warnings)


def test_distillate_on_the_phone_at_128k_does_not_fit_and_says_how_to():
    # 128K of fp32 KV is 14 GiB on its own: more than the 7.2 GiB budget with the weights
    p = plan("deepseek-r1-distill-qwen-7b", "snapdragon-8-elite-gen5")
    assert p.verdict == "does_not_fit"
    context = next(s for s in p.suggestions if s.kind == "context")
    # the first halving that fits: 32K needs 4,760,218,624 weights + 3,758,096,384 KV > 7,730,941,132;
    # 16K: 4,760,218,624 + 16,384 x 114,688 + 184,549,376 workspace + 256 MiB = 7,092,251,648 <= 7,730,941,132
    assert (context.change, context.verdict) == ("--context 16384", "fits")


def test_v4_pro_on_rtx5090_with_128gib_does_not_fit_and_suggests():
    p = plan("deepseek-v4-pro", "rtx5090", host_mem=128 * GiB)
    assert p.verdict == "does_not_fit"
    # 850.7 GB of weights against ~28 GB of GPU and 122 GiB of RAM: ~690 GB of experts would stream from NVMe
    assert used(p, "nvme", "routed_experts") > 600e9
    assert p.estimates.bottleneck.startswith("nvme read")
    kinds = {s.kind: s for s in p.suggestions}
    assert kinds["host_memory"].change == "--host-mem 1024GiB"            # 776 GiB needed -> next size
    assert kinds["host_memory"].verdict == "fits_with_offload"
    assert kinds["profile"].change == "--profile b200x8" and kinds["profile"].verdict == "fits"
    assert kinds["model"].change == "--model deepseek-r1-distill-qwen-7b"


def test_fp4_experts_on_ada_run_as_weight_only_dequant_or_int4():
    # the RTX 4090 (sm_89) has FP8 and INT4 units but no FP4: native FP4 experts keep their 4.25-bit bytes
    # and run as weight-only dequantization into BF16; --policy int4-experts re-quantizes them to INT4 with a
    # BF16 scale per 128 (4.125 bits: 13,369,344 -> 12,976,176 B per expert) that Ada runs natively
    native = plan("deepseek-v4-flash", "rtx4090x2")
    assert FormatUse("gpu:0", "mxfp4", "dequant:bf16") in native.decisions.formats
    flash = MODELS["deepseek-v4-flash"]
    int4 = make_plan(flash, load_profile("rtx4090x2"), make_workload(), policy="int4-experts", engine=ROOFLINE)
    assert FormatUse("gpu:0", "int4-g128", "native") in int4.decisions.formats
    experts = sum(g.bytes for g in int4.groups if g.role == "routed_experts")
    assert experts == 43 * 256 * 3 * 4_325_392
    assert int4.estimates.decode_tokens_per_s > native.estimates.decode_tokens_per_s   # 3% fewer bytes to read


def test_engine_hints_follow_the_placement():
    import re
    p = plan("deepseek-v4-flash", "rtx4090x2")
    off_gpu = sorted({g.layer for g in p.groups if g.role == "routed_experts" and g.tier == "host"})
    rule = re.search(r"blk\\\.\(([\d|]+)\)\\\.ffn_\(gate\|up\|down\)_exps\\\.=CPU", p.hints.llama_cpp)
    assert rule and [int(x) for x in rule.group(1).split("|")] == off_gpu    # every layer with experts in RAM
    assert "-sm layer -ts " in p.hints.llama_cpp                          # pipeline: layers per GPU
    assert "--pipeline-parallel-size 2" in p.hints.vllm and "--pp-size 2" in p.hints.sglang
    device_map = p.hints.accelerate_device_map
    assert {device_map[f"model.layers.{n}.mlp.experts"] for n in off_gpu} == {"cpu"}
    assert device_map["model.layers.42.self_attn"] == 1 and device_map["model.layers.0.self_attn"] == 0
    big = plan("deepseek-v4-pro", "b200x8")
    assert "--tensor-parallel-size 8" in big.hints.vllm and "--enable-expert-parallel" not in big.hints.vllm
    assert "--tp-size 8" in big.hints.sglang and "--ep-size" not in big.hints.sglang    # experts split by TP
    phone = plan("deepseek-r1-distill-qwen-7b", "snapdragon-8-elite-gen5", context=4096)
    assert set(phone.hints.to_json().values()) == {None}                               # an NPU: export onnx instead


def test_a_cpu_only_machine_runs_everything_from_ram():
    from mv4deploy.hardware.profile import parse_profile
    box = parse_profile({"name": "cpu-box", "host": {"memory": "64GiB", "bandwidth": "89.6GB/s", "cores": 16,
                                                    "isa": ["avx512_bf16"], "compute": {"bf16": "2.3TFLOPS"}}},
                        "cpu-box")
    flash = resolve_model("deepseek-r1-distill-qwen-7b")
    p = make_plan(flash, box, make_workload(8192), engine=ROOFLINE)
    assert p.verdict == "fits" and p.decisions.parallelism.mode == "cpu only"
    host = device(p, "host")
    assert host.breakdown["activations"] == p.decisions.workspace["total_bytes"] > 0
    # all 15,231,233,024 B of BF16 weights but 152,063 of the 152,064 embedding rows (7,168 B each), plus the
    # 8K KV (8,192 x 57,344 B), read at 89.6 GB/s x 0.7 (the default efficiency): 14,611,007,488 B / 62.72 GB/s
    read = 15_231_233_024 - 152_064 * 3584 * 2 + 3584 * 2 + 8192 * 57_344
    assert p.estimates.decode_tokens_per_s == pytest.approx(89.6e9 * 0.7 / read, rel=1e-3)
    assert p.hints.llama_cpp.endswith("-ngl 0") and p.hints.vllm is None


def test_blackwell_lower_bit_choice_is_nvfp4():
    """On Blackwell (FP4 tensor cores) the planner's lower-bit suggestion is NVFP4, not INT4 experts: the 8B
    distillate in BF16 spills to the host on an RTX 5090 at 128K context; in NVFP4 (4.5 bits: e2m1 + an
    FP8 scale per 16) its linears shrink 3.6x and it fits. On Ada (no FP4) the suggestion stays INT4."""
    from mv4deploy.model.source import resolve_model
    blackwell = make_plan(resolve_model("deepseek-r1-distill-llama-8b"), load_profile("rtx5090"), make_workload(),
                          engine=ROOFLINE)
    nvfp4 = next(s for s in blackwell.suggestions if s.kind == "policy")
    assert nvfp4.change == "--policy nvfp4" and nvfp4.verdict == "fits"
    chosen = make_plan(resolve_model("deepseek-r1-distill-llama-8b"), load_profile("rtx5090"), make_workload(),
                       policy="nvfp4")
    assert FormatUse("gpu:0", "nvfp4", "native") in chosen.decisions.formats
    ada = plan("deepseek-v4-flash", "rtx4090x2")
    assert all(s.change != "--policy nvfp4" for s in ada.suggestions)
