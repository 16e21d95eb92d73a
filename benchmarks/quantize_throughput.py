"""Throughput of ``mv4deploy quantize`` per format on one synthetic >= 2 GB BF16 shard with real
V4-Flash layer shapes, beside a plain read-and-write copy of the same bytes in the same run.

The shard is one V4-Flash CSA layer (layer 2's attention, indexer, compressor, shared expert, router,
mHC) with enough routed experts ([2048, 4096] / [4096, 2048], as shipped) to pass 2 GB; config.json
is V4-Flash cut to that one layer, so the pipeline's inventory checks run exactly as on the real model.
Each format runs in its own process (``os.wait4`` gives that process's peak RSS); its clock covers
``quantize_checkpoint`` (planning, every shard, sha256 of source and output, fsync, finalize), not the
interpreter's imports. The copy and every run read the source from the page cache (it is read once
before timing); outputs are fsynced.

    python benchmarks/quantize_throughput.py [--dir /tmp/qbench] [--experts 40] [--workers 2] [--repeat 3]

Every format's run comes right after a copy of its own, and its ratio is taken against that copy (the
machine is shared and its disk's write-back varies: absolute GB/s drift within a minute, ratios measured
back to back much less); the table gives the median ratio over ``--repeat`` rounds and its range (min-max),
the copy row the median of all copies. Targets (2 cores): every format
>= 1.0x the copy, FP8 and INT4 >= 1.5x; peak RSS <= 2.5x the shard size.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPES = {  # format measured -> a one-rule recipe applying it to every matrix of the shard
    "fp8-e4m3-block128-ue8m0": "fp8-e4m3-block128-ue8m0",
    "fp8-e4m3-block128": "fp8-e4m3-block128",
    "mxfp4": "mxfp4",
    "int4-g128": "int4-g128",
    "nf4": "nf4",
    "nvfp4": "nvfp4",
}


def flash_one_layer(experts: int) -> dict:
    cfg = json.loads((REPO / "mv4deploy/model/presets/deepseek-v4-flash.json").read_text())
    cfg.update(num_hidden_layers=1, num_nextn_predict_layers=0, n_routed_experts=experts, num_hash_layers=0,
               compress_ratios=[4], vocab_size=4096)
    cfg.pop("quantization_config", None)
    cfg.pop("expert_dtype", None)
    return cfg


def make_shard(folder: Path, experts: int) -> int:
    """Write config.json and one shard of random BF16 weights; returns the shard's size in bytes."""
    import torch

    from mv4deploy.model.config import read_config
    from mv4deploy.model.rules import logical_weights
    from mv4deploy.quant.shards import output_layout, write_tensor
    folder.mkdir(parents=True, exist_ok=True)
    cfg = flash_one_layer(experts)
    (folder / "config.json").write_text(json.dumps(cfg))
    weights = logical_weights(read_config(cfg, "bench"))
    header, slots = output_layout([(w.name, w.stored[0].dtype, w.shape) for w in weights], {"format": "pt"})
    path = folder / "model.safetensors"
    gen = torch.Generator().manual_seed(0)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.pwrite(fd, header, 0)
        for w, slot in zip(weights, slots):
            value = torch.randn(w.shape, generator=gen) * 0.02
            if w.stored[0].dtype == "I64":
                value = torch.randint(0, experts, w.shape, generator=gen)
            write_tensor(fd, slot, value.to({"BF16": torch.bfloat16, "F32": torch.float32,
                                             "I64": torch.int64}[w.stored[0].dtype]))
    finally:
        os.close(fd)
    return path.stat().st_size


def read_all(path: Path) -> None:
    with open(path, "rb") as handle:
        while handle.read(64 << 20):
            pass


def timed_copy(src: Path, dst: Path) -> float:
    """Plain read-and-write copy (64 MiB pieces, fsynced), seconds."""
    start = time.perf_counter()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while piece := fin.read(64 << 20):
            fout.write(piece)
        fout.flush()
        os.fsync(fout.fileno())
    return time.perf_counter() - start


CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
import torch  # imported before the clock starts: startup is not throughput (it is ~2 s, paid once per run)
import mv4deploy.quant.pipeline, mv4deploy.quant.manifest
import compressed_tensors.quantization  # likewise (~2 s with transformers): INT4/NVFP4 configs and scales use it
import logging; logging.getLogger('bitsandbytes').setLevel(logging.ERROR)
import bitsandbytes.functional  # likewise (2-7 s on a loaded machine): NF4's levels and its partial blocks
from mv4deploy.quant.recipe import Recipe
from mv4deploy.model.rules import Rule
from mv4deploy.quant.run import quantize_checkpoint
recipe = Recipe({fmt!r}, (Rule("native", role="norm"), Rule("native", role="router"), Rule("native", role="mhc"),
                          Rule({fmt!r}, slot="linear"), Rule({fmt!r}, slot="expert"), Rule("native", match=".*")))
start = time.perf_counter()
quantize_checkpoint({src!r}, {out!r}, recipe, workers={workers})
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""


def run_format(fmt: str, src: Path, out: Path, workers: int) -> tuple[float, int, int]:
    """(seconds inside quantize_checkpoint, peak RSS bytes of that process, output bytes)."""
    shutil.rmtree(out, ignore_errors=True)
    code = CHILD.format(repo=str(REPO), fmt=fmt, src=str(src), out=str(out), workers=workers)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    result = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{fmt}: quantize failed (status {status})")
    seconds = json.loads(result)["seconds"]
    out_bytes = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    return seconds, usage.ru_maxrss * 1024, out_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/mv4deploy-qbench"))
    parser.add_argument("--experts", type=int, default=40, help="routed experts in the shard (40 -> 2.1 GB)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--formats", nargs="*", default=list(RECIPES))
    parser.add_argument("--repeat", type=int, default=3, help="rounds (copy + every format each)")
    args = parser.parse_args()
    src = args.dir / "src"
    size = make_shard(src, args.experts) if not (src / "model.safetensors").is_file() else \
        (src / "model.safetensors").stat().st_size
    read_all(src / "model.safetensors")
    rows: dict[str, list[tuple[float, float, int, int]]] = {"copy": []}
    for _ in range(args.repeat):
        for fmt in args.formats:
            copy_s = timed_copy(src / "model.safetensors", args.dir / "copy.bin")
            (args.dir / "copy.bin").unlink()
            rows["copy"].append((copy_s, 1.0, 0, size))
            seconds, rss, out_bytes = run_format(RECIPES[fmt], src, args.dir / "out", args.workers)
            rows.setdefault(fmt, []).append((seconds, copy_s / seconds, rss, out_bytes))
    print(f"shard: {size / 1e9:.2f} GB (V4-Flash layer 2, {args.experts} routed experts, BF16); "
          f"{os.cpu_count()} CPUs, --workers {args.workers}, {args.repeat} rounds")
    print(f"{'format':26s} {'seconds':>8s} {'GB/s in':>8s} {'x copy':>7s} {'(min-max)':>11s} {'peak RSS':>9s} "
          f"{'x shard':>8s} {'out GB':>7s}")
    for fmt, runs in rows.items():
        seconds = sorted(r[0] for r in runs)[len(runs) // 2]
        ratios = sorted(r[1] for r in runs)
        rss = max(r[2] for r in runs)
        label = "copy (read+write+fsync)" if fmt == "copy" else fmt
        print(f"{label:26s} {seconds:8.2f} {size / seconds / 1e9:8.2f} {ratios[len(ratios) // 2]:7.2f} "
              f"{ratios[0]:5.2f}-{ratios[-1]:<5.2f} {rss / 1e9 if rss else 0:8.2f}G {rss / size:8.2f} "
              f"{runs[0][3] / 1e9:7.2f}")
    shutil.rmtree(args.dir / "out", ignore_errors=True)


if __name__ == "__main__":
    main()
