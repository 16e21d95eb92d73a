"""The Markdown report of a validation run and its KLD histogram (matplotlib, imported only here).

The report holds what a reviewer needs to accept or reject a checkpoint: which models, which text and
chunking, the gate's outcome limit by limit, every statistic with its uncertainty (llama.cpp's labels),
and a picture of how the per-token KLD is distributed: a long right tail with a small mean is a different
problem from a shifted bulk.
"""

from __future__ import annotations

import os
from pathlib import Path

from mv4deploy.core.fileio import atomic_path, write_text_atomic
from mv4deploy.validate.table import STAT_SECTIONS, format_row

KLD_FLOOR = 1e-10   # the lowest edge the log axis goes down to (identical tokens give 0, rounding tiny negatives)
HISTOGRAM_BINS = 60


def default_plot_path(report: Path) -> Path:
    report = Path(report)
    return report.with_name(f"{report.stem}-kld.png")


def plot_kld_histogram(kld, path: Path, title: str) -> None:
    """Histogram of per-position KLD on a log axis, with the mean and the 99th percentile marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    values = np.asarray(kld, dtype=np.float64)
    values = values[np.isfinite(values)]
    positive = values[values > KLD_FLOOR]
    low = max(KLD_FLOOR, float(positive.min()) / 2) if positive.size else KLD_FLOOR
    clipped = np.maximum(values, low)
    top = max(float(clipped.max()) if clipped.size else low, low * 10)
    bins = np.logspace(np.log10(low), np.log10(top) + 1e-9, HISTOGRAM_BINS)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.hist(clipped, bins=bins, color="#4878d0", edgecolor="white", linewidth=0.3)
    ax.set_xscale("log")
    if values.size:
        for value, style, name in ((values.mean(), "-", "mean"), (np.percentile(values, 99), "--", "99%")):
            ax.axvline(max(value, low), color="#d65f5f", linestyle=style, label=f"{name} {value:.3g}")
        ax.legend(loc="upper right")
    ax.set_xlabel(f"KL divergence per scored token (nats; values <= {low:.2g}, 0 included, in the first bin)")
    ax.set_ylabel("tokens")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def markdown(data: dict, plot: Path | None, report: Path) -> str:
    """The report for ``ValidationResult.to_json()`` output ``data``; ``plot`` linked relative to ``report``."""
    ref, cand = data["reference"], data["candidate"] or {"path": "(none)", "kind": "-", "tokenizer_sha256": ""}
    lines = [f"# Validation: `{Path(cand['path']).name}` against `{Path(ref['path']).name}`", "",
             f"- reference: `{ref['path']}` ({ref['kind']}, tokenizer `{ref['tokenizer_sha256'][:12]}`)",
             f"- candidate: `{cand['path']}` ({cand['kind']}, tokenizer `{cand['tokenizer_sha256'][:12]}`)",
             f"- eval text: `{data['eval']['name']}` (sha256 `{data['eval']['sha256'][:12]}`, "
             f"{data['eval']['tokens']:,} tokens): {data['chunks']} chunks of {data['chunk_tokens']} tokens, "
             f"{data['tokens_scored']} positions scored (the second half of each chunk)"]
    if data["golden"]:
        lines.append(f"- reference log-probs from golden file `{data['golden']}` (top-k + remaining mass)")
    lines += ["", *gate_lines(data["gate"]), "", "## Statistics", "", *stat_lines(data)]
    lines += context_lines(data.get("contexts")) + task_lines(data.get("tasks"))
    if plot is not None:
        link = os.path.relpath(Path(plot).resolve(), Path(report).resolve().parent)
        lines += ["## KLD per scored token", "", f"![KLD histogram]({link})", ""]
    return "\n".join(lines) + "\n"


def stat_lines(summary: dict) -> list[str]:
    """Markdown tables of every statistic (``STAT_SECTIONS``), one ``###`` section each."""
    lines = []
    for section, rows in STAT_SECTIONS:
        lines += [f"### {section}", "", "| statistic | value |", "|---|---|"]
        lines += [f"| {row.label} | {format_row(row, summary)} |" for row in rows]
        lines.append("")
    return lines


