"""``validate --tasks``: task accuracy through lm-evaluation-harness on both models, paired.

Runs offline on the task shipped in tasks/mv4-nextline (lm-eval's YAML format, a JSONL beside it). Skipped
when lm_eval is not installed (it is the optional ``tasks`` extra).
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager

import pytest

from _support.damage import EXPERT_0_OF_LAYER_0, scale_tensors
from conftest import REPO, run_cli
from mv4deploy.core.errors import InputError
from mv4deploy.validate.paired import compare_task, mcnemar_exact

MODELS = REPO / "tests" / "fixtures" / "models"
EVAL = REPO / "tests" / "fixtures" / "eval.txt"
GATE = REPO / "tests" / "gates" / "tiny-v4-tasks.yaml"
ITEMS = "150"


def test_mcnemar_exact_by_hand():
    # 12 items only the reference got, 2 only the candidate: P(X >= 12 | n=14, 1/2) = (91 + 14 + 1) / 2**14
    two_sided, worse = mcnemar_exact(12, 2)
    assert worse == pytest.approx(106 / 16384, rel=1e-12) and two_sided == pytest.approx(2 * 106 / 16384, rel=1e-12)
    assert mcnemar_exact(0, 0) == (1.0, 1.0) and mcnemar_exact(2, 12)[1] > 0.99


def test_paired_counts_and_wilson_intervals():
    from scipy.stats import binomtest
    ref = {i: i < 80 for i in range(100)}                 # 80 right
    cand = {i: 10 <= i < 85 for i in range(100)}          # 75 right: 10 lost, 5 gained
    row = compare_task("t", ref, cand)
    assert (row["both_right"], row["reference_only"], row["candidate_only"], row["both_wrong"]) == (70, 10, 5, 15)
    assert row["acc_drop"] == pytest.approx(0.05) and row["worse_p"] == pytest.approx(
        binomtest(10, 15, 0.5, alternative="greater").pvalue)
    ci = binomtest(75, 100).proportion_ci(0.95, method="wilson")
    assert (row["acc_candidate_low"], row["acc_candidate_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)
    same = compare_task("t", ref, ref)
    assert same["acc_drop"] == 0 and same["mcnemar_p"] == 1.0 and same["reference_only"] == 0


def test_a_missing_task_file_is_one_line_exit_2():
    from mv4deploy.validate.tasks import parse_tasks
    with pytest.raises(InputError, match="task file not found"):
        parse_tasks("nowhere/task.yaml")
    spec = parse_tasks("mv4-nextline")[0]
    assert spec.name == "mv4_nextline" and spec.config["dataset_kwargs"]["data_files"]["test"].startswith("/")


@pytest.fixture(scope="module")
def expert_damaged(tmp_path_factory):
    dst = tmp_path_factory.mktemp("tasks") / "tiny-v4-expert"
    assert scale_tensors(MODELS / "tiny-v4", dst, EXPERT_0_OF_LAYER_0, -3.0) == ["layers.0.ffn.experts.0.w2.weight"]
    return dst


def test_a_damaged_expert_loses_task_accuracy_and_the_paired_test_flags_it(expert_damaged):
    pytest.importorskip("lm_eval")
    r = run_cli("validate", "--reference", MODELS / "tiny-v4", "--candidate", expert_damaged, "--eval", EVAL,
                "--max-chunks", "1", "--tasks", "mv4-nextline", "--task-limit", ITEMS, "--gate", GATE, "--json",
                timeout=900)
    assert r.code == 1, r.stderr
    task = json.loads(r.stdout)["tasks"][0]
    assert task["task"] == "mv4_nextline" and task["items"] == 150
    assert task["acc_reference"] > 0.8                                   # the tiny model can do the task
    assert task["reference_only"] > 3 * task["candidate_only"] and task["acc_drop"] > 0.03
    assert task["worse_p"] < 0.05 and task["mcnemar_p"] < 0.05
    assert task["acc_reference_low"] < task["acc_reference"] < task["acc_reference_high"]
    assert "task_worse_p" in r.stderr and "task_acc_drop" in r.stderr


def test_identical_models_give_zero_difference_everywhere():
    pytest.importorskip("lm_eval")
    from mv4deploy.validate.contexts import parse_contexts
    from mv4deploy.validate.run import ValidateRequest, validate
    from mv4deploy.validate.tasks import parse_tasks
    seen = []

    @contextmanager
    def progress(description, total):
        seen.append(description)
        yield lambda n=1: None
    req = ValidateRequest(reference=MODELS / "tiny-v4", candidate=MODELS / "tiny-v4", eval_path=EVAL, max_chunks=2,
                          contexts=parse_contexts("128,512"), context_windows=1, tasks=parse_tasks("mv4-nextline"),
                          task_limit=30)
    data = validate(req, progress).to_json()
    assert data["kld_max"] == 0 and data["context_kld_mean_growth"] == 0 and data["context_ppl_ratio_growth"] == 1
    assert all(row["kld_max"] == 0 for row in data["contexts"]["per_length"])
    task = data["tasks"][0]
    assert task["acc_drop"] == 0 and task["reference_only"] == task["candidate_only"] == 0
    assert task["mcnemar_p"] == 1.0 and math.isclose(task["acc_reference"], task["acc_candidate"])
    for step in ("loading the reference", "loading the candidate", "scoring chunks", "context 128", "context 512",
                 "tasks: reference", "tasks: candidate"):
        assert any(s.startswith(step) for s in seen), (step, seen)


@pytest.mark.parametrize("task, says", [("arc_easy", "HF cache"), ("no_such_task_xyz", "not a registered task")])
def test_a_task_lm_eval_cannot_run_offline_is_one_line_exit_2(task, says):
    pytest.importorskip("lm_eval")
    r = run_cli("validate", "--reference", MODELS / "tiny-qwen2", "--candidate", MODELS / "tiny-qwen2", "--eval", EVAL,
                "--max-chunks", "1", "--tasks", task)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.code == 2 and len(errors) == 1 and task in errors[0] and says in errors[0], r.stderr


def test_the_report_has_the_context_and_task_tables():
    from mv4deploy.validate.report import context_lines, task_lines
    row = {"context_tokens": 2048, "kld_mean": 0.005475, "kld_mean_unc": 0.001168, "kld_p99": 0.06583,
           "same_top1": 0.921875, "ppl_base": 56.663, "ppl_ratio": 1.0037, "kld_mean_growth": 0.005475,
           "ppl_ratio_growth": 1.0037}
    lines = context_lines({"windows": 2, "scored_per_window": 64, "per_length": [row]})
    assert "| 2048 | 0.005475 ± 0.001168 | 0.06583 | 92.19 % | 56.663 | 1.0037 | +0.005475 | x1.0037 |" in lines
    task = compare_task("mv4_nextline", {i: i < 133 for i in range(150)},
                        {i: i < 121 or 133 <= i < 135 for i in range(150)})
    text = "\n".join(task_lines([task]))
    assert "| mv4_nextline | 150 | 88.7 % [" in text and "| -6.7 pt |" not in text and "| +6.7 pt | 12 / 2 |" in text
    assert context_lines(None) == [] and task_lines(None) == []
