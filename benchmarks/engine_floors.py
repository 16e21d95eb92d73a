"""vLLM's and SGLang's per-layer fixed cost and attention-kernel fraction, from AIConfigurator's measured kernels.

    python benchmarks/engine_floors.py            # recorded AIConfigurator steps
    python benchmarks/engine_floors.py --record   # re-price them with AIConfigurator (its own venv: AIC_VENV)

A dense layer (the Qwen2 / Llama distillates) has a floor of its own, from Llama-3.1-8B on one GPU (H100, H200,
B200). The V4 path takes V3's floors; it is checked here against AIConfigurator's SGLang kernels for V4-Flash (FP8
experts) at TP 4 and 8 on H200 and TP 8 on B200, plus our per-step cost.

AIConfigurator (pip `aiconfigurator`, 0.12.0) times a decode step from per-kernel measurements of each engine
on each GPU. For DeepSeek-V3 (FP8, TP 8 with the MoE split by TP, batch 1, 1,000 tokens of context) its step
is what the engine's kernels take; the planner's own step for the same model, machine and layout without a
per-layer floor is the roofline plus the engine's collectives. What is left, over 61 layers, is the floor
`engines/<engine>.yaml` ships as `step.per_layer`: a figure sourced from measured kernels, so the published runs
of benchmarks/published_runs.py check it rather than fit it.

The attention core at a batch (DP-attention, 32 sequences per rank at 4,000 tokens, FP8 cache) is timed by
AIConfigurator as its `mla_block` (projections + core); less the projections' roofline, what is left against the
core's roofline (max of the cache read and the absorbed-MLA FLOPs) is the fraction its kernels reach:
`compute_efficiency.kv` in the engine file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from published_runs import load_inputs  # noqa: E402

from mv4deploy.engines.engine import StepCost, load_engine  # noqa: E402
from mv4deploy.hardware.profile import load_profile  # noqa: E402
from mv4deploy.model.kv import CacheFormat, kv_layout  # noqa: E402
from mv4deploy.model.source import resolve_model  # noqa: E402
from mv4deploy.plan.costs import attention_flops  # noqa: E402
from mv4deploy.plan.groups import GroupClass, build_groups  # noqa: E402
from mv4deploy.plan.tiers import build_machine  # noqa: E402
from mv4deploy.plan.assemble import assemble_plan  # noqa: E402
from mv4deploy.plan.workload import make_workload  # noqa: E402

RECORDED = ROOT / "benchmarks" / "data" / "aiconfigurator" / "batch1_tp8_steps.json"
POINTS = [("h200_sxm", "h200x8", "sglang"), ("b200_sxm", "b200x8", "sglang"), ("h200_sxm", "h200x8", "vllm")]
CONTEXT = 1000


V4_POINTS = [("h200_sxm", "h200x8", 4), ("h200_sxm", "h200x8", 8), ("b200_sxm", "b200x8", 8)]   # system, ours, TP
V4_MODEL = "sgl-project/DeepSeek-V4-Flash-FP8"        # AIConfigurator's V4-Flash (FP8 experts)
# A dense layer (GQA attention, SwiGLU MLP) on one GPU: Llama-3.1-8B, whose shape is the R1-Llama-8B distillate's
DENSE_POINTS = [(system, machine, backend) for system, machine in (("h100_sxm", "h100x8"), ("h200_sxm", "h200x8"),
                                                                     ("b200_sxm", "b200x8"))
                for backend in ("vllm", "sglang")]
DENSE_MODEL = "meta-llama/Meta-Llama-3.1-8B"


def _generation_ops(venv: Path, **kwargs) -> dict:
    probe = ROOT / "benchmarks" / "_aic_probe.py"
    kwargs = {"mode": "static_gen", "isl": CONTEXT, "osl": 2, "batch_size": 1, "attention_dp_size": 1,
              "moe_ep_size": 1, **kwargs}
    out = subprocess.run([str(venv / "bin" / "python"), str(probe), "estimate", json.dumps(kwargs)],
                         capture_output=True, text=True, check=True)
    ops = json.loads(out.stdout)["generation_ops_ms"]
    return {"step_ms": round(sum(ops.values()), 3), "ops_ms": ops}


def record(venv: Path) -> dict:
    """Re-price the V3 steps and the V4-Flash cross-check with AIConfigurator; the rest of the file is kept."""
    data = json.loads(RECORDED.read_text()) if RECORDED.exists() else {}
    data.update(aiconfigurator="0.12.0", model="deepseek-ai/DeepSeek-V3", layout="tp8, moe tp8, batch 1",
                isl=CONTEXT)
    data["steps"] = {f"{system}/{backend}": _generation_ops(venv, model_path="deepseek-ai/DeepSeek-V3",
                                                            system_name=system, backend_name=backend, tp_size=8,
                                                            moe_tp_size=8)
                     for system, _, backend in POINTS}
    data["dense_llama_8b"] = {f"{system}/{backend}": _generation_ops(venv, model_path=DENSE_MODEL, system_name=system,
                                                                     backend_name=backend, tp_size=1, moe_tp_size=1)
                              for system, _, backend in DENSE_POINTS}
    data["v4_flash_fp8"] = {f"{system}/tp{tp}": _generation_ops(venv, model_path=V4_MODEL, system_name=system,
                                                               backend_name="sglang", tp_size=tp, moe_tp_size=tp)
                            for system, _, tp in V4_POINTS}
    RECORDED.write_text(json.dumps(data, indent=1))
    return data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    data = record(Path(os.environ.get("AIC_VENV", "/tmp/aic-venv"))) if args.record else \
        json.loads(RECORDED.read_text())
    _, machines, _ = load_inputs()
    v3 = resolve_model("deepseek-v3")
    print_floors(v3, [(backend, machine, _machine(machines, machine), data["steps"][f"{system}/{backend}"]["step_ms"])
                      for system, machine, backend in POINTS])
    # a dense layer (``step.per_layer.dense``): Llama-3.1-8B's shape is the R1-Llama-8B distillate's, BF16
    print(f"\nA dense layer, one GPU: Llama-3.1-8B, BF16, batch 1, {CONTEXT} tokens")
    print_floors(resolve_model("deepseek-r1-distill-llama-8b"),
                 [(backend, system[:4], _machine(machines, machine, gpus=1),
                   data["dense_llama_8b"][f"{system}/{backend}"]["step_ms"]) for system, machine, backend in DENSE_POINTS])
    attention_fractions(v3, machines["h200x8"], data["attention"])
    v4_check(machines, data["v4_flash_fp8"])
    return 0


def _machine(machines: dict, name: str, gpus: int | None = None):
    """A published run's machine (run_machines.yaml) or a shipped profile, on ``gpus`` of its GPUs if given."""
    profile = machines.get(name) or load_profile(name)
    return profile if gpus is None else replace(profile, gpus=replace(profile.gpus, count=gpus))


