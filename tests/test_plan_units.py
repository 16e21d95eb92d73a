"""Planner building blocks, each against a hand-worked value.

Arithmetic is written beside each expected value; the shapes are those of the shipped configs.
"""

from __future__ import annotations

import json
import math
import random
from types import SimpleNamespace

import pytest

from mv4deploy.core.errors import InputError
from mv4deploy.hardware.profile import DeviceKind, parse_profile
from mv4deploy.core.units import parse_seconds, parse_tokens
from mv4deploy.model.source import PRESETS_DIR, resolve_model
from mv4deploy.model.spec import Arch
from mv4deploy.plan.costs import Cost, Work, attention_flops, ep_imbalance, mean_attention_flops, on_gpu, on_host
from mv4deploy.plan.groups import GroupClass, build_groups
from mv4deploy.plan.items import Item, ItemKind, Option
from mv4deploy.plan.placement import Placement, _Room, _saving, _units_that_fit, lower_bound, multipliers, place
from mv4deploy.plan.plan import DeviceUse
from mv4deploy.plan.suggest import host_memory_needed
from mv4deploy.plan.verdict import round_up_host
from mv4deploy.plan.policy import POLICIES, resolve_policy
from mv4deploy.plan.tiers import MemoryKind, Tier, TierKind, build_machine
from mv4deploy.plan.workload import ExpertSkew, make_workload
from mv4deploy.plan.workspace import workspace

GiB = 2**30


@pytest.fixture(scope="module")
def flash():
    return resolve_model("deepseek-v4-flash")


@pytest.fixture(scope="module")
def flash_groups(flash):
    return build_groups(flash.inventory)


def by_name(grouping, name):
    return next(g for g in grouping.groups if g.name == name)


# ---- workload ---------------------------------------------------------------------------------------

def test_workload_parses_token_counts():
    w = make_workload("128k", "4", "8k")
    assert (w.context_tokens, w.batch, w.prefill_chunk) == (131072, 4, 8192)   # k = 1024 tokens
    assert parse_tokens("1m") == 1048576
    assert make_workload(1000, 1, 4096).chunk_tokens == 1000                    # chunk clamped to the context


@pytest.mark.parametrize("kwargs, field", [
    ({"context": -5}, "--context"), ({"context": "0"}, "--context"), ({"batch": 0}, "--batch"),
    ({"batch": "two"}, "--batch"), ({"prefill_chunk": "1.5"}, "--prefill-chunk"),
    ({"expert_skew": "0.5:0.3"}, "--expert-skew"), ({"context": "12q"}, "--context"),
])
def test_workload_rejects_bad_input_naming_the_option(kwargs, field):
    with pytest.raises(InputError) as err:
        make_workload(**kwargs)
    assert err.value.field == field
    assert "\n" not in err.value.one_line()


def test_latency_units():
    assert parse_seconds("10us") == 1e-5
    assert parse_seconds("0.08ms") == pytest.approx(8e-5)
    with pytest.raises(ValueError):
        parse_seconds("10")                                 # a latency must carry its unit


# ---- groups -----------------------------------------------------------------------------------------

def test_routed_expert_group_bytes_and_access(flash_groups):
    g = by_name(flash_groups, "layers.3.routed_experts")
    # one expert: w1, w3 [2048, 4096] and w2 [4096, 2048] in MXFP4:
    #   payload 2048*4096/2 = 4,194,304 B + UE8M0 scales 2048*4096/32 = 262,144 B = 4,456,448 B per matrix
    #   x 3 = 13,369,344 B; 256 experts = 3,422,552,064 B per layer
    assert g.experts == 256 and g.native_bytes == 256 * 3 * 4_456_448 == 3_422_552_064
    assert g.expert_probability == 6 / 256                    # top-6 of 256
    assert g.touched_fraction(1) == pytest.approx(6 / 256)
    assert g.touched_fraction(4) == pytest.approx(1 - (250 / 256) ** 4)
    # INT4 with a BF16 scale per 128: 2048*4096/2 + 2048*(4096/128)*2 + 16 (weight_shape) = 4,325,392 per matrix
    int4 = POLICIES["int4-experts"].target
    assert g.resident_bytes(int4) == 256 * 3 * 4_325_392


