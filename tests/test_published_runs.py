"""benchmarks/published_runs.py's plumbing: constants set by dotted path, a run's own graph, a run's own layout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from published_runs import Predictor, get_field, load_inputs, set_field  # noqa: E402

from mv4deploy.engines.engine import CpuKernels, load_engine  # noqa: E402
from mv4deploy.hardware.profile import load_profile  # noqa: E402
from mv4deploy.model.kv import kv_layout  # noqa: E402
from mv4deploy.model.source import resolve_model  # noqa: E402
from mv4deploy.plan.assemble import assemble_plan  # noqa: E402
from mv4deploy.plan.cluster_model import ClusterLayout, links_of, shape_of, step_cost  # noqa: E402
from mv4deploy.plan.policy import resolve_policy  # noqa: E402
from mv4deploy.plan.tiers import build_machine  # noqa: E402
from mv4deploy.plan.workload import make_workload  # noqa: E402


def test_constants_by_dotted_path():
    llama = load_engine("llama.cpp")
    edited = set_field(llama, "step.graph.nodes_per_layer.deepseek_v4", 753)
    assert get_field(edited, "step.graph.nodes_per_layer.deepseek_v4") == 753
    assert get_field(edited, "step.graph.nodes_per_layer.deepseek_v3") == 82          # the rest as shipped
    assert get_field(llama, "step.graph.nodes_per_layer.deepseek_v4") == 205          # the original untouched
    assert get_field(set_field(llama, "step.graph.gpu_node_s", 1e-6), "step.graph.gpu_node_s") == 1e-6
    halved = set_field(llama, "cpu_efficiency", 0.5)
    assert set(halved.cpu_efficiency) == set(CpuKernels) and get_field(halved, "cpu_efficiency") == 0.5


def test_every_check_names_inputs_that_exist():
    spec, profiles, runs = load_inputs()
    for check in spec["checks"]:
        assert check["run"] in runs and check["engine"] in {"vllm", "sglang", "ktransformers", "llama.cpp"}
        assert check["machine"] in profiles or load_profile(check["machine"])
    assert {c["run"] for c in spec["checks"] if "layout" in c} == {"D02", "D03"}


def test_a_runs_graph_and_layout_are_the_ones_it_ran():
    """B16's build had 753 nodes per layer: more nodes, a slower token than the shipped 205. D02's DP-attention
    layout is priced by the cluster model's step, one sequence per DP rank, not by the TP 8 planner; D03's two
    pipeline stages on two nodes by two stage steps and the crossing between them."""
    predictor = Predictor({})
    b16 = {"model": "tiny-deepseek-v4", "machine": "rtx3090x8", "engine": "llama.cpp", "policy": "native",
           "context": 128}
    _, profiles, _ = load_inputs()
    predictor.profiles.update(profiles)
    llama = load_engine("llama.cpp")
    shipped = predictor.decode(b16, llama)
    older = predictor.decode({**b16, "graph_nodes": {"deepseek_v4": 753}}, llama)
    layers = resolve_model("tiny-deepseek-v4").spec.num_hidden_layers
    assert 1 / older - 1 / shipped == pytest.approx(layers * (753 - 205) * 3.0e-6, rel=1e-6)

    sglang = load_engine("sglang")
    d02 = {"model": "tiny-deepseek-v3", "machine": "b200x8", "engine": "sglang", "policy": "native", "context": 333}
    tp8 = predictor.decode(d02, sglang)
    dp = predictor.decode({**d02, "layout": {"tp": 2, "dp": 4, "moe": "tp"}}, sglang)
    cost = _cluster_step(load_profile("b200x8"), sglang, ClusterLayout(2, 4, 1, "tp"), 333)
    assert dp == pytest.approx(1 / cost.stage_s, rel=1e-12) and dp != pytest.approx(tp8, rel=1e-3)

    vllm = load_engine("vllm")
    d03 = {"model": "tiny-deepseek-v3", "machine": "h800x16", "engine": "vllm", "policy": "native", "context": 1256,
           "layout": {"tp": 8, "pp": 2, "moe": "tp"}}
    pipelined = predictor.decode(d03, vllm)
    cost = _cluster_step(profiles["h800x16"], vllm, ClusterLayout(8, 1, 2, "tp"), 1256)
    assert cost.crossing_s > 0
    assert pipelined == pytest.approx(1 / (2 * cost.stage_s + cost.crossing_s), rel=1e-12)


def _cluster_step(profile, engine, layout: ClusterLayout, context: int):
    """The cluster model's decode step of tiny V3 on ``profile`` in ``layout``, one sequence per DP rank."""
    model = resolve_model("tiny-deepseek-v3")
    _, _, grouping = assemble_plan(model, profile, make_workload(context, 1), "native", quick=True, engine=engine)
    machine = build_machine(profile, engine=engine)
    policy = resolve_policy("native", machine.device_kind, model.spec.architecture)
    return step_cost(shape_of(model.spec, grouping, kv_layout(model.spec, policy.kv_cache)), layout,
                     machine.gpus[0], links_of(profile, engine), machine.overhead, 1, context, prefill=False)
