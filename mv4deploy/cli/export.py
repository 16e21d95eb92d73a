"""``mv4deploy export onnx|targets``: distillates to ONNX for CPUs and phones, validated against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mv4deploy.cli import output, tables
from mv4deploy.cli.app import JsonOpt, export_app
from mv4deploy.core.errors import EXIT_OK, CheckFailed


@export_app.command("onnx")
def export_onnx(model_dir: Annotated[Path, typer.Argument(help="A transformers folder (Qwen2/Llama + tokenizer).")],
                out: Annotated[Path, typer.Argument(help="Output folder (must be new or empty).")],
                target: Annotated[str, typer.Option("--target", help="A name in exporters/ or a YAML file.")],
                eval_text: Annotated[Optional[Path], typer.Option("--eval", help="Validation text (default: "
                                                                  "this Python's textwrap.py).")] = None,
                calib_text: Annotated[Optional[Path], typer.Option("--calib", help="Calibration text for QDQ "
                                                                   "targets (default: argparse.py).")] = None,
                overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty OUT.")] = False,
                json_out: JsonOpt = False) -> int:
    """Export MODEL_DIR to ONNX for TARGET and validate it (KLD, top-1, greedy agreement); exit 1 if it
    misses the target's tolerance (the folder is then kept as OUT.rejected)."""
    from mv4deploy.export.run import export_onnx as run_export
    with output.library_noise_to_stderr():   # builders print banners on stdout and log at INFO
        report = run_export(model_dir, out, target, eval_text, calib_text, overwrite, notify=output.info,
                            progress=lambda text, total: output.progress(text, total, unit_bytes=False))
    output.emit_json(report) if json_out else tables.export_table(report)
    if not report["validation"]["passed"]:
        raise CheckFailed(f"{report['target']} export of {report['model']} failed validation: "
                          + "; ".join(report["validation"]["failures"]) + f" (kept in {report['out']})")
    return EXIT_OK


@export_app.command("targets")
def export_targets(json_out: JsonOpt = False) -> int:
    """List the shipped export targets."""
    from mv4deploy.export.targets import list_targets
    names = list_targets()
    output.emit_json(names) if json_out else tables.name_list("export targets", names)
    return EXIT_OK
