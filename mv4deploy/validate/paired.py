"""Task accuracy of a reference and a candidate on the same items: Wilson intervals and McNemar's exact test.

Both models answer the same items, so their accuracies are paired: what matters is the items on which
they disagree. With b = items only the reference gets right and c = items only the candidate gets right,
McNemar's exact test asks whether b and c could be a fair coin's split of the b + c discordant items
(``scipy.stats.binomtest(b, b + c, 0.5)``): two-sided (``mcnemar_p``: did the candidate change?) and
one-sided (``worse_p``: is the candidate worse?). Identical answers give b = c = 0 and p = 1.

Accuracy intervals are two-sided Wilson score intervals at ``level`` (each end is ``stats.wilson_interval``'s
one-sided bound at (1 + level) / 2).

Gate keys (the worst task): ``task_acc_drop`` (reference accuracy minus candidate's, the largest),
``task_worse_p`` and ``task_mcnemar_p`` (the smallest), ``task_items`` (the fewest items).
"""

from __future__ import annotations

from mv4deploy.validate.stats import wilson_interval

GATE_KEYS = ("task_acc_drop", "task_worse_p", "task_mcnemar_p", "task_items")


def mcnemar_exact(reference_only: int, candidate_only: int) -> tuple[float, float]:
    """(two-sided p, one-sided p that the candidate is worse) from the discordant counts b, c."""
    from scipy.stats import binomtest
    n = reference_only + candidate_only
    if n == 0:
        return 1.0, 1.0
    two_sided = binomtest(reference_only, n, 0.5).pvalue
    worse = binomtest(reference_only, n, 0.5, alternative="greater").pvalue
    return float(two_sided), float(worse)


def compare_task(task: str, reference: dict[int, bool], candidate: dict[int, bool], level: float = 0.95) -> dict:
    """Paired statistics of one task from per-item correctness ``{doc_id: correct}`` of each model."""
    if set(reference) != set(candidate):
        raise ValueError(f"task {task}: the two models answered different items")
    n = len(reference)
    if n == 0:
        raise ValueError(f"task {task}: no items")
    both = sum(reference[i] and candidate[i] for i in reference)
    ref_only = sum(reference[i] and not candidate[i] for i in reference)
    cand_only = sum(candidate[i] and not reference[i] for i in reference)
    two_sided, worse = mcnemar_exact(ref_only, cand_only)
    out = {"task": task, "items": n, "both_right": both, "reference_only": ref_only, "candidate_only": cand_only,
           "both_wrong": n - both - ref_only - cand_only, "ci_level": level}
    for name, right in (("reference", both + ref_only), ("candidate", both + cand_only)):
        low, high = wilson_interval(right, n, (1 + level) / 2)
        out.update({f"acc_{name}": right / n, f"acc_{name}_low": low, f"acc_{name}_high": high})
    out.update(acc_drop=(ref_only - cand_only) / n, mcnemar_p=two_sided, worse_p=worse)
    return out


def gate_values(rows: list[dict] | None) -> dict:
    """The gate keys over every task (None without ``--tasks``)."""
    if not rows:
        return dict.fromkeys(GATE_KEYS)
    return {"task_acc_drop": max(r["acc_drop"] for r in rows), "task_worse_p": min(r["worse_p"] for r in rows),
            "task_mcnemar_p": min(r["mcnemar_p"] for r in rows), "task_items": min(r["items"] for r in rows)}
