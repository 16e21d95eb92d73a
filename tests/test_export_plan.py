"""``mv4deploy plan`` for DeepSeek-R1-Distill-Qwen-7B on the phone agrees with what the cpu-int4 export stores.

``export.footprint`` lists the export's tensors for any config (its formula is checked byte for byte
against real tiny exports in tests/test_export.py); here it is evaluated for the real 7B config and
compared with the plan: weight bytes, KV bytes at the context, decode tokens/s from the profile's
84.8 GB/s, and whether the app budget (usable_fraction 0.45 of 16 GiB) is exceeded.

Two differences are deliberate and counted exactly: the planner keeps norms and biases as the checkpoint
stores them (BF16; the export writes F32, +666,624 B) and does not count the builder's cos/sin table
(2 x 131,072 x 64 x 4 = 67,108,864 B); together 1.4% of the export, and one row of them per token.
"""

from __future__ import annotations

from math import prod

import pytest

from conftest import run_cli
from _support.footprint import export_items, footprint, phone_budget
from mv4deploy.export.targets import load_target
from mv4deploy.hardware.profile import load_profile
from mv4deploy.model.source import resolve_model

MODEL, PROFILE = "deepseek-r1-distill-qwen-7b", "snapdragon-8-elite-gen5"


@pytest.fixture(scope="module")
def export_side():
    spec = resolve_model(MODEL).spec
    target = load_target("cpu-int4")
    return spec, target, export_items(spec, target)


def _plan(context: int) -> dict:
    result = run_cli("plan", "--model", MODEL, "--profile", PROFILE, "--context", str(context), "--json")
    assert result.code == 0, result.stderr
    return result.json()


def test_policy_names_the_export_format(export_side):
    _, target, _ = export_side
    formats = {g["role"]: g["format"] for g in _plan(4096)["groups"]}
    assert formats["attention"] == formats["dense_mlp"] == formats["head"] == formats["embedding"] == \
        target.weights.format == "mnb-int4-b32"


@pytest.mark.parametrize("context, exceeds", [(4096, False), (16384, False), (32768, True), (131072, True)])
def test_plan_agrees_with_the_export(export_side, context, exceeds):
    spec, target, items = export_side
    plan = _plan(context)
    npu = plan["devices"][0]["breakdown"]
    as_stored = sum(2 * prod(i.shape) for i in items if i.kind in ("norm", "bias"))        # BF16
    quantized = sum(i.nbytes for i in items if i.kind in ("embedding", "matmul", "head"))
    assert npu["weights"] == quantized + as_stored
    fp = footprint(spec, target, context)
    rope = sum(i.nbytes for i in items if i.kind == "rope")
    assert fp.weight_bytes - npu["weights"] == rope + as_stored == 67_108_864 + 666_624
    assert fp.kv_bytes == context * 2 * 28 * 4 * 128 * 4                                 # fp32 K and V
    budget = phone_budget(fp, load_profile(PROFILE))
    assert budget["bandwidth_bytes_per_s"] == 84.8e9 and budget["budget_bytes"] == int(0.45 * 16 * 2**30)
    assert budget["exceeds_budget"] is exceeds
    assert (plan["verdict"] == "does_not_fit") is exceeds
    if not exceeds:   # a plan that does not fit places no KV and predicts no speed
        assert npu["kv_cache"] == fp.kv_bytes
        # same bytes per step but the F32 norms (+0.67 MB) and one rope row: within 0.02%
        assert plan["estimates"]["decode_tokens_per_s"] == pytest.approx(budget["tokens_per_s"], rel=2e-4)


def test_when_over_budget_the_plan_suggests_the_context_the_export_fits(export_side):
    spec, target, _ = export_side
    suggestion = next(s for s in _plan(131072)["suggestions"] if s["kind"] == "context")
    fitting = int(suggestion["change"].split()[-1])
    profile = load_profile(PROFILE)
    assert not phone_budget(footprint(spec, target, fitting), profile)["exceeds_budget"]
    assert phone_budget(footprint(spec, target, 2 * fitting), profile)["exceeds_budget"]
