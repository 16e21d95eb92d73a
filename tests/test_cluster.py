"""Cluster plans (issue 17): cluster profiles, the layout search, its arithmetic, and launch lines that parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import pytest
import yaml

from mv4deploy.core.errors import InputError
from mv4deploy.engines.engine import StepCost, load_engine
from mv4deploy.hardware.profile import load_profile, load_profile_dict, parse_profile
from mv4deploy.model.source import resolve_model
from mv4deploy.plan.cluster import Serving, layouts, plan_cluster
from mv4deploy.plan.cluster_launch import launch_commands
from mv4deploy.plan.cluster_model import (ClusterLayout, Links, ModelShape, kv_per_gpu, links_of, step_cost,
                                          weights_per_gpu)
from mv4deploy.plan.groups import build_groups
from mv4deploy.plan.policy import resolve_policy
from mv4deploy.plan.tiers import Tier, TierKind, build_machine
from test_engine_flags import SGLANG, _check, check_sglang, check_vllm

DGD_KEYS = Path(__file__).parent / "data" / "dynamo" / "dgd_keys.txt"


def _cluster_dict(base: str, nodes: int, network: dict | None) -> dict:
    data, _ = load_profile_dict(base)
    data = dict(data, name=f"{base}-n{nodes}", nodes=nodes)
    if network is not None:
        data["network"] = network
    return data


IB = {"kind": "infiniband", "bandwidth": "400Gb/s", "latency": "5us"}


def test_shipped_cluster_profiles_parse():
    p = load_profile("h200x16")
    assert (p.nodes, p.gpus.count, p.network.kind.value) == (2, 8, "infiniband")
    assert p.network.bandwidth_bytes_per_s == 50e9            # 400 Gb/s / 8 bits
    assert load_profile("b200x32").nodes == 4 and load_profile("h200x32").nodes == 4
    assert load_profile("h200").nodes == 1 and load_profile("h200").network is None


@pytest.mark.parametrize("nodes, network, field", [
    (2, None, "network"),                                          # nodes > 1 needs a network
    (0, IB, "nodes"),
    (2, {**IB, "kind": "ethernet"}, "network.kind"),
    (2, {**IB, "bandwidth": "fast"}, "network.bandwidth"),
    (2, {**IB, "speed": "1us"}, "network.speed"),                 # unknown key
])
def test_bad_cluster_profiles_name_the_field(nodes, network, field):
    with pytest.raises(InputError) as err:
        parse_profile(_cluster_dict("h100", nodes, network), "x.yaml")
    assert err.value.field == field


def test_a_bad_cluster_profile_exits_2(cli, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_cluster_dict("h100", 2, None)))
    done = cli("plan", "--profile", str(path), "--model", "tiny-deepseek-v3", "--json")
    assert done.code == 2 and "network" in done.stderr and not done.stdout


def _plan(model: str, profile, serving: Serving, engine: str = "sglang"):
    resolved = resolve_model(model)
    machine = build_machine(profile, engine=load_engine(engine))
    policy = resolve_policy("auto", machine.device_kind, resolved.spec.architecture)
    return plan_cluster(resolved, profile, serving, build_groups(resolved.inventory), machine, policy)


def _h100_nodes(nodes: int):
    """``nodes`` HGX H100 nodes: eight H100 80 GB per node on NVLink (a synthetic profile from h100.yaml)."""
    gpus = {**load_profile_dict("h100")[0]["gpus"], "count": 8}
    data = _cluster_dict("h100", nodes, IB if nodes > 1 else None)
    return parse_profile({**data, "gpus": gpus, "interconnect": {"kind": "nvlink", "bandwidth": "450GB/s"}},
                         f"h100x{8 * nodes}")


def test_v4_pro_fits_on_two_h100_nodes_not_one():
    # V4-Pro's weights are ~805 GiB as shipped: 8 x 79.6 GiB x 0.97 = 618 GiB cannot hold them, 16 GPUs can.
    one, two = _h100_nodes(1), _h100_nodes(2)
    serving = Serving(1000, 200)
    assert _plan("deepseek-v4-pro", one, serving).verdict == "does_not_fit"
    plan = _plan("deepseek-v4-pro", two, serving)
    assert plan.verdict == "fits" and plan.chosen.memory_per_gpu_bytes <= 79.6 * 2**30 * 0.97
    assert plan.search_s < 1.0


def test_layouts_respect_nodes_and_engine():
    found = layouts(16, 8, frozenset({"pipeline", "tensor", "tensor_expert", "dp_attention"}))
    assert all(l.tp <= 8 and 16 % l.gpus == 0 for l in found)
    assert ClusterLayout(1, 16, 1, "ep") in found and ClusterLayout(8, 1, 2, "tp") in found
    assert not any(l.dp > 1 and l.moe == "tp" for l in found)
    assert all(l.dp == 1 and l.moe == "tp" for l in layouts(16, 8, frozenset({"pipeline", "tensor"})))


class _KV:
    pools = ()
    fixed_bytes_per_sequence = 10**6                                 # read whole by every decode step

    def bytes(self, context_tokens, sequences=1):
        return 10**6 * sequences


def test_a_decode_step_by_hand():
    shape = ModelShape(SimpleNamespace(hidden_size=1000, hc_mult=1, num_key_value_heads=1, num_attention_heads=128,
                                     layer_family="deepseek"),
                       layers=2, moe_layers=2,
                       dense_bytes=4 * 10**9, dense_flops=0.0, dense_compute="bf16", expert_bytes=8 * 10**9,
                       expert_flops=0.0, expert_compute="bf16", experts=8, top_k=2, edge_bytes=0, head_bytes=0,
                       head_flops=0.0, table_bytes=0, kv=_KV(), _attention={(1000, False): 0.0})
    gpu = Tier("gpu:0", TierKind.GPU, ("gpu:0",), 1e12, MappingProxyType({"bf16": 1e15}), frozenset({"bf16"}))
    links = Links(8, {"all_reduce": (1e-5, 1e11), "all_to_all": (2e-5, 1e11)},
                  {"all_reduce": (5e-5, 5e10), "all_to_all": (6e-5, 4e10)}, (5e-6, 5e10))
    cost = step_cost(shape, ClusterLayout(2, 1, 1, "ep"), gpu, links, StepCost(per_layer_s=1e-4), 4, 1000, False)
    # dense 4e9 B / tp 2 / 1e12 B/s = 2 ms; KV 4 seqs x 1e6 B = 4 us; experts: T = 4 tokens, touched
    # 1 - (6/8)^4 = 0.68359375; 8 uses on 2 GPUs: E[max] = (4*70 + 5*112 + 6*56 + 7*16 + 8*2)/256 = 5.09375, u = 1.2734375;
    # busiest GPU reads min(4e9, u x 4e9 x 0.68359375) = 3.4820556640625e9 B = 3.48205566 ms
    assert cost.by_resource["HBM"] == pytest.approx(2e-3 + 4e-6 + 3.4820556640625e-3, rel=1e-9)
    # all-reduce per layer 2 x (1/2) x 4 x 1000 x 2 B = 8000 B: 10 us + 0.08 us, x 2 layers = 20.16 us; EP per layer
    # dispatch 4/2 x 2 x 1000 x 1/2 = 2000 B (FP8): 20.02 us, combine 4000 B: 20.04 us, x 2 layers = 80.12 us
    assert cost.by_resource["NVLink"] == pytest.approx(20.16e-6 + 80.12e-6, rel=1e-9)
    assert cost.by_resource["per-layer fixed cost"] == pytest.approx(2e-4)       # 100 us x 2 layers
    assert cost.stage_s == pytest.approx(5.4860556640625e-3 + 100.28e-6 + 2e-4, rel=1e-9) and cost.crossing_s == 0
    # memory: dense 4e9 / 2 + experts 8e9 / 2 = 6e9 B; KV: one head, replicated on both TP ranks: 3 seqs x 1e6 B
    assert weights_per_gpu(shape, ClusterLayout(2, 1, 1, "ep")) == 6e9
    assert kv_per_gpu(shape, ClusterLayout(2, 1, 1, "ep"), 3, 1000) == 3e6


def test_dp_attention_with_the_moe_split_by_columns_gathers_the_tokens_first():
    """tp 2 x dp 2 over 4 GPUs, MoE split over all 4, 3 sequences per DP rank (T = 6 tokens), 2 MoE layers:
    attention all-reduce over 2 GPUs, 2 x (1/2) x 3 x 1000 x 2 B = 6000 B: 10.06 us per layer; the MoE's
    tokens gathered to all 4, (3/4) x 6 x 1000 x 2 B = 9000 B at the all-gather's 15 us: 15.09 us, and its sums
    scattered back, 9000 B at the reduce-scatter's 13 us: 13.09 us. Without DP-attention (tp 4, 6 sequences)
    the MoE's all-reduce over 4 carries 2 x 9000 B: 10.18 us, as does the attention all-reduce over 4."""
    shape = ModelShape(SimpleNamespace(hidden_size=1000, hc_mult=1, num_key_value_heads=1, num_attention_heads=128,
                                     layer_family="deepseek"),
                       layers=2, moe_layers=2, dense_bytes=0, dense_flops=0.0, dense_compute="bf16", expert_bytes=0,
                       expert_flops=0.0, expert_compute="bf16", experts=8, top_k=2, edge_bytes=0, head_bytes=0,
                       head_flops=0.0, table_bytes=0, kv=_KV(), _attention={(1000, False): 0.0})
    gpu = Tier("gpu:0", TierKind.GPU, ("gpu:0",), 1e12, MappingProxyType({"bf16": 1e15}), frozenset({"bf16"}))
    links = Links(8, {"all_reduce": (1e-5, 1e11), "all_to_all": (2e-5, 1e11), "all_gather": (1.5e-5, 1e11),
                      "reduce_scatter": (1.3e-5, 1e11)},
                  {"all_reduce": (5e-5, 5e10), "all_to_all": (6e-5, 4e10)}, (5e-6, 5e10))
    dp = step_cost(shape, ClusterLayout(2, 2, 1, "tp"), gpu, links, StepCost(), 3, 1000, False)
    assert dp.by_resource["NVLink"] == pytest.approx(2 * (10.06e-6 + 15.09e-6 + 13.09e-6), rel=1e-9)
    tp = step_cost(shape, ClusterLayout(4, 1, 1, "tp"), gpu, links, StepCost(), 6, 1000, False)
    assert tp.by_resource["NVLink"] == pytest.approx(2 * (10.18e-6 + 10.18e-6), rel=1e-9)


