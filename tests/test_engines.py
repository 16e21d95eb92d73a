"""Engine models (engines/*.yaml): the schema, every hardware gate, and each engine term in the cost model,
against hand-worked values (the arithmetic beside each expected number)."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest

from mv4deploy.core.errors import InputError
from mv4deploy.engines.engine import CpuKernels, Engine, StepCost, capability, list_engines, load_engine, parse_engine
from mv4deploy.hardware.profile import load_profile, parse_profile
from mv4deploy.model.kv import CacheFormat, KVLayout, KVPool
from mv4deploy.model.source import resolve_model
from mv4deploy.plan.costs import Work, graph_overhead_s, on_gpu, on_host
from mv4deploy.plan.gates import format_gates, machine_gates
from mv4deploy.plan.make import make_plan
from mv4deploy.plan.multigpu import Layout, Mode, crossing_s
from mv4deploy.plan.tiers import Tier, TierKind, build_machine
from mv4deploy.plan.workload import make_workload

GB = 1e9


def gpu_profile(cc: str = "9.0", count: int = 1, kind: str = "gpu", nvlink: bool = False) -> dict:
    data = {"name": f"sm{cc}", "description": "test",
            "gpus": {"kind": kind, "model": f"GPU {cc}", "count": count, "memory": "80GiB", "usable_fraction": 0.9,
                     "bandwidth": "1000GB/s", "compute": {"bf16": "100TFLOPS"}, "native_formats": ["bf16"],
                     "compute_capability": cc},
            "host": {"memory": "512GiB", "bandwidth": "100GB/s", "cores": 16, "isa": ["avx2", "avx512f", "avx512_bf16"],
                     "compute": {"bf16": "1TFLOPS"}},
            "host_link": {"pcie_gen": 5, "lanes": 16, "bandwidth": "50GB/s", "latency": "10us"},
            "efficiency": {"gpu_bandwidth": 1.0, "gpu_compute": 1.0, "host_bandwidth": 1.0, "host_compute": 1.0,
                           "host_link": 1.0}}
    if nvlink:
        data["interconnect"] = {"kind": "nvlink", "p2p": True, "bandwidth": "400GB/s", "latency": "5us"}
    return parse_profile(data, "test")


def cpu_profile():
    data = {"name": "cpu", "description": "test", "host": {"memory": "512GiB", "bandwidth": "100GB/s", "cores": 16,
                                                             "isa": ["avx2"], "compute": {"fp32": "1TFLOPS"}}}
    return parse_profile(data, "test")


# ---- the data -----------------------------------------------------------------------------------------

def test_every_shipped_engine_parses_with_its_gates():
    assert list_engines() == ["accelerate", "ik_llama.cpp", "ktransformers", "llama.cpp", "mv4deploy", "sglang",
                              "vllm"]
    for name in list_engines():
        engine = load_engine(name)
        assert engine.name == name and engine.summary
    vllm = load_engine("vllm")
    assert vllm.architectures["deepseek_v4"].cc_in == ("9.0", "10.0")
    assert vllm.streams_weights and not vllm.cpu_execution and not vllm.reads_nvme
    assert load_engine("ktransformers").cpu_execution and not load_engine("ktransformers").streams_weights
    assert "deepseek_v41" not in vllm.architectures          # no serving engine runs V4.1's Engram
    assert load_engine("ktransformers").collectives == load_engine("sglang").collectives     # collectives_of


GRAPH = {"nodes_per_layer": {"deepseek_v3": 80}, "cpu_node": "1us", "cpu_node_per_thread": "0.25us", "gpu_node": "2us"}


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.update(speed=1), "speed"),
    (lambda d: d["gates"].update(min_cc="eight"), "gates.min_cc"),
    (lambda d: d.update(collectives={"nvlink": {"broadcast": {"latency": "1us", "bandwidth_fraction": 1}}}),
     "collectives.nvlink.broadcast"),
    (lambda d: d.update(collectives={"ethernet": {}}), "collectives.ethernet"),
    (lambda d: d.update(gpu_efficiency={"fp8": 1.5}), "gpu_efficiency.fp8"),
    (lambda d: d["runs"].pop("cpu_execution"), "runs.cpu_execution"),
    (lambda d: d.update(step={"graph": {**GRAPH, "nodes_per_layer": {"deepseek_v3": 0}}}),
     "step.graph.nodes_per_layer.deepseek_v3"),
    (lambda d: d.update(step={"graph": {k: v for k, v in GRAPH.items() if k != "gpu_node"}}), "step.graph.gpu_node"),
    (lambda d: d.update(step={"graph": {**GRAPH, "cpu_node": "1"}}), "step.graph.cpu_node"),
    (lambda d: d.update(collectives_of="sglang", collectives={"nvlink": {}}), "collectives_of"),
    (lambda d: d.update(collectives_of="nccl"), "engine"),
    (lambda d: d.update(step={"per_layer": {"deepseek": "90us"}}), "step.per_layer.dense"),
    (lambda d: d.update(step={"per_layer": {"deepseek": "90us", "dense": "30us", "mamba": "1us"}}),
     "step.per_layer.mamba"),
    (lambda d: d.update(step={"per_step_multi_gpu": "1"}), "step.per_step_multi_gpu"),
])
def test_a_bad_engine_file_names_the_field(edit, field):
    data = {"name": "x", "version": "1", "summary": "s",
            "gates": {"needs_gpu": True, "architectures": {"deepseek_v3": {}}},
            "runs": {"layouts": ["single"], "cpu_execution": False, "streams_weights": False, "reads_nvme": False}}
    parse_engine(data, "x.yaml")
    edit(data)
    with pytest.raises(InputError) as err:
        parse_engine(data, "x.yaml")
    assert field in str(err.value)


def test_compute_capabilities_compare_as_numbers():
    assert capability("12.0") > capability("10.0") > capability("9.0") > capability("8.9")   # "12.0" < "9.0" as text


# ---- hardware gates -----------------------------------------------------------------------------------

def test_vllm_serves_v4_only_on_sm90_and_sm100():
    vllm = load_engine("vllm")
    (why,) = machine_gates(vllm, load_profile("rtx5090"), "deepseek_v4")
    assert "SM90, SM100" in why and "SM120" in why
    assert machine_gates(vllm, load_profile("h200"), "deepseek_v4") == []
    assert machine_gates(vllm, load_profile("b200"), "deepseek_v4") == []
    assert machine_gates(vllm, load_profile("rtx5090"), "deepseek_v3") == []      # V3 runs anywhere from 7.0


def test_v32_indexer_needs_hopper_or_blackwell_in_vllm():
    (why,) = machine_gates(load_engine("vllm"), load_profile("rtx4090x2"), "deepseek_v32")
    assert "SM89" in why and "DeepGEMM" in why


def test_engine_floor_kinds_and_architectures():
    assert "compute capability >= 7.0" in machine_gates(load_engine("vllm"), gpu_profile("6.1"), "deepseek_v3")[0]
    assert "needs a CUDA GPU" in machine_gates(load_engine("ktransformers"), cpu_profile(), "deepseek_v3")[0]
    assert machine_gates(load_engine("llama.cpp"), cpu_profile(), "deepseek_v3") == []
    assert "does not drive an NPU" in machine_gates(load_engine("llama.cpp"),
                                                    load_profile("snapdragon-8-elite-gen5"), "qwen2")[0]
    assert "does not serve deepseek_v4" in machine_gates(load_engine("ik_llama.cpp"), cpu_profile(), "deepseek_v4")[0]


def test_format_gates():
    vllm, hopper, ampere = load_engine("vllm"), gpu_profile("9.0"), gpu_profile("8.6")
    assert "nvfp4 weights need compute capability >= 10.0" in format_gates(vllm, hopper, {"nvfp4": "fp4"}, None)[0]
    assert format_gates(vllm, gpu_profile("10.0"), {"nvfp4": "fp4"}, "fp8") == []
    assert "cannot load nvfp4" in format_gates(load_engine("llama.cpp"), hopper, {"nvfp4": "fp4"}, None)[0]
    assert "fp8 KV cache needs compute capability >= 8.9" in format_gates(vllm, ampere, {}, "fp8")[0]
    # FP8 weights on Ampere: vLLM dequantizes weight-only (Marlin); an engine that does not, refuses
    assert format_gates(vllm, ampere, {"fp8-e4m3-block128": "fp8"}, None) == []
    strict = replace(vllm, weight_only=False)
    assert "runs fp8 only natively" in format_gates(strict, ampere, {"fp8-e4m3-block128": "fp8"}, None)[0]


# ---- the planner with an engine -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def flash():
    return resolve_model("deepseek-v4-flash")


def test_a_named_engine_the_gates_refuse_does_not_fit_and_gets_no_launch_line(flash):
    plan = make_plan(flash, load_profile("rtx5090"), make_workload(context=8192), engine="vllm", suggest=False)
    assert plan.verdict.value == "does_not_fit" and plan.engine.name == "vllm"
    assert any("SM120" in w for w in plan.warnings)
    assert plan.hints.vllm is None and plan.hints.sglang is None


def test_auto_picks_an_engine_the_hardware_supports(flash):
    plan = make_plan(flash, load_profile("rtx5090"), make_workload(context=8192), suggest=False)
    assert plan.engine.name in {"ktransformers", "llama.cpp"}       # the engines that run experts on the CPU
    assert {r.engine for r in plan.engine.refused} >= {"vllm", "sglang"}
    assert plan.hints.vllm is None                                 # refused: no launch line
    assert "--kt-num-gpu-experts" in plan.hints.sglang             # sglang-kt is KTransformers' launcher
    weighed = {w.engine: w.decode_tokens_per_s for w in plan.engine.weighed}
    assert weighed[plan.engine.name] == max(weighed.values()) == plan.estimates.decode_tokens_per_s
    assert weighed["accelerate"] < weighed["ktransformers"]        # it moves whole modules over PCIe


def test_nvfp4_on_hopper_is_refused_by_every_engine(flash):
    plan = make_plan(flash, load_profile("h200"), make_workload(context=8192), "nvfp4", engine="vllm", suggest=False)
    assert plan.verdict.value == "does_not_fit"
    assert any("nvfp4 weights need compute capability >= 10.0" in w for w in plan.warnings)


def test_the_phone_falls_back_to_mv4deploys_own_runtime():
    plan = make_plan(resolve_model("deepseek-r1-distill-qwen-7b"), load_profile("snapdragon-8-elite-gen5"),
                     make_workload(context=2048), suggest=False)
    assert plan.engine.name == "mv4deploy" and len(plan.engine.refused) == 6


def test_per_layer_cost_adds_exactly_layers_times_it():
    tiny = resolve_model("tiny-deepseek-v3")
    base = replace(load_engine("vllm"), step=StepCost())
    slow = replace(base, step=StepCost(per_layer_s=1e-3))
    profile, workload = gpu_profile(), make_workload(context=256)
    a = make_plan(tiny, profile, workload, engine=base, suggest=False).estimates
    b = make_plan(tiny, profile, workload, engine=slow, suggest=False).estimates
    layers = tiny.spec.num_hidden_layers                             # tiny-deepseek-v3: 2 decoder layers
    assert 1 / b.decode_tokens_per_s - 1 / a.decode_tokens_per_s == pytest.approx(layers * 1e-3, rel=1e-9)


@pytest.mark.parametrize("model, family", [("tiny-deepseek-v3", "deepseek"), ("tiny-llama", "dense")])
def test_each_layer_family_pays_its_own_floor(model, family):
    """vLLM's floor per layer is by what the layer is: an MLA + MoE layer 220 us, a GQA + MLP layer 36 us (what
    AIConfigurator's kernels take beyond our roofline, benchmarks/engine_floors.py). Raising one family's floor
    by 1 ms moves only that family's plans, by layers x 1 ms."""
    vllm = load_engine("vllm")
    assert (vllm.step.layer_s("deepseek"), vllm.step.layer_s("dense")) == pytest.approx((220e-6, 36e-6))
    tiny = resolve_model(model)
    assert tiny.spec.layer_family == family
    base = vllm.step.family_layer_s
    profile, workload = gpu_profile(), make_workload(context=256)
    speeds = {}
    for raised in ("deepseek", "dense"):
        step = replace(vllm.step, family_layer_s={**base, raised: base[raised] + 1e-3})
        speeds[raised] = make_plan(tiny, profile, workload, engine=replace(vllm, step=step),
                                   suggest=False).estimates.decode_tokens_per_s
    other = "dense" if family == "deepseek" else "deepseek"
    assert 1 / speeds[family] - 1 / speeds[other] == pytest.approx(tiny.spec.num_hidden_layers * 1e-3, rel=1e-9)


