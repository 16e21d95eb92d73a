"""Our plan vs accelerate's ``infer_auto_device_map`` for DeepSeek-V4-Flash on rtx5090 and rtx4090x2.

For each profile:
1. Our planner places V4-Flash; our cost model predicts its decode tokens/s.
2. transformers' ``DeepseekV4ForCausalLM`` is built on the meta device from the full V4-Flash config and
   accelerate's ``infer_auto_device_map`` places it under the same memory limits: each GPU gets what our
   plan leaves for weights + KV (capacity - runtime reserve - workspace), the CPU gets host RAM - reserve,
   the rest may go to disk. Parameter sizes are given as stored (experts 4-bit, attention/shared FP8, the
   rest BF16); accelerate counts no scales, so if its map overflows a GPU in true bytes the GPU budget is
   shrunk and the map recomputed until it fits.
3. Our cost model evaluates accelerate's placement, twice: (a) generously, each offloaded module runs
   where our model says it is cheapest (CPU beside its weights, or streamed), KV on the GPU; (b) as
   accelerate's hooks run it, every offloaded module's weights copied to the GPU at every step.
4. Wall and CPU time of both planners, in A/B pairs (ours then accelerate, ``--repeat`` times, so both meet
   the same machine load): in-process (imports done) and as a fresh process (imports included, one OpenMP
   thread). Medians, min-max and the per-pair ratio are printed with the load average.

Prints both ratios (predicted decode speed, planning time). Run:
    PYTHONPATH=. python benchmarks/plan_vs_accelerate.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mv4deploy.hardware.profile import load_profile  # noqa: E402
from mv4deploy.model.source import resolve_model  # noqa: E402
from mv4deploy.plan import planner  # noqa: E402
from mv4deploy.plan.make import make_plan  # noqa: E402
from mv4deploy.plan.estimates import estimate  # noqa: E402
from mv4deploy.plan.groups import build_groups  # noqa: E402
from mv4deploy.plan.hints import MHC_MODULES, MODULES  # noqa: E402
from mv4deploy.plan.items import ItemKind, Placed  # noqa: E402
from mv4deploy.plan.multigpu import Layout, Mode, build_layout, crossing_s  # noqa: E402
from mv4deploy.plan.placement import Placement  # noqa: E402
from mv4deploy.plan.policy import resolve_policy  # noqa: E402
from mv4deploy.plan.tiers import TierKind, build_machine  # noqa: E402
from mv4deploy.plan.workload import make_workload  # noqa: E402

MODEL = "deepseek-v4-flash"
PROFILES = ("rtx5090", "rtx4090x2")
FP8_PARAMS = (".self_attn.q_a_proj.", ".self_attn.q_b_proj.", ".self_attn.kv_proj.", ".self_attn.o_a_proj.",
              ".self_attn.o_b_proj.", ".mlp.shared_experts.", ".indexer.q_b_proj.")
ACCELERATE_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import torch
from accelerate import init_empty_weights, infer_auto_device_map
from transformers.models.deepseek_v4 import DeepseekV4Config, DeepseekV4ForCausalLM
cfg = json.loads(sys.argv[1]); memory = {int(k) if k.isdigit() else k: v for k, v in json.loads(sys.argv[2]).items()}
with init_empty_weights():
    model = DeepseekV4ForCausalLM(DeepseekV4Config(**cfg))
infer_auto_device_map(model, max_memory=memory, no_split_module_classes=model._no_split_modules, dtype=torch.bfloat16)
print(time.perf_counter() - t0)
"""


def transformers_config() -> dict:
    cfg = json.loads((REPO / "mv4deploy/model/presets" / f"{MODEL}.json").read_text())
    for key in ("quantization_config", "architectures", "model_type", "auto_map", "torch_dtype", "transformers_version"):
        cfg.pop(key, None)
    return cfg


def build_meta_model(cfg: dict):
    from accelerate import init_empty_weights
    from transformers.models.deepseek_v4 import DeepseekV4Config, DeepseekV4ForCausalLM
    with init_empty_weights():
        return DeepseekV4ForCausalLM(DeepseekV4Config(**cfg))


def stored_dtypes(model) -> dict:
    """Parameter name -> dtype as the checkpoint stores it (experts 4-bit, FP8 linears), for accelerate."""
    import torch
    from accelerate.utils.modeling import CustomDtype
    special = {}
    for name, _ in model.named_parameters():
        if ".mlp.experts." in name:
            special[name] = CustomDtype.INT4
        elif any(part in name for part in FP8_PARAMS) and name.endswith("weight"):
            special[name] = torch.float8_e4m3fn
    return special


def accelerate_map(model, memory: dict, special: dict) -> dict:
    import torch
    from accelerate import infer_auto_device_map
    return infer_auto_device_map(model, max_memory=memory, no_split_module_classes=model._no_split_modules,
                                 dtype=torch.bfloat16, special_dtypes=special)