def print_floors(model, rows: list) -> None:
    """Per (engine, label, profile, AIConfigurator's step in ms): our step for ``model`` with no fixed cost at
    batch 1, and what is left of AIConfigurator's over the model's layers: the engine's floor per layer."""
    layers = model.spec.num_hidden_layers
    print(f"{'engine':7} {'machine':7} {'AIC step ms':>11} {'ours, no floor':>14} {'floor us/layer':>14}")
    for backend, label, profile, aic_ms in rows:
        bare = replace(load_engine(backend), step=StepCost())
        ours_ms, _ = _our_step_ms(model, profile, "native", bare)
        print(f"{backend:7} {label:7} {aic_ms:>11.2f} {ours_ms:>14.2f} {(aic_ms - ours_ms) / layers * 1e3:>14.0f}")


def v4_check(machines: dict, aic: dict) -> None:
    """The V4 path (floors taken from V3) against AIConfigurator's SGLang kernels for V4-Flash with FP8 experts,
    plus our per-step cost: ``plan --engine sglang --policy fp8`` on as many of the GPUs as the TP."""
    sglang, v4 = load_engine("sglang"), resolve_model("deepseek-v4-flash")
    print(f"\nV4-Flash, FP8 experts, SGLang, batch 1, {CONTEXT} tokens: AIC kernels + our per-step cost, and ours")
    for system, machine, tp in V4_POINTS:
        ours_ms, mode = _our_step_ms(v4, _machine(machines, machine, gpus=tp), "fp8", sglang)
        aic_ms = aic[f"{system}/tp{tp}"]["step_ms"] + sglang.step.step_s(tp) * 1e3
        print(f"{system} tp{tp}: AIC {aic_ms:.2f} ms, ours {ours_ms:.2f} ms ({mode}), "
              f"ours / AIC {ours_ms / aic_ms:.2f}")


def _our_step_ms(model, profile, policy: str, engine) -> tuple[float, str]:
    """The planner's decode step (ms) at batch 1 and CONTEXT tokens, and the parallel layout it chose."""
    plan, _, _ = assemble_plan(model, profile, make_workload(CONTEXT, 1), policy, quick=True, engine=engine)
    return 1e3 / plan.estimates.decode_tokens_per_s, plan.decisions.parallelism.mode


def attention_fractions(model, profile, aic: dict, batch: int = 32, context: int = 4000) -> None:
    """Core roofline / (AIConfigurator's mla_block - the projections' roofline), per engine."""
    spec = model.spec
    gpu = build_machine(profile).gpus[0]
    projections = sum(g.native_bytes for g in build_groups(model.inventory).groups if g.cls is GroupClass.ATTENTION)
    projections_s = projections / gpu.bandwidth_bytes_per_s
    flops = batch * sum(attention_flops(spec, layer, context) for layer in range(spec.num_hidden_layers))
    kv = batch * sum(p.read_bytes_per_step(context) for p in kv_layout(spec, CacheFormat.FP8).pools)
    core_s = max(kv / gpu.bandwidth_bytes_per_s, flops / gpu.compute_flops_per_s["bf16"])
    print(f"\nattention at batch {batch} x {context} tokens (DP-attention, one rank): projections "
          f"{projections_s * 1e3:.2f} ms, core roofline {core_s * 1e3:.2f} ms")
    for key, mla_ms in aic["mla_block_ms"].items():
        print(f"{key:16} mla_block {mla_ms:6.2f} ms -> compute_efficiency.kv = {core_s / (mla_ms / 1e3 - projections_s):.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