def test_a_step_on_several_gpus_pays_the_multi_process_cost():
    """vLLM and SGLang run one process per GPU that meets the others every step: on 4 GPUs a step costs
    per_step + per_step_multi_gpu, on one GPU per_step alone."""
    vllm = load_engine("vllm")
    assert vllm.step.step_s(1) == pytest.approx(0.48e-3)
    assert vllm.step.step_s(4) == pytest.approx(0.48e-3 + 1.32e-3)
    tiny, workload = resolve_model("tiny-deepseek-v3"), make_workload(context=256)
    gone = replace(vllm, step=replace(vllm.step, per_step_multi_gpu_s=0.0))
    for count, extra in ((1, 0.0), (4, 1.32e-3)):
        profile = gpu_profile(count=count, nvlink=count > 1)
        a = make_plan(tiny, profile, workload, engine=gone, suggest=False).estimates.decode_tokens_per_s
        b = make_plan(tiny, profile, workload, engine=vllm, suggest=False).estimates.decode_tokens_per_s
        assert 1 / b - 1 / a == pytest.approx(extra, abs=1e-12)


def _graph_engine(**graph) -> Engine:
    """llama.cpp with GRAPH (edited) as its only fixed cost, its CPU kernels at the host's full bandwidth."""
    parsed = parse_engine({"name": "g", "version": "1", "summary": "s",
                           "gates": {"needs_gpu": False, "architectures": {"deepseek_v3": {}}},
                           "runs": {"layouts": ["single"], "cpu_execution": True, "streams_weights": False,
                                    "reads_nvme": False},
                           "step": {"graph": {**GRAPH, **graph}}}, "g.yaml")
    return replace(load_engine("llama.cpp"), step=parsed.step, cpu_efficiency=MappingProxyType({}))


