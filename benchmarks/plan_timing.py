"""Wall and CPU time of `mv4deploy plan` as a user runs it (a fresh process, imports included).

The acceptance is "under 1 s wall on this machine" for V4-Flash on rtx5090 (no other argument) and for
V4-Pro on b200x8. This machine has 2 cores shared by several engineers, so the script also reports CPU
time (user + system of the child), which is what the planner itself costs; wall time adds the wait for a
core. It also shows where the time goes in-process. Run:
    PYTHONPATH=. python benchmarks/plan_timing.py [--repeat N]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "V4-Flash on rtx5090": ["plan", "--profile", "rtx5090"],
    "V4-Pro on b200x8": ["plan", "--profile", "b200x8", "--model", "deepseek-v4-pro"],
}


def run_once(args: list[str]) -> tuple[float, float]:
    start, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-m", "mv4deploy", *args], check=True, capture_output=True, cwd=REPO,
                   env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "120"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.perf_counter() - start, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def stages(model: str, profile: str) -> dict[str, float]:
    """In-process breakdown (imports already done by the caller)."""
    sys.path.insert(0, str(REPO))
    from mv4deploy.hardware.profile import load_profile
    from mv4deploy.model.source import resolve_model
    from mv4deploy.plan.make import make_plan
    from mv4deploy.plan.groups import build_groups
    from mv4deploy.plan.workload import make_workload
    marks = {}
    t = time.perf_counter()
    resolved = resolve_model(model)
    marks["inventory"] = time.perf_counter() - t
    t = time.perf_counter()
    build_groups(resolved.inventory)
    marks["groups"] = time.perf_counter() - t
    t = time.perf_counter()
    make_plan(resolved, load_profile(profile), make_workload(), suggest=False)
    marks["plan"] = time.perf_counter() - t
    t = time.perf_counter()
    make_plan(resolved, load_profile(profile), make_workload())
    marks["plan + suggestions"] = time.perf_counter() - t
    return marks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    repeat = parser.parse_args().repeat
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; {repeat} runs each")
    for label, args in COMMANDS.items():
        runs = [run_once(args) for _ in range(repeat)]
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        print(f"{label}: `mv4deploy {' '.join(args)}` wall median {statistics.median(walls):.3f} s "
              f"({min(walls):.3f}-{max(walls):.3f}), CPU median {statistics.median(cpus):.3f} s "
              f"({min(cpus):.3f}-{max(cpus):.3f})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    t = time.perf_counter()
    import mv4deploy.cli  # noqa: F401  (what the command imports: typer, rich, the planner)
    print(f"imports (cli, typer, rich, planner): {time.perf_counter() - t:.3f} s")
    for label, (model, profile) in {"V4-Flash on rtx5090": ("deepseek-v4-flash", "rtx5090"),
                                    "V4-Pro on b200x8": ("deepseek-v4-pro", "b200x8")}.items():
        print(f"{label} in-process: " + ", ".join(f"{k} {v:.3f} s" for k, v in stages(model, profile).items()))


if __name__ == "__main__":
    main()
