"""Speed of each format's quantize kernel on one [2048, 4096] BF16 weight (V4-Flash expert shape), one torch
thread (as the pipeline runs each worker), best of 3 after a warm-up. No I/O, no hashing: the kernels alone.

    python benchmarks/quantize_kernel_speed.py [format ...]

Run it with ``PYTHONPATH`` pointing at two checkouts, back to back, to compare kernels on a shared machine.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMATS = ["fp8-e4m3-block128-ue8m0", "fp8-e4m3-block128", "int4-g128", "int4-g32", "mxfp4", "nf4", "nvfp4"]


def main() -> None:
    import torch

    from mv4deploy.formats import get_format
    torch.set_num_threads(1)
    x = (torch.randn(2048, 4096, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    for name in sys.argv[1:] or FORMATS:
        fmt = get_format(name)
        fmt.quantize("w", x)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            fmt.quantize("w", x)
            best = min(best, time.perf_counter() - start)
        print(f"{name:26s} {best * 1e3:7.1f} ms  {x.numel() * 2 / best / 1e9:5.2f} GB/s of BF16 input")


if __name__ == "__main__":
    main()
