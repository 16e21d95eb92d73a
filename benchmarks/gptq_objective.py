"""GPTQ against round-to-nearest INT4 on the objective GPTQ minimises, tr(ΔW H ΔWᵀ), on synthetic data.

    PYTHONPATH=. python benchmarks/gptq_objective.py [--seeds 5]

The data of ``tests/test_quant_gptq.py::test_gptq_beats_round_to_nearest_on_the_layer_output``: a [96, 384]
weight, 3,000 correlated tokens with six outlier channels (x8), H = XᵀX; seed 0 is the test's. For each
group size (128, 32) it prints GPTQ's objective over RTN's per seed and the median (min-max) over seeds.
Deterministic for a seed (one torch thread), so the spread is the data's, not the machine's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def correlated(seed: int, rows: int = 96, cols: int = 384, tokens: int = 3000):
    """The test's ``_correlated``: weight [rows, cols] and H = XᵀX [cols, cols]."""
    import torch
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.02
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    x = torch.randn(tokens, cols, generator=g) @ mix
    x[:, :6] *= 8
    return w, x.T @ x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    seeds = range(parser.parse_args().seeds)
    import torch
    from _support.gptq_objective import rtn_hessian_error
    from mv4deploy.quant.gptq import gptq_quantize
    torch.set_num_threads(1)
    for group in (128, 32):
        ratios = []
        for seed in seeds:
            w, h = correlated(seed)
            ratios.append(gptq_quantize(w, h, group).hessian_error / rtn_hessian_error(w, h, group))
        each = ", ".join(f"{r:.3f}" for r in ratios)
        print(f"group {group}: GPTQ / RTN objective per seed {each}; median {statistics.median(ratios):.3f} "
              f"({min(ratios):.3f}-{max(ratios):.3f}) over {len(ratios)} seeds")


if __name__ == "__main__":
    main()