def test_links_take_the_engine_figures_and_its_all_reduce_where_it_gives_no_gather():
    """SGLang gives NCCL's all-gather and reduce-scatter (DP-attention); vLLM gives none, so its all-reduce
    stands in: h200x16's NVLink is 450 GB/s per direction."""
    profile = load_profile("h200x16")
    sglang, vllm = links_of(profile, load_engine("sglang")), links_of(profile, load_engine("vllm"))
    assert sglang.nvlink["all_reduce"] == pytest.approx((4.2e-6, 450e9 * 0.33))
    assert sglang.nvlink["all_gather"] == pytest.approx((15.5e-6, 450e9 * 0.27))
    assert sglang.nvlink["reduce_scatter"] == pytest.approx((13.3e-6, 450e9 * 0.29))
    assert vllm.nvlink["all_gather"] == vllm.nvlink["reduce_scatter"] == vllm.nvlink["all_reduce"] == \
        pytest.approx((5.7e-6, 450e9 * 0.33))


@pytest.mark.parametrize("heads, kv_heads, tp, padding", [
    (128, 1, 1, 1.0), (128, 1, 2, 1.0),      # 128 / 64 rows per rank: whole tiles
    (128, 1, 8, 4.0),                        # 16 rows in a 64-row tile: 4x the work its heads need
    (64, 1, 4, 4.0), (64, 1, 8, 8.0),        # Kimi-K2 / V4-Flash's 64 heads: 16 and 8 rows
    (128, 1, 3, 64 / 42),                    # 42 rows (128 // 3) in one 64-row tile
    (32, 8, 8, 1.0),                         # several KV heads (GQA): no packing into one tile
])
def test_decode_tile_padding(heads, kv_heads, tp, padding):
    shape = ModelShape(SimpleNamespace(num_attention_heads=heads, num_key_value_heads=kv_heads, layer_family="deepseek"), 1, 0, 0, 0.0, "bf16",
                       0, 0.0, "bf16", 0, 0, 0, 0, 0.0, 0, _KV())
    assert shape.decode_tile_padding(tp) == pytest.approx(padding)


