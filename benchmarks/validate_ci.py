"""How long a full CI-style ``mv4deploy validate`` takes on the fixtures: KLD, long context and tasks at once.

    python benchmarks/validate_ci.py                 # the docs/ci.md job's validate steps, timed
    python benchmarks/validate_ci.py --items 300     # every item of the local task

Each case is a fresh ``python -m mv4deploy validate ... --json`` process (interpreter, torch and lm-eval
imports, model loading all count) with OMP_NUM_THREADS=2. Cases (candidate -> expected verdict):
- fp8: ``mv4deploy quantize --recipe fp8`` of tiny-v4 -> pass;
- hca: tiny-v4 with only its HCA compressor damaged (layer 2) -> fail on context growth only;
- expert: expert 0 of layer 0 sign-flipped and tripled -> fail on task accuracy.
Printed per case: wall seconds, the command's own split (load, short chunks, contexts, tasks), the gate's
failures. The target: the whole job under 15 minutes on this 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from _support.damage import EXPERT_0_OF_LAYER_0, HCA_COMPRESSOR, scale_tensors  # noqa: E402

MODELS = REPO / "tests" / "fixtures" / "models"
EVAL = REPO / "tests" / "fixtures" / "eval.txt"
GATE = {"kld_mean_max": 0.001, "kld_p99_max": 0.011, "top1_min": 0.97, "context_kld_mean_growth_max": 0.001,
        "context_ppl_ratio_growth_max": 1.01, "task_acc_drop_max": 0.03, "task_worse_p_min": 0.05}


def mv4deploy(*args: str) -> tuple[float, int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2", "NO_COLOR": "1"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mv4deploy", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=REPO)
    return time.perf_counter() - start, proc.returncode, proc.stdout, proc.stderr


def candidates(root: Path) -> dict[str, Path]:
    wall, code, _, err = mv4deploy("quantize", MODELS / "tiny-v4", root / "fp8", "--recipe", "fp8")
    if code:
        sys.exit(f"quantize failed: {err.strip()}")
    print(f"quantize --recipe fp8: {wall:.1f} s")
    scale_tensors(MODELS / "tiny-v4", root / "hca", HCA_COMPRESSOR, -4.0)
    scale_tensors(MODELS / "tiny-v4", root / "expert", EXPERT_0_OF_LAYER_0, -3.0)
    return {"fp8": root / "fp8", "hca": root / "hca", "expert": root / "expert"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=150, help="items of the local task (300 in all)")
    parser.add_argument("--contexts", default="128,512,2048")
    parser.add_argument("--windows", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        gate = root / "gate.yaml"
        gate.write_text("".join(f"{k}: {v}\n" for k, v in GATE.items()))
        started, details = time.perf_counter(), []
        cases = candidates(root)
        print(f"{'case':8} {'wall_s':>7} {'load_s':>7} {'short_s':>7} {'ctx_s':>7} {'tasks_s':>7} "
              f"{'kld_mean':>9} {'ctx_growth':>10} {'acc_drop':>8} {'worse_p':>8}  verdict")
        for name, cand in cases.items():
            wall, code, out, err = mv4deploy(
                "validate", "--reference", MODELS / "tiny-v4", "--candidate", cand, "--eval", EVAL, "--chunk", "128",
                "--max-chunks", "8", "--contexts", args.contexts, "--context-windows", args.windows,
                "--tasks", "mv4-nextline", "--task-limit", args.items, "--gate", gate, "--json")
            if code not in (0, 1):
                sys.exit(f"{name}: exit {code}: {err.strip()}")
            d = json.loads(out)
            s = d["seconds"]
            verdict = "pass" if code == 0 else "FAIL " + ",".join(d["gate"]["failed"])
            print(f"{name:8} {wall:7.1f} {s['load_s']:7.1f} {s['score_s']:7.1f} {s['contexts_s']:7.1f} "
                  f"{s['tasks_s']:7.1f} {d['kld_mean']:9.2e} {d['context_kld_mean_growth']:10.2e} "
                  f"{d['task_acc_drop']:8.3f} {d['task_worse_p']:8.3g}  {verdict}", flush=True)
            details.append((name, d))
        print(f"whole job: {time.perf_counter() - started:.0f} s (target: under 900 s)")
        _details(details)


def _details(details: list[tuple[str, dict]]) -> None:
    """Per case: each context length's mean KLD and PPL ratio, and the task's paired counts."""
    for name, d in details:
        rows = ", ".join(f"{r['context_tokens']}: KLD {r['kld_mean']:.2e} ratio {r['ppl_ratio']:.4f}"
                         for r in d["contexts"]["per_length"])
        t = d["tasks"][0]
        print(f"{name}: contexts {rows}; task acc {t['acc_reference']:.3f} -> {t['acc_candidate']:.3f}, "
              f"only ref {t['reference_only']}, only cand {t['candidate_only']}, McNemar p {t['mcnemar_p']:.3g}")


if __name__ == "__main__":
    main()
