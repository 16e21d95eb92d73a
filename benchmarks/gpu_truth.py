"""The GPU half of benchmarks/truth.py, for the lent GPU machine (an H200: `--base h200`, the default; an H100:
`--base h100`): predicted vs measured GPU memory and decode tokens/s under four placements, calibration of
profiles/<base>.yaml, and quantization throughput on the GPU.

Each step writes its results under --dir and fits in one 10-minute command on the lent machine:

    python benchmarks/gpu_truth.py probe   --dir $OUT/gt    # profile probe --base h200 -> h200-probed.yaml
    python benchmarks/gpu_truth.py make    --dir $OUT/gt    # synthetic V4 (~3.8B) and V4.1-style (~3.8B + Engram)
    python benchmarks/gpu_truth.py calibrate --dir $OUT/gt  # truth.py's calibration models -> runtime_overhead,
                                                            # all-GPU run -> runtime_reserve: h200-calibrated.yaml
    python benchmarks/gpu_truth.py plans   --dir $OUT/gt    # the --gpu-mem-util giving each placement
    python benchmarks/gpu_truth.py run     --dir $OUT/gt    # the four placements, calibrated profile
    python benchmarks/gpu_truth.py quant   --dir $OUT/gt    # FP8 / INT4-RTN, cuda vs cpu, one >= 4 GB shard
    python benchmarks/gpu_truth.py report  --dir $OUT/gt    # the tables for docs/benchmarks.md

The four placements (issue 8): all on the GPU; routed experts in host RAM (CPU compute or streamed, as the
plan chooses); Engram tables in pinned host RAM with prefetched lookups (V4.1-style checkpoint); the CSA
entries pool in host RAM with top-k fetches (16K context). Each placement comes from the planner itself:
`plans` lowers --gpu-mem-util until the plan puts exactly that off the GPU. Calibration uses truth.py's
calibration models (--dry-run: only its tiny ones) and the all-GPU placement; the other three placements
are the test (say so in the doc).

--dry-run runs every step on this CPU with tiny checkpoints and `--device-map gpu:0=cpu` (checks the script;
its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import truth  # noqa: E402  (benchmarks/truth.py: cases, runs, the overhead fit, the table)

GT = dict(hidden=2048, layers=12, experts=48, top_k=6, moe_inter=1024, heads=32, head_dim=512)
BIG = {
    "v4": dict(GT),                                                                    # ~3.8B, 7.6 GB BF16
    "v41": dict(GT, vocab=2048, engram_layers=(1, 6), engram_vocab=4_000_000),         # + 2 x ~2 GB tables
}
DRY = {"v4": dict(truth.TINY, layers=4, experts=8, top_k=2, head_dim=64),
       "v41": dict(truth.TINY, layers=4, experts=8, top_k=2, head_dim=64, engram_layers=(1,), engram_vocab=50000)}
# (checkpoint, context, what must be off the GPU, what may be): group roles and KV pool names. The planner evicts
# the bytes cheapest to lose first (Engram tables, the embedding: one row per token, the CSA pool: top-k
# reads, then experts), so a placement may come with the embedding (and, at 4K context, the small CSA pool)
# in host RAM too.
# Contexts stay at 16K (32K for the CSA pool: at 16K its 14 MB cost more per byte freed, top-k fetches and a
# link latency per layer, than the experts' CPU compute, so the planner never moves it alone; on the probed H200
# of 2026-12-04 not at 32K either, docs/benchmarks.md) and prefill chunks
# at 256 tokens: transformers' eager V4 attention materializes fp32 scores over window + chunk + every
# compressed entry per head ([32, 256, 8K] = 270 MB at 32K), a transient no fused engine has and the plan's
# workspace does not count.
PLACEMENTS = {
    "all on GPU": ("v4", 16384, set(), set()),
    "routed experts on host": ("v4", 4096, {"routed_experts"}, {"routed_experts", "embedding", "csa_entries"}),
    "Engram on host (prefetch)": ("v41", 16384, {"engram_table"}, {"engram_table", "embedding"}),
    "CSA KV pool on host": ("v4", 32768, {"csa_entries"}, {"csa_entries", "embedding"}),
}
CHUNK = 256
CALIBRATION = [c for c in truth.CASES if c.role == "calibration"]


def _off_gpu(plan: dict) -> set[str]:
    """Group roles and KV pools the plan keeps off the GPU."""
    return ({g["role"] for g in plan["groups"] if not g["tier"].startswith("gpu")}
            | {p["name"] for p in plan["kv_cache"]["pools"] if not p["tier"].startswith("gpu")})


def _state(plan: dict, required: set, allowed: set) -> str:
    off = _off_gpu(plan)
    return "over" if not off <= allowed else "under" if not required <= off else "wanted"


def _settings(args) -> argparse.Namespace:
    """truth.measure's knobs: the lent machine is not shared, so no waiting for quiet."""
    return argparse.Namespace(tokens=args.tokens, warmup=3, trials=args.trials, quiet_cores=1e9, max_wait_s=0)