def test_tensor_parallel_decode_attention_pays_the_empty_rows():
    # 1e12 attention FLOPs per token (both layers), 4 sequences: at tp 2 (64 rows, full tile) 4e12 / 2 = 2e12 FLOPs
    # = 2 ms at 1e15; at tp 8 (16 rows) 4e12 / 8 x 4 = 2e12: the same 2 ms; a prefill fills the tiles: 4e12 / 8
    spec = SimpleNamespace(hidden_size=1000, hc_mult=1, num_key_value_heads=1, num_attention_heads=128,
                                     layer_family="deepseek")
    shape = ModelShape(spec, 2, 0, 0, 0.0, "bf16", 0, 0.0, "bf16", 0, 0, 0, 0, 0.0, 0, _KV(),
                       _attention={(1000, False): 1e12, (1000, True): 1e12})
    gpu = Tier("gpu:0", TierKind.GPU, ("gpu:0",), 1e18, MappingProxyType({"bf16": 1e15}), frozenset({"bf16"}))
    links = Links(8, {"all_reduce": (0.0, 1e30), "all_to_all": (0.0, 1e30)},
                  {"all_reduce": (0.0, 1e30), "all_to_all": (0.0, 1e30)}, (0.0, 1e30))
    def compute_s(tp, prefill):
        return step_cost(shape, ClusterLayout(tp, 1, 1, "tp"), gpu, links, StepCost(), 4, 1000, prefill) \
            .by_resource["compute"]
    assert compute_s(2, False) == pytest.approx(2e-3) and compute_s(8, False) == pytest.approx(2e-3)
    assert compute_s(8, True) == pytest.approx(0.5e-3)


