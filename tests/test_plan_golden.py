"""Golden plans: the full ``plan --json`` of a few model x profile pairs, reviewed as diffs.

``pytest tests/test_plan_golden.py --update-golden`` rewrites ``tests/golden/plan_<profile>_<model>.json``
from the current code; the diff is what a reviewer reads. Floats are compared at 6 significant digits so a
last-bit difference between platforms is not a change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mv4deploy.hardware.profile import load_profile
from mv4deploy.model.source import resolve_model
from mv4deploy.plan.make import make_plan
from mv4deploy.plan.workload import make_workload

GOLDEN = Path(__file__).parent / "golden"
CASES = [  # (model, profile, workload, host memory)
    ("deepseek-v4-flash", "rtx5090", {}, None),
    ("deepseek-v4.1-flash", "rtx4090x2", {"context": 32768}, 256 * 2**30),
    ("deepseek-r1-distill-qwen-7b", "snapdragon-8-elite-gen5", {"context": 4096}, None),
    ("tiny-deepseek-v4", "rtx5090", {"context": 4096}, None),
]


def normalized(value):
    """Floats to 6 significant digits, recursively; keys sorted when dumped."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalized(v) for v in value]
    return value


@pytest.mark.parametrize("model, profile, workload, host", CASES, ids=[f"{m}-{p}" for m, p, _, _ in CASES])
def test_plan_matches_golden(model, profile, workload, host, update_golden):
    plan = make_plan(resolve_model(model), load_profile(profile), make_workload(**workload), host_mem_bytes=host)
    got = normalized(plan.to_json())
    path = GOLDEN / f"plan_{profile}_{model}.json"
    if update_golden:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert path.is_file(), f"{path} missing: run pytest {__file__} --update-golden"
    assert got == json.loads(path.read_text())