def _run_args(args) -> tuple:
    return ("--device-map", "gpu:0=cpu") if args.dry_run else ()


def step_probe(args) -> None:
    out = _profile(args, "probed")
    truth.cli("profile", "probe", "--base", args.base, "--name", args.base,
              "--size", "512MiB" if args.dry_run else "2GiB", "--storage-dir", args.dir, "--out", out)
    if args.dry_run:                  # tiny models beside a 1 GiB reserve: no placement window worth the name
        data = yaml.safe_load(out.read_text())
        data["gpus"]["runtime_reserve"] = "1MiB"
        out.write_text(yaml.safe_dump(data, sort_keys=False))


def step_make(args) -> None:
    for key, model in (DRY if args.dry_run else BIG).items():
        folder = args.dir / key
        if not (folder / "config.json").is_file():
            start = time.perf_counter()
            truth.write_checkpoint(truth.v4_config(**model), folder, seed=0, shard_bytes=4 * 2**30)
            print(f"{folder}: {time.perf_counter() - start:.0f} s", file=sys.stderr)


def _case(name: str, util: float | None, args) -> truth.Case:
    key, context, _, _ = PLACEMENTS[name]
    model = (DRY if args.dry_run else BIG)[key]
    if args.dry_run:                  # a tiny model's CSA pool only outweighs its experts at a long context
        context = 8192 if context >= 16384 else 512
    extra = ("--gpu-mem-util", f"{util:.9f}") if util is not None else ()
    return truth.Case(name, "test", model, context=context, chunk=1024 if args.dry_run else CHUNK, plan_args=extra)


def _profile(args, kind: str) -> Path:
    return args.dir / f"{args.base}-{kind}.yaml"


def _find_util(name: str, args) -> float | None:
    """The --gpu-mem-util whose plan puts exactly the placement's set off the GPU: walk down in 15% steps from
    0.97; where a step jumps past the placement, bisect between the two last steps."""
    key, _, required, allowed = PLACEMENTS[name]
    folder = args.dir / key
    profile = _profile(args, "calibrated") if _profile(args, "calibrated").is_file() else _profile(args, "probed")

    def state(util):
        case = _case(name, util, args)
        return _state(json.loads(truth.plan_case(case, folder, profile, args.dir).read_text()), required, allowed)

    if state(None) == "wanted":
        return None                                       # the profile as it is gives this placement
    above, util = 0.97, 0.97
    while util > (1e-9 if args.dry_run else 1e-4):
        found = state(util)
        if found == "wanted":
            return util
        if found == "over":
            low, high = util, above
            for _ in range(40):
                mid = (low + high) / 2
                found = state(mid)
                if found == "wanted":
                    return mid
                low, high = (mid, high) if found == "over" else (low, mid)
            break
        above, util = util, util * 0.85
    raise SystemExit(f"{name}: no --gpu-mem-util puts exactly {sorted(required)} (and at most {sorted(allowed)}) "
                     f"off the GPU")


