"""Throughput of ``mv4deploy quantize --ray`` with 2 local Ray workers against 1, on one multi-shard synthetic
BF16 checkpoint, beside the one-process pipeline with 1 and 2 threads.

Four ways, each in its own process, side by side in every round (the machine is shared, so ratios are taken
within a round and the table gives their median and range over ``--repeat`` rounds):

    process x1   quantize_checkpoint(workers=1): one process, one thread (the pipeline sets torch to 1 thread)
    process x2   quantize_checkpoint(workers=2): one process, two threads (the default on 2 CPUs)
    ray x1       ray.init(num_cpus=1): one Ray worker, one shard at a time, one thread per task
    ray x2       ray.init(num_cpus=2): two Ray workers, two shards at once, one thread per task

"ray x2 / ray x1" is the scaling of the distributed path (the target: >= 1.6x on 2 CPUs). "ray x2 / process
x2" says what Ray costs or gains against a single process that already uses both CPUs. The clock covers
``quantize_checkpoint`` only (planning, every shard, sha256 of source and output, fsync, finalize): not the
interpreter's imports, nor ``ray.init`` and the workers' start (reported apart: Ray starts its workers
lazily, so a warm-up task per CPU imports torch and the pipeline on each before the clock starts). The source
is read once before the rounds (page cache); outputs are written to ``--dir`` and deleted after each run.

    python benchmarks/quantize_distributed.py [--dir /tmp/mv4deploy-qdist] [--shards 4] [--recipe fp8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = {"process x1": (None, 1), "process x2": (None, 2), "ray x1": (1, 1), "ray x2": (2, 1)}  # (Ray CPUs, threads)

CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
import torch, mv4deploy.quant.pipeline, mv4deploy.quant.manifest  # imports are not throughput
import compressed_tensors, bitsandbytes  # what the kernels import on first use (2-5 s): not throughput either
from mv4deploy.quant.recipe import get_recipe
from mv4deploy.quant.run import quantize_checkpoint
scale, started = None, time.perf_counter()
if {ray_cpus!r} is not None:
    import ray
    ray.init(num_cpus={ray_cpus!r}, include_dashboard=False, log_to_driver=False)
    @ray.remote(num_cpus=1)
    def warm():
        import time, torch, mv4deploy.quant.pipeline, mv4deploy.quant.cluster, compressed_tensors, bitsandbytes
        time.sleep(1.0)   # held, so each warm-up task gets a worker of its own
    ray.get([warm.remote() for _ in range({ray_cpus!r})])
    scale = ("ray", "local")
ray_start_s = time.perf_counter() - started
start = time.perf_counter()
quantize_checkpoint({src!r}, {out!r}, get_recipe({recipe!r}), workers={threads!r}, scale=scale)
print(json.dumps({{"seconds": time.perf_counter() - start, "ray_start_s": ray_start_s}}))
"""


def make_source(folder: Path, shards: int) -> int:
    """A V4-architecture BF16 checkpoint of ``shards`` shards of two layers each (~240 MB: even shards, so
    2 workers can split them evenly); returns the bytes of all shards."""
    from benchmarks.synthetic_checkpoints import v4_config, write_checkpoint
    from mv4deploy.model.config import read_config
    from mv4deploy.model.inventory import build_inventory
    if not (folder / "model.safetensors.index.json").is_file():
        # per layer: 32 experts x 3 x [512 x 1024] x 2 B = 100 MB of experts + ~19 MB attention, shared expert
        config = v4_config(hidden=1024, layers=2 * shards, experts=32, top_k=4, moe_inter=512, vocab=16384)
        total = sum(t.nbytes for t in build_inventory(read_config(config, "bench")).tensors)
        write_checkpoint(config, folder, shard_bytes=int(total / shards * 0.97))
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


def run_mode(mode: str, src: Path, out: Path, recipe: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    ray_cpus, threads = MODES[mode]
    code = CHILD.format(repo=str(REPO), src=str(src), out=str(out), recipe=recipe, ray_cpus=ray_cpus,
                        threads=threads)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: failed ({proc.returncode}): {proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["digest"] = json.loads((out / "quantization_manifest.json").read_text())["shards"]
    shutil.rmtree(out, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mv4deploy-qdist"))
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--recipe", default="fp8")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (every mode once each)")
    parser.add_argument("--modes", nargs="*", default=list(MODES))
    args = parser.parse_args()
    src = args.dir / "src"
    size = make_source(src, args.shards)
    for shard in sorted(src.glob("*.safetensors")):
        shard.read_bytes()   # into the page cache
    runs: dict[str, list[dict]] = {mode: [] for mode in args.modes}
    for round_index in range(args.repeat):
        for mode in args.modes:
            runs[mode].append(run_mode(mode, src, args.dir / "out", args.recipe))
            runs[mode][-1]["load"] = os.getloadavg()[0]   # the machine is shared: how busy it was
            print(f"round {round_index + 1} {mode:11s} {runs[mode][-1]['seconds']:7.2f} s "
                  f"(1-min load average {runs[mode][-1]['load']:.1f})", file=sys.stderr)
    digests = {json.dumps(r["digest"], sort_keys=True) for rs in runs.values() for r in rs}
    shards = len(list(src.glob("*.safetensors")))
    print(f"source: {shards} shards, {size / 1e9:.2f} GB BF16; recipe {args.recipe}; {os.cpu_count()} CPUs; "
          f"{args.repeat} rounds; outputs identical across all runs: {len(digests) == 1}")
    loads = [r["load"] for rs in runs.values() for r in rs]
    print(f"1-min load average after each run: {min(loads):.1f}-{max(loads):.1f} (2 = both CPUs busy)")
    print(f"{'mode':12s} {'median s':>9s} {'(min-max)':>13s} {'MB/s in':>8s} {'ray start s':>12s}")
    for mode, rs in runs.items():
        seconds = [r["seconds"] for r in rs]
        print(f"{mode:12s} {statistics.median(seconds):9.2f} {min(seconds):6.2f}-{max(seconds):<6.2f} "
              f"{size / statistics.median(seconds) / 1e6:8.0f} {statistics.median(r['ray_start_s'] for r in rs):12.2f}")
    for a, b in (("ray x2", "ray x1"), ("ray x2", "process x1"), ("ray x2", "process x2"),
                 ("process x2", "process x1")):
        if a in runs and b in runs:
            ratios = sorted(rb["seconds"] / ra["seconds"] for ra, rb in zip(runs[a], runs[b]))
            print(f"speed {a} / {b}: median {statistics.median(ratios):.2f}x (min-max {ratios[0]:.2f}-{ratios[-1]:.2f})")


if __name__ == "__main__":
    main()
