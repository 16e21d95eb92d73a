"""``mv4deploy run``: execute a plan on a checkpoint; measured memory and tokens/s beside the predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mv4deploy.cli import output, tables
from mv4deploy.cli.app import JsonOpt, app
from mv4deploy.core.errors import EXIT_OK


@app.command("run")
def run_plan_file(
        checkpoint: Annotated[Path, typer.Argument(help="The checkpoint folder the plan was made for.")],
        plan: Annotated[Path, typer.Option(help="A plan.json from `mv4deploy plan --out` (or --json).")],
        tokens: Annotated[int, typer.Option(help="Decode steps timed, after the warm-up.")] = 32,
        warmup: Annotated[int, typer.Option(help="Decode steps run before timing.")] = 3,
        prompt_tokens: Annotated[Optional[int], typer.Option(help="Prompt length per sequence (default: the "
                                                             "plan's context minus warm-up and tokens).")] = None,
        profile: Annotated[Optional[str], typer.Option(help="The profile the plan was made for, when it is not a "
                                                       "shipped one (checked against the plan's fingerprint).")]
        = None,
        device_map: Annotated[Optional[list[str]], typer.Option(help="TIER=DEVICE, e.g. gpu:0=cpu to run a GPU "
                                                                "plan's split on the CPU (repeatable).")] = None,
        repeats: Annotated[int, typer.Option(help="Trials; the median one is compared.")] = 1,
        threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: as many as the profile's "
                                                       "host figures were probed with).")] = None,
        json_out: JsonOpt = False) -> int:
    """Execute a plan on a checkpoint and print measured memory and tokens/s beside the plan's predictions."""
    from mv4deploy.runtime.run import run_checkpoint
    report = run_checkpoint(checkpoint, plan, tokens, warmup, prompt_tokens, profile, device_map, repeats,
                            threads=threads)
    output.emit_json(report) if json_out else tables.run_table(report)
    return EXIT_OK