def test_graph_nodes_cost_a_barrier_on_the_cpu_and_a_launch_on_the_gpu():
    """80 nodes per layer, 4 layers: on the GPUs 4 x 80 x 2 us = 640 us; on 16 CPU threads a node is
    1 + 16 x 0.25 = 5 us: 1.6 ms; on 48 threads 13 us: 4.16 ms."""
    graph = _graph_engine().step.graph
    assert graph_overhead_s(graph, "deepseek_v3", 4, True, 16) == pytest.approx(640e-6, rel=1e-12)
    assert graph_overhead_s(graph, "deepseek_v3", 4, False, 16) == pytest.approx(1.6e-3, rel=1e-12)
    assert graph_overhead_s(graph, "deepseek_v3", 4, False, 48) == pytest.approx(4.16e-3, rel=1e-12)
    assert graph_overhead_s(graph, "llama", 4, True, 16) == 0.0            # no count given for it: no cost
    assert graph_overhead_s(None, "deepseek_v3", 4, True, 16) == 0.0


def test_a_cpu_only_plan_pays_every_layers_nodes_at_the_host_threads_barrier():
    """tiny-deepseek-v3 (3 layers) on a 16-core host with no GPU: 3 x 80 x (1 + 16 x 0.25) us = 1.2 ms more per
    token than the same engine without a graph; at 1.25 us per thread, 3 x 80 x (1 + 16 x 1.25) us = 5.04 ms."""
    tiny, cpu, workload = resolve_model("tiny-deepseek-v3"), cpu_profile(), make_workload(context=256)
    bare = replace(_graph_engine(), step=StepCost())
    base = 1 / make_plan(tiny, cpu, workload, engine=bare, suggest=False).estimates.decode_tokens_per_s
    assert tiny.spec.num_hidden_layers == 3
    for per_thread, extra in (("0.25us", 1.2e-3), ("1.25us", 5.04e-3)):
        engine = _graph_engine(cpu_node_per_thread=per_thread)
        step = 1 / make_plan(tiny, cpu, workload, engine=engine, suggest=False).estimates.decode_tokens_per_s
        assert step - base == pytest.approx(extra, rel=1e-9)


