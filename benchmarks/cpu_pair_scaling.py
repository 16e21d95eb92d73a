"""Do two single-thread processes get two cores' worth of compute? One FP32 1024^3 matmul loop alone, then two
side by side, then alone again (GFLOP/s each). If the pair each ran at ~half, the two vCPUs would share one
physical core (hyperthreads) and no two-worker speed-up could reach 2x; docs/quantization.md, section 4.

    python benchmarks/cpu_pair_scaling.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

LOOP = """
import sys, time, torch
torch.set_num_threads(1)
a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
for _ in range(3):
    a @ b
start, n = time.perf_counter(), 0
while time.perf_counter() - start < float(sys.argv[1]):
    a @ b
    n += 1
print(f"{n * 2 * 1024**3 / (time.perf_counter() - start) / 1e9:.1f}")
"""


def run(seconds: float, copies: int) -> list[str]:
    procs = [subprocess.Popen([sys.executable, "-c", LOOP, str(seconds)], stdout=subprocess.PIPE, text=True)
             for _ in range(copies)]
    return [p.communicate()[0].strip() for p in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    seconds = parser.parse_args().seconds
    print(f"alone: {run(seconds, 1)[0]} GFLOP/s")
    print(f"two side by side: {' and '.join(run(seconds, 2))} GFLOP/s")
    print(f"alone again: {run(seconds, 1)[0]} GFLOP/s")


if __name__ == "__main__":
    main()