def step_plans(args) -> None:
    """placements.json: each placement's --gpu-mem-util (null: the profile as it is), or why none was found
    (`run` skips those)."""
    utils = {}
    for name in PLACEMENTS:
        try:
            utils[name] = _find_util(name, args)
        except SystemExit as refusal:
            utils[name] = {"error": str(refusal)}
    (args.dir / "placements.json").write_text(json.dumps(utils, indent=1))
    print(json.dumps(utils, indent=1))


def step_calibrate(args) -> None:
    """runtime_overhead from tiny models on the GPU; runtime_reserve from the all-GPU run (measured peak minus
    the plan's bytes other than the reserve), both written into <base>-calibrated.yaml."""
    settings, probed = _settings(args), _profile(args, "probed")
    cases = [c for c in CALIBRATION if not args.dry_run or c.model["hidden"] == truth.TINY["hidden"]]
    first = [truth.measure(c, truth.ensure_checkpoint(c, args.dir), probed, settings, args.dir, _run_args(args))
             for c in cases]
    fit = truth.fit_overhead(first)
    calibrated = truth.write_calibrated(probed, fit, [c.name for c in cases], _profile(args, "calibrated"))
    name = "all on GPU"
    case = _case(name, None, args)
    result = truth.measure(case, args.dir / PLACEMENTS[name][0], calibrated, settings, args.dir, _run_args(args))
    gpu = next((r for r in result.report["comparison"] if r["metric"] == "gpu:0 peak memory"), None)
    if gpu is not None:
        device = result.plan["devices"][0]
        reserve = gpu["measured"] - (device["used_bytes"] - device["breakdown"]["reserve"])
        data = yaml.safe_load(calibrated.read_text())
        data["gpus"]["runtime_reserve"] = f"{max(reserve, 0) // 2**20}MiB"
        data["runtime_overhead"]["source"] += "; gpus.runtime_reserve from the all-GPU run"
        calibrated.write_text("# runtime_overhead and gpus.runtime_reserve fitted by benchmarks/gpu_truth.py\n"
                              + yaml.safe_dump(data, sort_keys=False))
    (args.dir / "calibration.json").write_text(json.dumps({"fit": fit, "cases": [c.name for c in cases]}))


def step_run(args) -> None:
    utils = json.loads((args.dir / "placements.json").read_text())
    settings, profile = _settings(args), _profile(args, "calibrated")
    out = args.dir / "placements-results.json"
    for name in PLACEMENTS:
        if args.only and name not in args.only:
            continue
        if isinstance(utils[name], dict):
            print(f"  {name}: skipped ({utils[name]['error']})", file=sys.stderr)
            continue
        case = _case(name, utils[name], args)
        result = truth.measure(case, args.dir / PLACEMENTS[name][0], profile, settings, args.dir, _run_args(args))
        results = json.loads(out.read_text()) if out.is_file() else {}    # written per placement: a deadline
        results[name] = {"plan": result.plan, "report": result.report, "gpu_mem_util": utils[name]}   # keeps these
        out.write_text(json.dumps(results, indent=1))


QUANT_CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
import torch
import mv4deploy.quant.pipeline
from mv4deploy.quant.recipe import Recipe
from mv4deploy.model.rules import Rule
from mv4deploy.quant.run import quantize_checkpoint
recipe = Recipe({fmt!r}, (Rule("native", role="norm"), Rule("native", role="router"), Rule("native", role="mhc"),
                          Rule({fmt!r}, slot="linear"), Rule({fmt!r}, slot="expert"), Rule("native", match=".*")))
if {device!r} == "cuda":
    torch.ones(1, device="cuda")          # the context is not throughput
start = time.perf_counter()
quantize_checkpoint({src!r}, {out!r}, recipe, workers={workers}, device={device!r})
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""