def context_lines(contexts: dict | None) -> list[str]:
    """``--contexts``: one row per length (the same targets at each), growth against the shortest."""
    if not contexts:
        return []
    lines = ["## Long context", "", f"{contexts['windows']} windows x {contexts['scored_per_window']} targets per "
             "length; every length scores the same targets.", "",
             "| context | mean KLD | KLD p99 | same top 1 | PPL(base) | PPL ratio | KLD growth | PPL ratio growth |",
             "|---|---|---|---|---|---|---|---|"]
    for r in contexts["per_length"]:
        lines.append(f"| {r['context_tokens']} | {r['kld_mean']:.6f} ± {r['kld_mean_unc']:.6f} | {r['kld_p99']:.5f} | "
                     f"{100 * r['same_top1']:.2f} % | {r['ppl_base']:.3f} | {r['ppl_ratio']:.4f} | "
                     f"{r['kld_mean_growth']:+.6f} | x{r['ppl_ratio_growth']:.4f} |")
    return lines + [""]


def task_lines(tasks: list[dict] | None) -> list[str]:
    """``--tasks``: accuracy of both models (Wilson interval), paired counts, McNemar's exact test."""
    if not tasks:
        return []
    lines = ["## Task accuracy (lm-evaluation-harness)", "",
             "| task | items | reference | candidate | drop | only ref / only cand | McNemar p | worse p |",
             "|---|---|---|---|---|---|---|---|"]
    for t in tasks:
        acc = {w: f"{100 * t[f'acc_{w}']:.1f} % [{100 * t[f'acc_{w}_low']:.1f}, {100 * t[f'acc_{w}_high']:.1f}]"
               for w in ("reference", "candidate")}
        lines.append(f"| {t['task']} | {t['items']} | {acc['reference']} | {acc['candidate']} | "
                     f"{100 * t['acc_drop']:+.1f} pt | {t['reference_only']} / {t['candidate_only']} | "
                     f"{t['mcnemar_p']:.3g} | {t['worse_p']:.3g} |")
    return lines + ["", f"Intervals: two-sided {100 * tasks[0]['ci_level']:g} % Wilson.", ""]


def gate_lines(gate: dict | None) -> list[str]:
    """The ``## Gate`` section for ``GateResult.to_json()`` output: verdict, then one row per limit."""
    if gate is None:
        return ["## Gate", "", "No gate given."]
    verdict = "PASS" if gate["passed"] else "FAIL (" + ", ".join(gate["failed"]) + ")"
    lines = ["## Gate", "", f"`{gate['source']}`: **{verdict}** "
             f"(Wilson bounds at {100 * gate['confidence']:g} % one-sided confidence)", "",
             "| limit | statistic | measured | bound | result |", "|---|---|---|---|---|"]
    for c in gate["checks"]:
        measured = "n/a" if c["measured"] is None else f"{c['measured']:.6g}"
        sign = "<=" if c["bound"] == "max" else ">="
        lines.append(f"| {c['limit']} | {c['metric']} | {measured} | {sign} {c['value']:g} | "
                     f"{'pass' if c['passed'] else '**fail**'} |")
    return lines


def write_report(data: dict, kld, report: Path | None, plot: Path | None) -> Path | None:
    """Write the plot (when asked, or beside the report) and the report; returns the plot path used."""
    if report is not None and plot is None:
        plot = default_plot_path(report)
    if plot is not None and kld is not None:
        cand = Path(data["candidate"]["path"]).name if data["candidate"] else "?"
        title = (f"{cand} vs {Path(data['reference']['path']).name}: {data['tokens_scored']} tokens, "
                 f"mean KLD {data['kld_mean']:.4g}")
        plot_kld_histogram(kld, plot, title)
    if report is not None:
        write_text_atomic(Path(report), markdown(data, plot, Path(report)))
    return plot