def test_a_plan_with_gpus_pays_a_launch_per_node_wherever_its_experts_are():
    """tiny-deepseek-v3 on one 80 GiB GPU holds everything: 3 x 80 x 2 us = 480 us more than without a graph.
    With 900 KiB of GPU memory both MoE layers' routed experts go to the host: the layers still run on the GPU
    (llama.cpp's -ngl 99), so the graph costs the same."""
    tiny, workload = resolve_model("tiny-deepseek-v3"), make_workload(context=256)
    bare = replace(_graph_engine(), step=StepCost())

    def extra(host_experts: bool) -> tuple[float, set]:
        profile = gpu_profile()
        if host_experts:
            profile = replace(profile, gpus=replace(profile.gpus, memory_bytes=900 << 10, usable_fraction=1.0,
                                                    runtime_reserve_bytes=0))
        plans = [make_plan(tiny, profile, workload, engine=e, suggest=False) for e in (bare, _graph_engine())]
        off = {(g.layer, g.role) for g in plans[1].groups if g.tier == "host" and g.layer is not None}
        return 1 / plans[1].estimates.decode_tokens_per_s - 1 / plans[0].estimates.decode_tokens_per_s, off

    assert extra(False) == (pytest.approx(480e-6, rel=1e-9), set())
    assert extra(True) == (pytest.approx(480e-6, rel=1e-9), {(1, "routed_experts"), (2, "routed_experts")})


# ---- each engine term, by hand ------------------------------------------------------------------------

