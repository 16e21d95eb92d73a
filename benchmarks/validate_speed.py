"""How long ``mv4deploy validate`` takes on tiny-v4, model loading included, on ``--threads`` threads.

    python benchmarks/validate_speed.py                     # tests/fixtures/models/tiny-v4 (+ -fp8fp4)
    python benchmarks/validate_speed.py --chunks 8 --repeat 3
    python benchmarks/validate_speed.py --qwen2             # tiny-qwen2 vs its FP8-rounded copy (transformers)

Each case runs as a user runs it, a fresh ``python -m mv4deploy validate`` process (interpreter start,
torch import, tokenizer and model loading all count), with OMP_NUM_THREADS=``--threads`` (default 1: on the
shared 2-core machine two OpenMP threads made score_s swing 0.45-8.3 s for the same 2 chunks, one thread
is steady). Printed per case: median
wall seconds over ``--repeat`` runs with their min-max, and the command's own split from ``--json`` (load_s:
models and tokenizers, score_s: the chunks), also as median (min-max); the load average (``os.getloadavg``)
before and after. The issue's target: under 60 s for 2 x 256-token chunks. ``--cases full`` runs one case.

Cases: self (reference against itself), full (reference vs candidate, both loaded), golden-out (reference
only, writes the golden file), golden (candidate against the golden file; the reference is not loaded).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "tests" / "fixtures" / "models"


def run(args: list[str], threads: int) -> tuple[float, dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads), "NO_COLOR": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mv4deploy", "validate", *args, "--json"], capture_output=True,
                          text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"mv4deploy validate {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return wall, json.loads(proc.stdout)


def qwen2(root: Path) -> tuple[Path, Path, Path]:
    sys.path.insert(0, str(REPO / "tests"))
    from validate_fixtures import build_tiny_models
    tiny = build_tiny_models(root / "tiny")
    return tiny.ref, tiny.fp8, tiny.eval_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=MODELS / "tiny-v4")
    parser.add_argument("--candidate", type=Path, default=MODELS / "tiny-v4-fp8fp4")
    parser.add_argument("--eval", type=Path, default=REPO / "tests" / "fixtures" / "eval.txt")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run (default 1)")
    parser.add_argument("--cases", default="self,full,golden-out,golden", help="comma-separated cases to run")
    parser.add_argument("--qwen2", action="store_true", help="tiny-qwen2 and its FP8-rounded copy instead")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ref, cand, text = qwen2(Path(tmp)) if opts.qwen2 else (opts.reference, opts.candidate, opts.eval)
        for path in (ref, cand, text):
            if not path.exists():
                sys.exit(f"{path} is missing")
        golden = Path(tmp) / "golden.safetensors"
        base = ["--eval", str(text), "--chunk", str(opts.chunk), "--max-chunks", str(opts.chunks)]
        cases = {"self": ["--reference", str(ref), "--candidate", str(ref), *base],
                 "full": ["--reference", str(ref), "--candidate", str(cand), *base],
                 "golden-out": ["--reference", str(ref), "--golden-out", str(golden), *base],
                 "golden": ["--golden", str(golden), "--candidate", str(cand)]}
        wanted = opts.cases.split(",")
        cases = {name: args for name, args in cases.items() if name in wanted or (name == "golden-out"
                                                                                     and "golden" in wanted)}
        print(f"load average {os.getloadavg()[0]:.1f}")
        print(f"reference {ref}\ncandidate {cand}\neval {text}: {opts.chunks} x {opts.chunk} tokens, "
              f"{os.cpu_count()} CPUs visible, OMP_NUM_THREADS={opts.threads}, median of {opts.repeat}")
        print(f"{'case':<11} {'wall_s (min-max)':>19} {'load_s (min-max)':>19} {'score_s (min-max)':>19} "
              f"{'tokens':>7} {'kld_mean':>10} {'top1':>7}")
        worst = 0.0
        for name, args in cases.items():
            runs = [run(args, opts.threads) for _ in range(opts.repeat)]
            walls = [w for w, _ in runs]
            worst = max(worst, *walls)
            data = runs[-1][1]
            kld = "-" if data["kld_mean"] is None else f"{data['kld_mean']:.3g}"
            top1 = "-" if data["same_top1"] is None else f"{data['same_top1']:.4f}"
            loads = [d["seconds"]["load_s"] for _, d in runs]
            scores = [d["seconds"]["score_s"] for _, d in runs]
            print(f"{name:<11} {spread(walls):>19} {spread(loads):>19} {spread(scores):>19} "
                  f"{data['chunks'] * data['scored_per_chunk']:7d} {kld:>10} {top1:>7}")
        print(f"slowest single run: {worst:.2f} s (target: under 60 s); load average {os.getloadavg()[0]:.1f}")


def spread(values: list[float]) -> str:
    """Median (min-max), two decimals."""
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


if __name__ == "__main__":
    main()