def device_of(module: str, device_map: dict):
    """accelerate's device for a module: the longest mapped prefix."""
    while module:
        if module in device_map:
            return device_map[module]
        module = module.rpartition(".")[0]
    return device_map.get("", "cpu")


def group_device(group, device_map: dict, hc: bool):
    templates = MODULES[group.cls] + (MHC_MODULES.get(group.cls, ()) if hc else ())
    devices = [device_of(t.format(l=group.layer), device_map) for t in templates]
    rank = {"disk": 2, "cpu": 1}
    return max(devices, key=lambda d: rank.get(d, 0) if isinstance(d, str) else 0)


def our_capacity(candidate) -> dict:
    return dict(candidate.capacity)


def evaluate_accelerate(resolved, profile, device_map: dict, workload):
    """Our cost model on accelerate's placement: (generous decode tok/s, as-executed tok/s, bytes per tier)."""
    grouping = build_groups(resolved.inventory)
    machine = build_machine(profile)
    policy = resolve_policy("auto", machine.device_kind)
    base = build_layout(machine, Mode.SINGLE if profile.gpus.count == 1 else Mode.PIPELINE, grouping)
    stages = {}
    for g in grouping.groups:
        if g.layer is not None:
            d = group_device(g, device_map, resolved.spec.hc_mult > 1)
            stages[g.layer] = d if isinstance(d, int) else 0     # offloaded layers execute on the main GPU
    layout = Layout(base.mode, base.gpus, stages if base.mode is Mode.PIPELINE else {})
    items = planner._items(resolved, grouping, policy, workload, layout, machine, stream_prefill=False, cache={})
    by_group = {g.name: g for g in grouping.groups}
    placed, streamed_s = [], 0.0
    for item in items:
        if item.kind is ItemKind.KV:
            option = item.option(TierKind.GPU)                  # generous: KV on the GPU
        else:
            d = group_device(by_group[item.name], device_map, resolved.spec.hc_mult > 1)
            kind = TierKind.GPU if isinstance(d, int) else (TierKind.HOST if d == "cpu" else TierKind.NVME)
            option = item.option(kind)
            if kind is not TierKind.GPU:                        # accelerate's hooks copy the whole module
                link = layout.gpu_for(item.layer, item.group.cls).link_bytes_per_s
                read = option.bytes / machine.nvme.bandwidth_bytes_per_s if kind is TierKind.NVME else 0.0
                streamed_s += max(option.bytes / link, read) - option.decode.seconds
        placed.append(Placed(item, option, 0, item.units))
    placement = Placement(tuple(placed), (), {}, {})
    layers = len({g.layer for g in grouping.groups if g.layer is not None})
    moe = len({g.layer for g in grouping.groups if g.cls.value == "routed_experts"})
    cross = crossing_s(machine, layout, resolved.spec, workload.batch, moe, layers)
    est = estimate(placement, layers, workload, cross, 0.0, 0.0)
    per_tier = {}
    for p in placed:
        per_tier[p.option.tier.name] = per_tier.get(p.option.tier.name, 0) + p.bytes
    as_run = workload.batch / (est.decode_step_s + streamed_s)
    return est.decode_tokens_per_s, as_run, per_tier


