"""``mv4deploy inspect``: what a model is (parameters, tensors and bytes by role, KV layout, Engram)."""

from __future__ import annotations

from mv4deploy.cli import output, tables
from mv4deploy.cli.app import ExpertDtypeOpt, JsonOpt, ModelArg, app
from mv4deploy.core.errors import EXIT_OK, CheckFailed
from mv4deploy.model import DEFAULT_MODEL


@app.command()
def inspect(model: ModelArg = DEFAULT_MODEL, expert_dtype: ExpertDtypeOpt = None, json_out: JsonOpt = False) -> int:
    """What a model is: parameters, tensors and bytes by role, KV-cache layout, Engram tables."""
    from mv4deploy.model.report import inspect_report
    from mv4deploy.model.source import resolve_model
    report = inspect_report(resolve_model(model, expert_dtype))
    output.print_warnings([f"unknown config key {k!r} is not modelled" for k in report["unknown_keys"]])
    output.emit_json(report) if json_out else tables.inspect_table(report)
    if report["mismatches"]:
        raise CheckFailed(f"{len(report['mismatches'])} tensors of {model} disagree with its config.json")
    return EXIT_OK