def test_embedding_reads_one_row_per_token(flash_groups):
    g = by_name(flash_groups, "embedding")
    assert g.native_bytes == 129280 * 4096 * 2                # BF16 [vocab, hidden]
    assert g.touched_fraction(1) == pytest.approx(1 / 129280)
    assert g.flops_per_token == 0


def test_a_tied_embedding_is_read_whole_as_the_head(tmp_path):
    """With tie_word_embeddings the embedding is the head too (Qwen2.5-0.5B): every step reads all of it for the
    logits, so it is no longer read one row per token, and its FLOPs are the head's 2 x vocab x hidden."""
    config = json.loads((PRESETS_DIR / "tiny-qwen2.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))
    untied = by_name(build_groups(resolve_model("tiny-qwen2").inventory), "embedding")
    tied = by_name(build_groups(resolve_model(str(tmp_path / "config.json")).inventory), "embedding")
    assert untied.touched_fraction(1) == pytest.approx(1 / 512) and untied.flops_per_token == 0
    assert tied.native_bytes == untied.native_bytes == 512 * 128 * 2          # BF16 [vocab 512, hidden 128]
    assert tied.touched_fraction(1) == 1.0 and tied.flops_per_token == 2 * 512 * 128


def test_every_flash_tensor_is_in_one_group_or_excluded(flash, flash_groups):
    ids = [i for g in flash_groups.groups for i in g.tensor_ids] + [i for _, ids, _ in flash_groups.excluded for i in ids]
    assert sorted(ids) == list(range(len(flash.inventory.tensors)))
    # MTP excluded by default: 3.35 GiB of the 148.65 GiB checkpoint, the excluded tensors' own bytes
    assert sum(g.native_bytes for g in flash_groups.groups) == flash.inventory.checkpoint_bytes - 3_593_787_756
    assert [nbytes for _, _, nbytes in flash_groups.excluded] == [3_593_787_756]


def test_skew_splits_each_layer_into_hot_and_cold(flash):
    grouping = build_groups(flash.inventory, skew=ExpertSkew(0.2, 0.6))
    hot, cold = by_name(grouping, "layers.3.routed_experts.hot"), by_name(grouping, "layers.3.routed_experts.cold")
    # hot = round(0.2 * 256) = 51 experts take 60% of 6 routes: p = 0.6 * 6 / 51; cold: 0.4 * 6 / 205
    assert (hot.experts, cold.experts) == (51, 205)
    assert hot.expert_probability == pytest.approx(0.6 * 6 / 51)
    assert cold.expert_probability == pytest.approx(0.4 * 6 / 205)


# ---- policy -----------------------------------------------------------------------------------------

def test_auto_policy_by_device_kind_and_unknown_names():
    assert resolve_policy("auto", DeviceKind.GPU).name == "native"
    assert resolve_policy("auto", None).name == "native"                          # CPU only
    assert resolve_policy("auto", DeviceKind.NPU).name == "mobile-int4"  # phones run INT4 (MatMulNBits block 32)
    assert resolve_policy("auto", DeviceKind.NPU, Arch.QWEN2).name == "mobile-int4"
    assert resolve_policy("auto", DeviceKind.NPU, Arch.DEEPSEEK_V4).name == "int4"   # no fp32 KV layout for V4
    with pytest.raises(InputError):
        resolve_policy("int3", DeviceKind.GPU)
    with pytest.raises(InputError, match="fp32|f32") as err:
        resolve_policy("mobile-int4", DeviceKind.GPU, Arch.DEEPSEEK_V3)
    assert err.value.field == "--policy"
    assert {arch for arch in Arch if POLICIES["mobile-int4"].supports(arch)} == {Arch.QWEN2, Arch.LLAMA}


def test_a_grouping_is_reused_only_for_the_model_and_workload_it_was_built_for():
    """No module cache: callers pass a grouping along, and the planner rebuilds it when it does not serve
    (another inventory object, --mtp, a skew), so passing one never changes a plan."""
    from mv4deploy.hardware.profile import load_profile
    from mv4deploy.plan.make import make_plan
    tiny = resolve_model("tiny-deepseek-v4")
    grouping = build_groups(tiny.inventory)
    assert grouping.serves(tiny.inventory, False, None)
    assert not grouping.serves(tiny.inventory, True, None)
    assert not grouping.serves(tiny.inventory, False, ExpertSkew(0.2, 0.6))
    assert not grouping.serves(resolve_model("tiny-deepseek-v4").inventory, False, None)
    profile = load_profile("rtx5090")
    for workload in (make_workload(context=4096), make_workload(context=4096, include_mtp=True)):
        assert make_plan(tiny, profile, workload, grouping=grouping).to_json() == \
            make_plan(tiny, profile, workload).to_json()


def test_host_ram_suggestion_counts_the_reserve_once():
    """248 GiB of weights in host RAM plus a 6 GiB reserve need 254 GiB: the next size is 256 GiB. Counting
    the reserve twice (it is inside used_bytes already) would ask 260 GiB and suggest 384 GiB."""
    host = DeviceUse("host", MemoryKind.HOST, 128 * GiB,
                     {"weights": 248 * GiB, "engram": 0, "kv_cache": 0, "activations": 0, "reserve": 6 * GiB})
    plan = SimpleNamespace(devices=(host,))
    best = SimpleNamespace(placement=Placement(placed=(), unplaced=(), free_bytes={}, boundary={}))
    assert host_memory_needed(plan, best, reserve_bytes=6 * GiB) == 254 * GiB        # 248 + 6
    assert round_up_host(host_memory_needed(plan, best, 6 * GiB)) == 256 * GiB
    capped = DeviceUse("host", MemoryKind.HOST, 4 * GiB,     # --host-mem 4GiB: the reserve was capped at 4 GiB
                       {"weights": 0, "engram": 0, "kv_cache": 0, "activations": 0, "reserve": 4 * GiB})
    assert host_memory_needed(SimpleNamespace(devices=(capped,)), best, 6 * GiB) == 6 * GiB


def test_fp8_policy_leaves_fp8_weights_alone():
    fp8 = POLICIES["fp8"]
    assert fp8.target(GroupClass.ATTENTION, "fp8-e4m3-block128") == "fp8-e4m3-block128"
    assert fp8.target(GroupClass.ROUTED_EXPERTS, "mxfp4") == "fp8-e4m3-block128-ue8m0"
    assert fp8.target(GroupClass.NORMS_MHC, "bf16") == "bf16"


# ---- tiers and costs ----------------------------------------------------------------------------------

TINY_PROFILE = {
    "name": "tiny", "gpus": {"model": "t", "count": 1, "memory": "10GiB", "usable_fraction": 0.9,
                             "bandwidth": "1000GB/s", "compute": {"bf16": "100TFLOPS", "fp8": "200TFLOPS"},
                             "native_formats": ["bf16", "fp8"], "runtime_reserve": "1GiB"},
    "host": {"memory": "64GiB", "bandwidth": "100GB/s", "cores": 8, "isa": ["avx512_bf16"],
             "compute": {"bf16": "2TFLOPS"}, "reserve": "4GiB"},
    "host_link": {"bandwidth": "50GB/s", "latency": "10us"},
    "storage": {"read_bandwidth": "5GB/s", "capacity": "1TB", "random_read_iops": "1M IOPS", "latency": "100us"},
    "efficiency": {"gpu_bandwidth": 0.5, "gpu_compute": 0.5, "host_bandwidth": 0.5, "host_compute": 0.5,
                   "host_link": 1.0, "storage": 1.0},
}


def test_tiers_apply_usable_fraction_reserve_and_efficiency():
    profile = parse_profile(TINY_PROFILE, "tiny")
    machine = build_machine(profile)
    devices = {d.name: d for d in machine.devices}
    assert devices["gpu:0"].capacity_bytes == int(10 * GiB * 0.9) and devices["gpu:0"].reserve_bytes == GiB
    assert devices["host"].capacity_bytes == 64 * GiB and devices["host"].reserve_bytes == 4 * GiB
    assert build_machine(profile, host_mem_bytes=8 * GiB).devices[1].capacity_bytes == 8 * GiB   # --host-mem
    assert build_machine(profile, gpu_mem_util=0.5).devices[0].capacity_bytes == 5 * GiB          # --gpu-mem-util
    (gpu,), host = machine.gpus, machine.host
    assert gpu.bandwidth_bytes_per_s == 500e9 and gpu.compute_flops_per_s["fp8"] == 100e12   # x 0.5
    assert host.bandwidth_bytes_per_s == 50e9 and host.link_bytes_per_s == 50e9
    assert gpu.rate("fp4") == (50e12, "dequant:bf16")        # no FP4 units: weight-only dequant into BF16
    assert machine.nvme.random_read_bytes_per_s == min(5e9, 1e6 * 4096)


def test_roofline_and_the_cheaper_host_execution():
    profile = parse_profile(TINY_PROFILE, "tiny")
    machine = build_machine(profile)
    (gpu,), host = machine.gpus, machine.host
    work = Work(bytes_read=1e9, flops=1e12, compute="bf16")
    # GPU: max(1e9 / 500e9 = 2 ms, 1e12 / 50e12 = 20 ms) = 20 ms, compute bound
    cost = on_gpu(work, gpu)
    assert cost.seconds == pytest.approx(0.02) and cost.limit == "gpu:0 compute"
    # host: CPU max(1e9/50e9 = 20 ms, 1e12/1e12 = 1 s) = 1 s; stream max(1e9/50e9 = 20 ms, GPU 20 ms) = 20 ms
    # + one 10 us link latency
    streamed = on_host(work, host, gpu)
    assert streamed.mode == "stream" and streamed.seconds == pytest.approx(0.02 + 10e-6)
    # light work: CPU max(20 ms, 1 ms) + the activations' round trip 2 x (10 us + 8 KiB / 50 GB/s) beats the
    # stream's 20 ms + 10 us only when the round trip is cheaper than one latency: it is not, so stream
    light = Work(bytes_read=1e9, flops=1e9, compute="bf16")
    assert on_host(light, host, gpu, activation_bytes=8192).mode == "stream"
    assert on_host(light, host, None).mode == "cpu"              # no GPU: the CPU runs it, no hops


def test_v4_attention_flops_by_hand(flash):
    spec = flash.spec
    # layer 2 is CSA (ratio 4): per attended entry 4 * 64 heads * 512 = 131,072 FLOPs;
    # entries at t = 131,072: window 128 + top-512 of 32,768 compressed; indexer 2 * 64 * 128 * 32,768
    expected = 131_072 * (128 + 512) + 2 * 64 * 128 * 32_768
    assert attention_flops(spec, 2, 131_072) == expected
    # layer 3 is HCA (ratio 128): every compressed entry, 1,024 of them, no indexer
    assert attention_flops(spec, 3, 131_072) == 131_072 * (128 + 1024)
    # mean over a prefill: window saturates at 128 (mean 128 * (1 - 128 / (2 N))), HCA grows linearly (N / 256)
    n = 131_072
    assert mean_attention_flops(spec, 3, n) == pytest.approx(131_072 * (128 * (1 - 128 / (2 * n)) + n / 256))


def test_expert_parallel_imbalance_matches_a_count():
    # 2 balls in 2 bins: max load 2 with probability 1/2, else 1 -> E[max] = 1.5; mean load 1
    assert ep_imbalance(2, 2) == pytest.approx(1.5)
    assert ep_imbalance(6, 1) == 1.0
    assert 2.8 < ep_imbalance(6, 8) < 3.0                     # simulated: 2.903 (200k trials)


def test_workspace_of_v4_flash(flash):
    ws = workspace(flash.spec, make_workload())
    # residual: 2 copies x 2048 tokens x 4096 x hc_mult 4 x 2 B = 134,217,728
    assert ws.residual_bytes == 2 * 2048 * 4096 * 4 * 2
    # indexer logits: 2048 queries x 131072/4 keys x 4 B = 268,435,456 (bigger than the 128 MiB queries)
    assert (ws.largest_transient, ws.largest_transient_bytes) == ("indexer logits", 2048 * 32768 * 4)


# ---- placement and bound --------------------------------------------------------------------------------

def _tier(name, kind):
    return Tier(name=name, kind=kind, devices=(name,), bandwidth_bytes_per_s=1.0)


def _item(name, gpu_bytes, gpu_s, host_s, units=1, order_tiers=None):
    gpu, host = order_tiers
    return Item(name, ItemKind.WEIGHTS, GroupClass.ATTENTION, None,
                (Option(gpu, "f", gpu_bytes, Cost(gpu_s, "gpu"), Cost(0, "gpu"), gpu_s),
                 Option(host, "f", gpu_bytes, Cost(host_s, "cpu"), Cost(0, "cpu"), host_s)), units)


def test_greedy_by_density_cuts_divisible_items_and_meets_the_bound():
    gpu, host = _tier("gpu:0", TierKind.GPU), _tier("host", TierKind.HOST)
    tiers = (gpu, host)
    # densities (host - gpu seconds per GPU byte): A (5-1)/60 = 0.067, B (2-1)/50 = 0.02, C (11-1)/100 = 0.1
    items = [_item("A", 60, 1.0, 5.0, order_tiers=tiers), _item("B", 50, 1.0, 2.0, order_tiers=tiers),
             _item("C", 100, 1.0, 11.0, units=10, order_tiers=tiers)]
    capacity = {"gpu:0": 130, "host": 1000}
    placement = place(items, capacity)
    where = {p.name: p.option.tier.name for p in placement.placed}
    # C (densest) takes 100 B; A needs 60 of the 30 left: host; B needs 50: host
    assert where == {"C": "gpu:0", "A": "host", "B": "host"}
    decode = sum(p.decode_s for p in placement.placed)
    assert decode == pytest.approx(1 + 5 + 2)
    # the fractional optimum puts C whole and half of A on the GPU: 1 + (1 + 5)/2 + 2 = 6 <= 8
    bound = lower_bound(items, capacity, multipliers(placement, capacity))
    assert bound <= decode + 1e-12 and bound == pytest.approx(6.0)
    # with 95 B the divisible C is cut at a unit (10 B each): 9 units on the GPU, 1 on the host
    cut = place(items, {"gpu:0": 95, "host": 1000})
    pieces = sorted((p.name, p.option.tier.name) for p in cut.placed if p.item.name == "C")
    assert pieces == [("C[0:9]", "gpu:0"), ("C[9:10]", "host")]
    assert sum(p.decode_s for p in cut.placed if p.item.name == "C") == pytest.approx(0.9 * 1 + 0.1 * 11)


def test_a_skipped_item_that_saves_more_swaps_out_denser_pieces():
    gpu, host = _tier("gpu:0", TierKind.GPU), _tier("host", TierKind.HOST)
    tiers = (gpu, host)
    # densities: D (3-0)/30 = 0.1, M (8-0)/100 = 0.08, E (1-0)/25 = 0.04. GPU 110 B: density takes D (80 B left),
    # M (100 B) does not fit, E (25 B) does: 8 s on the host. Room for M: need 100 - 55 = 45 B; the cheapest
    # single piece that frees 45 B does not exist (D 30, E 25); least dense first: E then D, 55 B, saving 1 + 3
    # = 4 < 8: swap. M on the GPU alone: 3 + 1 = 4 s, where the greedy fill left 8 s.
    items = [_item("D", 30, 0.0, 3.0, order_tiers=tiers), _item("M", 100, 0.0, 8.0, order_tiers=tiers),
             _item("E", 25, 0.0, 1.0, order_tiers=tiers)]
    placement = place(items, {"gpu:0": 110, "host": 1000})
    where = {p.name: p.option.tier.name for p in placement.placed}
    assert where == {"D": "host", "M": "gpu:0", "E": "host"}
    assert sum(p.decode_s for p in placement.placed) == pytest.approx(4.0)
    assert placement.free_bytes["gpu:0"] == 10
    # the one cheapest piece can beat the least-dense walk: A 50 B saves 4 (0.08), B 20 B saves 1.8 (0.09),
    # X 40 B saves 3 (0.075); GPU 95 B: B, A (25 B left), X skipped: 3 s. Room for X needs 15 B: the walk
    # frees A (saves 4 >= 3: no), the single cheapest piece of >= 15 B is B (1.8 < 3): X in, B out: 1.8 s
    pair = [_item("A", 50, 0.0, 4.0, order_tiers=tiers), _item("B", 20, 0.0, 1.8, order_tiers=tiers),
            _item("X", 40, 0.0, 3.0, order_tiers=tiers)]
    placement = place(pair, {"gpu:0": 95, "host": 1000})
    assert {p.name: p.option.tier.name for p in placement.placed} == {"A": "gpu:0", "B": "host", "X": "gpu:0"}
    assert sum(p.decode_s for p in placement.placed) == pytest.approx(1.8)
    # an item that saves less than what it would push out stays where density put it: M saving 3 < D + E
    cheap = [items[0], _item("M", 100, 0.0, 3.0, order_tiers=tiers), items[2]]
    assert {p.name: p.option.tier.name for p in place(cheap, {"gpu:0": 110, "host": 1000}).placed} == \
        {"D": "gpu:0", "M": "host", "E": "gpu:0"}


def test_the_room_index_frees_bytes_as_the_direct_rule_does():
    """``_Room.cheapest`` (prefix sums and a suffix minimum) against the rule written out: walk the pieces least
    dense first until ``need`` bytes are free, and take instead the one piece of at least ``need`` bytes that
    saves least when it saves less than the walk (ties: the first in density order); densities and sizes
    repeat on purpose."""
    def direct(entries, need):
        here = sorted((e for e in entries if e[2].bytes), key=lambda e: e[:2])
        out, freed = [], 0
        for e in here:
            if freed >= need:
                break
            out.append(e)
            freed += e[2].bytes
        if freed < need:
            return None
        single = min((e for e in here if e[2].bytes >= need), key=_saving, default=None)
        return [single] if single is not None and _saving(single) < sum(map(_saving, out)) else out

    rng = random.Random(16)
    for _ in range(300):
        entries = [(rng.choice([0.5, 1.0, 1.5, 2.0]), order, SimpleNamespace(bytes=rng.choice([0, 10, 20, 30, 45])))
                   for order in rng.sample(range(100), rng.randint(0, 12))]
        room = _Room(entries)
        for need in (-5, 0, 1, 10, 25, 30, 46, 90, 200):
            assert room.cheapest(need) == direct(entries, need)


def test_the_swap_takes_room_freed_exactly_and_goes_on_past_items_it_cannot_take():
    gpu, host = _tier("gpu:0", TierKind.GPU), _tier("host", TierKind.HOST)
    tiers = (gpu, host)
    # densities: Z 500 B saves 100 (0.2), B 40 B saves 4 (0.1), C 15 B saves 1.125 (0.075), A 15 B saves 1.05
    # (0.07), Y 64 B saves 3.9 (0.061), X 60 B saves 3.6 (0.06). GPU 100 B: Z does not fit; B, C, A (70 B);
    # Y and X do not fit in the 30 B left. Skipped, in density order:
    # - Z: even with every piece out 100 < 500 B: no room, next;
    # - Y: needs 34 B: the one cheapest piece of >= 34 B is B (saves 4); the walk A, C, B saves 6.175: B, and
    #   4 >= 3.9: no swap, next;
    # - X: needs 30 B: only B is big enough alone (4); the walk A, C frees exactly 30 B and saves 2.175 < 3.6:
    #   A and C go down, X comes up: B + X = 100 B on the GPU.
    items = [_item("Z", 500, 0.0, 100.0, order_tiers=tiers), _item("B", 40, 0.0, 4.0, order_tiers=tiers),
             _item("C", 15, 0.0, 1.125, order_tiers=tiers), _item("A", 15, 0.0, 1.05, order_tiers=tiers),
             _item("Y", 64, 0.0, 3.9, order_tiers=tiers), _item("X", 60, 0.0, 3.6, order_tiers=tiers)]
    placement = place(items, {"gpu:0": 100, "host": 1000})
    assert {p.name for p in placement.placed if p.option.tier.name == "gpu:0"} == {"B", "X"}
    assert placement.free_bytes["gpu:0"] == 0
    assert sum(p.decode_s for p in placement.placed) == pytest.approx(100 + 1.125 + 1.05 + 3.9)
    # the cheapest single piece may free exactly what is needed: X 50 B (3.5) needs 20 = B alone (1.8),
    # where the walk (A, 50 B, saves 4) would cost more than X saves
    pair = [_item("B", 20, 0.0, 1.8, order_tiers=tiers), _item("A", 50, 0.0, 4.0, order_tiers=tiers),
            _item("X", 50, 0.0, 3.5, order_tiers=tiers)]
    assert {p.name for p in place(pair, {"gpu:0": 100, "host": 1000}).placed
            if p.option.tier.name == "gpu:0"} == {"A", "X"}
    # one byte short is short: B 40 (4), C 14 (1.05), A 15 (1.05) leave 31 B; X 61 B (3.6) needs 30; A + C free
    # 29, so the walk goes on to B (6.1 in all), and B alone saves 4 >= 3.6: X stays on the host, nothing overfills
    short = [_item("B", 40, 0.0, 4.0, order_tiers=tiers), _item("C", 14, 0.0, 1.05, order_tiers=tiers),
             _item("A", 15, 0.0, 1.05, order_tiers=tiers), _item("X", 61, 0.0, 3.6, order_tiers=tiers)]
    placement = place(short, {"gpu:0": 100, "host": 1000})
    assert {p.name: p.option.tier.name for p in placement.placed}["X"] == "host"
    assert placement.free_bytes["gpu:0"] == 31


def test_the_swap_makes_room_on_the_skipped_items_own_gpu_only():
    gpu0, gpu1, host = _tier("gpu:0", TierKind.GPU), _tier("gpu:1", TierKind.GPU), _tier("host", TierKind.HOST)
    # gpu:0 (50 B): D 30 B saves 3.5 (0.117) fits, X 40 B saves 3.2 (0.08) needs 20 more: only D can make room
    # and it saves more (3.5 >= 3.2): X stays below. P on gpu:1 (25 B, saves 0.5) is cheaper but frees nothing
    # on gpu:0.
    items = [_item("D", 30, 0.0, 3.5, order_tiers=(gpu0, host)), _item("X", 40, 0.0, 3.2, order_tiers=(gpu0, host)),
             _item("P", 25, 0.0, 0.5, order_tiers=(gpu1, host))]
    placement = place(items, {"gpu:0": 50, "gpu:1": 25, "host": 1000})
    assert {p.name: p.option.tier.name for p in placement.placed} == {"D": "gpu:0", "X": "host", "P": "gpu:1"}


@pytest.mark.parametrize("item_bytes, units, start, stop, available, fit", [
    (100, 10, 0, 10, 1000, 10),   # all of it
    (100, 10, 3, 10, 70, 7),      # units 3-9: 100 - 30 = 70 B, exactly
    (100, 10, 3, 10, 69, 6),      # 6 of them: 90 - 30 = 60 B; 7 need 70
    (10, 4, 2, 3, 2, 1),          # unit 2 of 10 B in 4: bytes [5, 7): 2 B, exactly
    (10, 3, 0, 3, 6, 2),          # units of 3, 3, 4 B: two take 6 B (a / (b / u) = 1.8 would say one)
    (10, 2, 0, 2, 5, 1),          # half of a 2-unit item
    (60, 1, 0, 1, 59, 0),         # a whole item that does not fit
    (0, 1, 0, 1, 0, 1),           # nothing takes no room
])
def test_units_that_fit_by_hand(item_bytes, units, start, stop, available, fit):
    assert _units_that_fit(item_bytes, units, start, stop, available) == fit


def test_what_fits_nowhere_is_reported_as_its_remaining_units():
    gpu, host = _tier("gpu:0", TierKind.GPU), _tier("host", TierKind.HOST)
    # C: 10 units of 10 B; the GPU takes 9 (90 of 95 B), the host nothing: C[9:10] is left, priced at its
    # last option (the host's)
    placement = place([_item("C", 100, 1.0, 11.0, units=10, order_tiers=(gpu, host))], {"gpu:0": 95, "host": 0})
    [left] = placement.unplaced
    assert (left.name, left.start, left.stop, left.option.tier.name) == ("C[9:10]", 9, 10, "host")


def test_an_item_without_a_gpu_option_does_not_stop_the_gpu_pass():
    gpu, host = _tier("gpu:0", TierKind.GPU), _tier("host", TierKind.HOST)
    host_only = Item("N", ItemKind.WEIGHTS, GroupClass.ATTENTION, None,
                     (Option(host, "f", 10, Cost(1.0, "cpu"), Cost(0, "cpu"), 1.0),))
    placement = place([host_only, _item("G", 10, 0.0, 1.0, order_tiers=(gpu, host))], {"gpu:0": 100, "host": 100})
    assert {p.name: p.option.tier.name for p in placement.placed} == {"N": "host", "G": "gpu:0"}
    # an item none of whose options is a tier with capacity has no finite bound: 0, not a guess
    assert lower_bound([host_only], {"gpu:0": 100}, {}) == 0.0


def test_nothing_fits_leaves_items_unplaced():
    gpu, host = _tier("gpu:0", TierKind.GPU), _tier("host", TierKind.HOST)
    items = [_item("A", 60, 1.0, 5.0, order_tiers=(gpu, host))]
    placement = place(items, {"gpu:0": 10, "host": 10})
    assert not placement.placed and [p.name for p in placement.unplaced] == ["A"]
    assert math.isclose(lower_bound(items, {"gpu:0": 10, "host": 10}, {}), 1.0)