def step_quant(args) -> None:
    """FP8 (e4m3, 128x128 UE8M0 blocks) and INT4 round-to-nearest (group 128) of one >= 4 GB V4-Flash-layer
    shard, on the GPU and on the CPU path, beside a plain copy of the same bytes (quantize_throughput.py's
    shard and copy)."""
    import quantize_throughput as qt
    src = args.dir / "qsrc"
    experts = 8 if args.dry_run else 80                   # 80 routed experts: 4.2 GB
    size = qt.make_shard(src, experts) if not (src / "model.safetensors").is_file() else \
        (src / "model.safetensors").stat().st_size
    qt.read_all(src / "model.safetensors")
    copy_s = qt.timed_copy(src / "model.safetensors", args.dir / "copy.bin")
    (args.dir / "copy.bin").unlink()
    rows = [{"format": "copy", "device": "-", "seconds": copy_s, "gb_per_s": size / copy_s / 1e9}]
    devices = ("cpu",) if args.dry_run else ("cuda", "cpu")
    for fmt in ("fp8-e4m3-block128-ue8m0", "int4-g128"):
        for device in devices:
            out = args.dir / "qout"
            shutil.rmtree(out, ignore_errors=True)
            code = QUANT_CHILD.format(repo=str(HERE.parent), fmt=fmt, src=str(src), out=str(out),
                                      workers=min(4, os.cpu_count() or 1), device=device)
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            seconds = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
            rows.append({"format": fmt, "device": device, "seconds": seconds, "gb_per_s": size / seconds / 1e9})
            print(rows[-1], file=sys.stderr)
    shutil.rmtree(args.dir / "qout", ignore_errors=True)
    (args.dir / "quant.json").write_text(json.dumps({"shard_bytes": size, "rows": rows}, indent=1))


def step_report(args) -> None:
    results = json.loads((args.dir / "placements-results.json").read_text())
    print("| placement | --gpu-mem-util | GPU peak predicted GiB | measured | ratio | decode tok/s predicted | "
          "measured (min-max) | ratio | fitted? |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        rows = {row["metric"]: row for row in r["report"]["comparison"]}
        gpu, dec = rows.get("gpu:0 peak memory"), rows["decode tokens/s"]
        spread = r["report"]["decode_tokens_per_s_spread"]
        gib = (lambda n: f"{n / 2**30:.2f}") if gpu else (lambda n: "n/a")
        ratio = f"{gpu['ratio']:.3f}" if gpu else "n/a"
        util = f"{r['gpu_mem_util']:.4g}" if r['gpu_mem_util'] else 'profile'
        print(f"| {name} | {util} | {gib(gpu and gpu['predicted'])} | "
              f"{gib(gpu and gpu['measured'])} | {ratio} | {dec['predicted']:.2f} | {dec['measured']:.2f} "
              f"({spread['min']:.2f}-{spread['max']:.2f}) | {dec['ratio']:.2f} | "
              f"{'memory reserve' if name == 'all on GPU' else 'test'} |")
    quant = args.dir / "quant.json"
    if quant.is_file():
        data = json.loads(quant.read_text())
        print(f"\nquantization of one {data['shard_bytes'] / 1e9:.2f} GB shard:\n\n| format | device | s | GB/s |\n"
              "|---|---|---|---|")
        for row in data["rows"]:
            print(f"| {row['format']} | {row['device']} | {row['seconds']:.2f} | {row['gb_per_s']:.2f} |")


STEPS = {"probe": step_probe, "make": step_make, "calibrate": step_calibrate, "plans": step_plans,
         "run": step_run, "quant": step_quant, "report": step_report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=[*STEPS, "all"])
    parser.add_argument("--dir", type=Path, default=Path(os.environ.get("OUT", "/tmp")) / "gpu-truth")
    parser.add_argument("--base", default="h200", help="the shipped profile the lent GPU is probed against")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="placements to run (default: all four)")
    parser.add_argument("--dry-run", action="store_true", help="tiny models, gpu:0 mapped to the CPU")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    for step in (STEPS if args.step == "all" else [args.step]):
        print(f"== {step}", file=sys.stderr)
        STEPS[step](args)


if __name__ == "__main__":
    main()