def fit_accelerate(model, special, resolved, profile, workload, best):
    """accelerate's map under our limits, shrinking GPU budgets until its map fits in true bytes."""
    capacity = our_capacity(best)
    gpus = [t for t in best.layout.gpus]
    host_free = capacity.get("host", 0)
    budgets = {i: capacity[t.name] for i, t in enumerate(gpus)} if best.layout.mode is not Mode.TENSOR_EXPERT \
        else {i: capacity[gpus[0].name] // profile.gpus.count for i in range(profile.gpus.count)}
    scale, rounds = 1.0, 0
    while True:
        rounds += 1
        memory = {i: int(b * scale) for i, b in budgets.items()}
        memory["cpu"] = host_free
        device_map = accelerate_map(model, memory, special)
        generous, as_run, per_tier = evaluate_accelerate(resolved, profile, device_map, workload)
        over = [t for t, b in per_tier.items() if t.startswith("gpu") and b > capacity.get(t, 0)]
        if not over or rounds > 20:
            return device_map, generous, as_run, per_tier, rounds, scale
        scale *= 0.97


def timed(fn) -> tuple[float, float]:
    """(wall s, CPU s) of one call of ``fn()`` in this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def timed_process(args: list[str]) -> tuple[float, float]:
    """(wall s, CPU s, user + system) of one fresh process running ``args``."""
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(args, check=True, capture_output=True, cwd=REPO,
                   env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def ab_pairs(ours, theirs, repeat: int) -> dict:
    """Run ``ours`` and ``theirs`` in turn ``repeat`` times (A/B pairs, so both meet the same machine load);
    per side the median and min-max of wall and CPU seconds, and the median of the per-pair ratios."""
    ours(), theirs()                                            # warm-up pair, not counted (first-call caches)
    pairs = [(ours(), theirs()) for _ in range(repeat)]
    out = {}
    for i, side in enumerate(("ours", "accelerate")):
        for j, kind in enumerate(("wall", "cpu")):
            values = [p[i][j] for p in pairs]
            out[f"{side}_{kind}"] = (statistics.median(values), min(values), max(values))
    for j, kind in enumerate(("wall", "cpu")):
        ratios = [p[1][j] / p[0][j] for p in pairs]
        out[f"ratio_{kind}"] = (statistics.median(ratios), min(ratios), max(ratios))
    return out


def print_ab(title: str, r: dict) -> None:
    def f(t):
        return f"{t[0]:.3f} ({t[1]:.3f}-{t[2]:.3f})"
    print(f"  {title}: ours wall {f(r['ours_wall'])}, CPU {f(r['ours_cpu'])}; accelerate wall "
          f"{f(r['accelerate_wall'])}, CPU {f(r['accelerate_cpu'])}; accelerate / ours per pair: wall "
          f"{r['ratio_wall'][0]:.2f}x ({r['ratio_wall'][1]:.2f}-{r['ratio_wall'][2]:.2f}), CPU "
          f"{r['ratio_cpu'][0]:.2f}x ({r['ratio_cpu'][1]:.2f}-{r['ratio_cpu'][2]:.2f})")


def accelerate_once(cfg: dict) -> None:
    model = build_meta_model(cfg)
    accelerate_map(model, {0: 25 * 2**30, "cpu": 120 * 2**30}, stored_dtypes(model))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="A/B pairs per planning-time comparison")
    repeat = parser.parse_args().repeat
    workload = make_workload()
    resolved = resolve_model(MODEL)
    cfg = transformers_config()
    model = build_meta_model(cfg)
    special = stored_dtypes(model)
    print(f"{MODEL}, context {workload.context_tokens}, batch {workload.batch}; predicted decode tokens/s by our "
          f"cost model")
    for name in PROFILES:
        profile = load_profile(name)
        # Both placements are priced by the same cost model: the bare roofline of mv4deploy's engine model, which
        # is what evaluate_accelerate uses (engine-specific fixed costs would differ between the two sides).
        plan = make_plan(resolved, profile, workload, engine="mv4deploy")
        found, *_ = planner.candidates(resolved, profile, workload, "auto", prefill_stream=False)
        best, _ = planner.choose(found)
        device_map, generous, as_run, per_tier, rounds, scale = fit_accelerate(model, special, resolved, profile,
                                                                               workload, best)
        ours = plan.estimates.decode_tokens_per_s
        ours_same = best.estimates.decode_tokens_per_s          # same prefill mode as accelerate (no buffer)
        gib = {t: round(b / 2**30, 1) for t, b in sorted(per_tier.items())}
        print(f"\n[{name}] accelerate map: {len(device_map)} entries, GPU budget x{scale:.2f} after {rounds} "
              f"round(s); true GiB per tier {gib}")
        print(f"  ours {ours:.2f} tok/s (plan with --engine mv4deploy), {ours_same:.2f} tok/s (without the prefill stream buffer)")
        print(f"  accelerate's placement: {generous:.2f} tok/s with our execution choices, "
              f"{as_run:.3f} tok/s as its hooks run it (offloaded modules copied to the GPU each step)")
        print(f"  ratio ours / accelerate: {ours / generous:.2f}x (generous), {ours / as_run:.0f}x (as run)")

    cfg_json = json.dumps(cfg)
    memory = json.dumps({"0": 25 * 2**30, "cpu": 120 * 2**30})
    load_before = os.getloadavg()[0]
    in_process = ab_pairs(lambda: timed(lambda: make_plan(resolve_model(MODEL), load_profile("rtx5090"), workload)),
                          lambda: timed(lambda: accelerate_once(cfg)), repeat)
    decision = ab_pairs(lambda: timed(lambda: make_plan(resolve_model(MODEL), load_profile("rtx5090"), workload,
                                                        suggest=False)),
                        lambda: timed(lambda: accelerate_once(cfg)), repeat)
    fresh = ab_pairs(lambda: timed_process([sys.executable, "-m", "mv4deploy", "plan", "--profile", "rtx5090",
                                            "--json"]),
                     lambda: timed_process([sys.executable, "-c", ACCELERATE_SCRIPT, cfg_json, memory]), repeat)
    print(f"\nplanning time, {repeat} A/B pairs (ours, then accelerate), seconds as median (min-max); load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after on {os.cpu_count()} cores:")
    print_ab("in-process, imports done (ours: config -> inventory -> plan with suggestions; accelerate: meta model "
             "-> infer_auto_device_map)", in_process)
    print_ab("in-process, the placement alone (ours: config -> inventory -> plan, every engine weighed, no "
             "suggestions of other machines, contexts or policies; accelerate: the same as above)", decision)
    print_ab("fresh process, imports included (`mv4deploy plan --profile rtx5090 --json` against the same "
             "accelerate steps after importing torch, accelerate and transformers)", fresh)

if __name__ == "__main__":
    main()