def test_gpu_reads_at_the_engines_fraction_per_format():
    gpu = Tier("gpu:0", TierKind.GPU, ("gpu:0",), 1000 * GB, MappingProxyType({"bf16": 100e12}),
               frozenset({"bf16"}), efficiency=MappingProxyType({"fp8": 0.5, "default": 0.8}))
    assert on_gpu(Work(1 * GB, 0.0, "fp8"), gpu).seconds == pytest.approx(1 / 500)    # 1 GB / (1000 GB/s x 0.5)
    assert on_gpu(Work(1 * GB, 0.0, "bf16"), gpu).seconds == pytest.approx(1 / 800)   # default 0.8
    assert gpu.read_bytes_per_s("kv") == pytest.approx(800 * GB)


def test_cpu_experts_read_at_the_engines_isa_fraction():
    kt = load_engine("ktransformers")
    machine = build_machine(gpu_profile(), engine=kt)
    fraction = kt.cpu_efficiency[CpuKernels.AVX512]                # the host has avx512f and no AMX
    assert kt.cpu_fraction(("avx2", "avx512f")) == fraction
    # host 100 GB/s x profile efficiency 1.0 x KTransformers' AVX-512 fraction
    assert machine.host.weight_read_bytes_per_s("bf16") == pytest.approx(100 * GB * fraction)
    cost = on_host(Work(1 * GB, 0.0, "bf16"), machine.host, None)
    assert cost.mode == "cpu" and cost.seconds == pytest.approx(1 / (100 * fraction))


def test_engines_that_do_not_stream_or_execute_on_the_cpu():
    vllm = build_machine(gpu_profile(), engine=load_engine("vllm"))
    assert not vllm.host.can_execute                               # no CPU expert kernels: it streams instead
    work = Work(1 * GB, 0.0, "bf16", whole_bytes=4 * GB)
    cost = on_host(work, vllm.host, vllm.gpus[0])
    assert cost.mode == "stream" and cost.seconds == pytest.approx(1 / 50 + 10e-6)    # 1 GB over 50 GB/s + latency
    accelerate = build_machine(gpu_profile(), engine=load_engine("accelerate"))
    cost = on_host(work, accelerate.host, accelerate.gpus[0])      # moves the whole module: 4 GB
    assert cost.mode == "stream" and cost.seconds == pytest.approx(4 / 50 + 10e-6)
    kt = build_machine(gpu_profile(), engine=load_engine("ktransformers"))
    assert on_host(work, kt.host, kt.gpus[0]).mode == "cpu"       # never streams
    assert build_machine(load_profile("rtx5090"), engine=load_engine("vllm")).nvme is None   # no mmap from disk


def test_tensor_parallel_crossing_is_two_all_reduces_per_layer():
    engine = load_engine("vllm")
    machine = build_machine(gpu_profile(count=4, nvlink=True), engine=engine)
    spec = resolve_model("tiny-deepseek-v3").spec
    layout = Layout(Mode.TENSOR, machine.gpu_shard, shards=4)
    ar = engine.collective("nvlink", "all_reduce")
    # ring all-reduce of one token's hidden state: 2 (g-1)/g x hidden x 2 B over 400 GB/s x the engine's fraction
    nbytes = 2 * 3 / 4 * spec.hidden_size * 2
    one = ar.latency_s + nbytes / (400 * GB * ar.bandwidth_fraction)
    assert crossing_s(machine, layout, spec, 1, 1, 3) == pytest.approx(3 * 2 * one)
    ep = Layout(Mode.TENSOR_EXPERT, machine.gpu_shard, shards=4)
    a2a = engine.collective("nvlink", "all_to_all")
    exchange = a2a.latency_s + spec.num_experts_per_tok * spec.hidden_size * 2 / 4 / (400 * GB * a2a.bandwidth_fraction)
    # 1 MoE layer: all-reduce + dispatch + combine; 2 dense layers: 2 all-reduces each
    assert crossing_s(machine, ep, spec, 1, 1, 3) == pytest.approx(one + 2 * exchange + 2 * 2 * one)


def test_kv_cache_reads_at_the_engines_attention_fraction():
    from mv4deploy.plan.kv_tiering import PoolPart, kv_item
    gpu = Tier("gpu:0", TierKind.GPU, ("gpu:0",), 1000 * GB, efficiency=MappingProxyType({"kv": 0.25}))
    pool = KVPool("latents", tuple(range(4)), 1000)
    layout = KVLayout(CacheFormat.BF16, (pool,), 0)
    item = kv_item(PoolPart(pool, 4, gpu), layout, make_workload(context=1000), None)
    # 1000 tokens x 1000 B x 4 layers = 4 MB read per step at 1000 GB/s x 0.25
    assert item.options[0].decode.seconds == pytest.approx(4e6 / 250e9)
