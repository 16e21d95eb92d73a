"""``mv4deploy run`` as a user runs it: a plan for this checkpoint runs and reports measured beside
predicted; a plan for another model or profile is refused with exit 2 and one line on stderr."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import REPO, run_cli

FIXTURES = REPO / "tests" / "fixtures" / "models"
CPU = {"name": "cpu-box", "host": {"memory": "8GiB", "bandwidth": "20GB/s", "cores": 2, "isa": ["avx512_bf16"],
                                   "compute": {"fp32": "100GFLOPS", "bf16": "100GFLOPS"}, "reserve": "1GiB"},
       "runtime_overhead": {"per_layer": "1ms", "host_bytes": "64MiB", "host_bytes_per_token": "1KiB"}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    profile = tmp / "cpu-box.yaml"
    profile.write_text(yaml.safe_dump(CPU))
    plan = tmp / "plan.json"
    result = run_cli("plan", "--model", FIXTURES / "tiny-v4", "--profile", profile, "--context", "64",
                     "--prefill-chunk", "32", "--out", plan, "--json")
    assert result.code == 0, result.stderr
    return tmp, profile, plan


def _one_line_error(result) -> str:
    assert result.code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and result.stdout == ""
    return lines[0]


def test_run_reports_measured_beside_predicted(setup):
    tmp, profile, plan = setup
    result = run_cli("run", FIXTURES / "tiny-v4", "--plan", plan, "--profile", profile, "--tokens", "4",
                     "--warmup", "1", "--repeats", "2", "--threads", "1", "--json")
    assert result.code == 0, result.stderr
    report = result.json()
    rows = {r["metric"]: r for r in report["comparison"]}
    assert set(rows) == {"decode tokens/s", "prefill tokens/s", "host RSS added (model)"}
    plan_data = json.loads(plan.read_text())
    assert rows["decode tokens/s"]["predicted"] == plan_data["estimates"]["decode_tokens_per_s"]
    host = next(d for d in plan_data["devices"] if d["name"] == "host")["breakdown"]
    model_bytes = host["weights"] + host["engram"] + host["kv_cache"] + host["activations"]
    engine = 64 * 2**20 + 1024 * 1 * 64                   # the engine's own: fixed + per token of context
    assert rows["host RSS added (model)"]["predicted"] == model_bytes + engine
    assert report["memory"]["engine_bytes"] == engine
    for row in rows.values():
        assert row["measured"] > 0 and row["ratio"] == pytest.approx(row["measured"] / row["predicted"])
    assert report["workload"] == {"batch": 1, "prompt_tokens": 59, "chunk": 32, "tokens": 4, "warmup": 1,
                                  "context_tokens": 64, "repeats": 2, "threads": 1}
    assert len(report["trials"]) == 2 and report["trials"][0]["prefill_tokens"] == 59
    assert report["executed"] == {}                  # a CPU-only plan: nothing crosses a tier
    assert report["memory"]["rss_peak_bytes"] > report["memory"]["rss_baseline_bytes"]


def test_a_plan_for_another_model_is_refused(setup):
    tmp, profile, plan = setup
    line = _one_line_error(run_cli("run", FIXTURES / "tiny-v41", "--plan", plan, "--profile", profile))
    assert "fingerprint.model" in line and "plan made for another model" in line


def test_a_plan_for_another_profile_is_refused(setup):
    tmp, profile, plan = setup
    other = tmp / "other.yaml"
    other.write_text(yaml.safe_dump({**CPU, "name": "other-box"}))
    line = _one_line_error(run_cli("run", FIXTURES / "tiny-v4", "--plan", plan, "--profile", other))
    assert "fingerprint.profile" in line and "'other-box'" in line
    changed = tmp / "changed.yaml"                   # same name, a figure re-measured since the plan
    changed.write_text(yaml.safe_dump({**CPU, "host": {**CPU["host"], "bandwidth": "25GB/s"}}))
    line = _one_line_error(run_cli("run", FIXTURES / "tiny-v4", "--plan", plan, "--profile", changed))
    assert "changed since the plan was made" in line


def test_plan_without_fingerprint_or_unknown_profile_is_refused(setup):
    tmp, profile, plan = setup
    data = json.loads(plan.read_text())
    old = tmp / "old.json"
    old.write_text(json.dumps({k: v for k, v in data.items() if k != "fingerprint"}))
    assert "older mv4deploy" in _one_line_error(run_cli("run", FIXTURES / "tiny-v4", "--plan", old))
    line = _one_line_error(run_cli("run", FIXTURES / "tiny-v4", "--plan", plan))     # no --profile
    assert "cpu-box" in line and "--profile" in line


def test_gpu_plan_without_cuda_needs_a_device_map(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    plan = tmp_path / "plan.json"
    assert run_cli("plan", "--model", FIXTURES / "tiny-v4", "--profile", "h100", "--context", "64",
                   "--out", plan, "--json").code == 0
    line = _one_line_error(run_cli("run", FIXTURES / "tiny-v4", "--plan", plan))
    assert "--device-map gpu:0=cpu" in line
    bad = _one_line_error(run_cli("run", FIXTURES / "tiny-v4", "--plan", plan, "--device-map", "gpu0:cpu"))
    assert "--device-map" in bad
    result = run_cli("run", FIXTURES / "tiny-v4", "--plan", plan, "--device-map", "gpu:0=cpu", "--tokens", "2",
                     "--warmup", "0", "--json")
    assert result.code == 0, result.stderr
    assert any(r["metric"] == "decode tokens/s" for r in result.json()["comparison"])


def test_bad_workload_options_are_one_line(setup):
    tmp, profile, plan = setup
    line = _one_line_error(run_cli("run", FIXTURES / "tiny-v4", "--plan", plan, "--profile", profile,
                                   "--prompt-tokens", "100"))
    assert "--prompt-tokens" in line and "64" in line
    line = _one_line_error(run_cli("run", FIXTURES / "tiny-v4", "--plan", plan, "--profile", profile,
                                   "--threads", "0"))
    assert "--threads" in line


@pytest.mark.parametrize("field, edit", [
    ("groups[0]", lambda d: d["groups"][0].update(bytes="abc")),
    ("kv_cache.pools", lambda d: d.update(kv_cache={})),
    ("devices[0]", lambda d: d["devices"][0].pop("name")),
    ("workload.context_tokens", lambda d: d["workload"].update(context_tokens="256")),
    ("groups", lambda d: d.update(groups={"a": 1})),
])
def test_a_malformed_plan_is_one_line_naming_the_field(setup, field, edit):
    tmp, profile, plan = setup
    data = json.loads(plan.read_text())
    edit(data)
    bad = tmp / f"bad-{field}.json"
    bad.write_text(json.dumps(data))
    line = _one_line_error(run_cli("run", FIXTURES / "tiny-v4", "--plan", bad, "--profile", profile))
    assert field in line, line
    listed = tmp / "list.json"
    listed.write_text("[1, 2]")
    assert "a plan is a JSON object" in _one_line_error(run_cli("run", FIXTURES / "tiny-v4", "--plan", listed))


def test_a_run_filling_less_than_the_context_says_so(setup):
    tmp, profile, plan = setup
    result = run_cli("run", FIXTURES / "tiny-v4", "--plan", plan, "--profile", profile, "--prompt-tokens", "16",
                     "--tokens", "2", "--warmup", "0", "--json")
    assert result.code == 0, result.stderr
    assert any("fills 18 of the plan's 64 context tokens" in d for d in result.json()["deviations"])