def _commands(plan, model: str, gpus_per_node: int) -> dict:
    return launch_commands(plan.to_json(), f"/m/{model}", gpus_per_node, 5000)


ENV = re.compile(r"^(?:[A-Z0-9_]+=\S*\s+)+")


def _check_dynamo(text: str) -> None:
    allowed = {line for line in DGD_KEYS.read_text().splitlines() if line and not line.startswith("#")}
    doc = yaml.safe_load(text)

    def paths(node, prefix=""):
        for key, value in node.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict):
                yield from paths(value, f"{path}.")
            else:
                yield path
    for path in paths(doc):
        assert re.sub(r"^spec\.services\.[^.]+\.", "spec.services.*.", path) in allowed, path
    for service in doc["spec"]["services"].values():
        container = service["extraPodSpec"]["mainContainer"]
        if "args" in container:
            _check(container["args"], SGLANG, " ".join(container["args"]))


@pytest.mark.parametrize("model, profile, serving", [
    ("deepseek-v3", "h200x32", Serving(4000, 1000, ttft_s=1.0, tpot_s=0.04)),
    ("deepseek-v3", "h200x16", Serving(4000, 1000, concurrency=64)),
    ("deepseek-v4-flash", "b200x32", Serving(2000, 500, tpot_s=0.02)),
    ("deepseek-v3", str(Path(__file__).parents[1] / "benchmarks/data/profiles/h200x8.yaml"), Serving(1000, 100)),
])
def test_every_emitted_command_parses(model, profile, serving):
    hardware = load_profile(profile)
    plan = _plan(model, hardware, serving)
    for option in plan.options:                         # the chosen layout and its runners-up
        commands = launch_commands({"workers": [w.to_json() for w in option.workers]}, f"/m/{model}",
                                   hardware.gpus.count, 5000)
        for c in commands["vllm"]:
            line = ENV.sub("", c["command"])
            if line.startswith("ray start"):
                assert re.fullmatch(r"ray start (--head --port \d+|--address NODE\d+:\d+)", line), line
            else:
                check_vllm(line)
        for c in commands["sglang"]:
            check_sglang(c["command"])
        nodes = {c["node"] for c in commands["sglang"]}
        assert nodes <= set(range(hardware.nodes)) and len(nodes) * hardware.gpus.count >= option.gpus_used
        _check_dynamo(commands["dynamo"])


def test_multi_node_lines_name_every_rank():
    # DP-attention over 2 nodes: vLLM's second node is headless and starts at rank 8; SGLang's ranks are 0 and 1
    worker = {"role": "both", "tp": 1, "dp": 16, "ep": 16, "pp": 1, "moe": "ep", "batch": 8, "workers": 1, "gpus": 16}
    commands = launch_commands({"workers": [worker]}, "/m", 8, 4096)
    second = shlex.split(commands["vllm"][1]["command"])
    assert second[second.index("--data-parallel-start-rank") + 1] == "8" and "--headless" in second
    assert "--headless" not in commands["vllm"][0]["command"]
    ranks = [shlex.split(c["command"]) for c in commands["sglang"]]
    assert [r[r.index("--node-rank") + 1] for r in ranks] == ["0", "1"]
    assert all(r[r.index("--nnodes") + 1] == "2" and r[r.index("--tp-size") + 1] == "16" for r in ranks)


def test_cluster_json_only_when_asked(cli):
    done = cli("plan", "--profile", "h200x16", "--model", "tiny-deepseek-v3", "--json", "--input-tokens", "512",
               "--output-tokens", "64", "--tpot-ms", "50")
    assert done.code == 0, done.stderr
    cluster = done.json()["cluster"]
    assert cluster["gpus"] == 16 and cluster["mode"] in ("agg", "disagg") and cluster["commands"]["sglang"]
    assert cluster["tpot_s"] <= 0.05 and cluster["serving"]["tpot_s_target"] == 0.05
    bad = cli("plan", "--profile", "h200x16", "--model", "tiny-deepseek-v3", "--ttft-ms", "-1")
    assert bad.code == 2 and "--ttft-ms" in bad.stderr
