"""``mv4deploy validate``: a candidate against a reference or a golden file; exit 1 when the gate fails."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer

from mv4deploy.cli import output, tables
from mv4deploy.cli.app import DeviceOpt, JsonOpt, app
from mv4deploy.core.errors import EXIT_OK, CheckFailed, InputError

PathOpt = Optional[Path]
# the checks beyond short chunks: long context, task accuracy (lm-eval), the ecosystem's loader
ContextsOpt = Annotated[Optional[str], typer.Option("--contexts", help="Context lengths to score the same targets "
                                                    "at, e.g. 2k,8k,32k (k = 1024); the growth is gated.")]
ContextWindowsOpt = Annotated[int, typer.Option("--context-windows", help="Windows per context length.")]
TasksOpt = Annotated[Optional[str], typer.Option("--tasks", help="lm-eval tasks run on both models: YAML files, "
                                                 "shipped task names (mv4-nextline) or lm-eval task names.")]
TaskLimitOpt = Annotated[Optional[int], typer.Option("--task-limit", help="Score the first N items of each task.")]
LoaderOpt = Annotated[Optional[str], typer.Option("--loader", help="Open the candidate as this ecosystem does: "
                                                  "transformers, mv4deploy or onnxruntime.")]


@app.command()
def validate(
    reference: Annotated[PathOpt, typer.Option("--reference", help="Reference model folder (checkpoint, "
                                               "transformers or ONNX).")] = None,
    candidate: Annotated[PathOpt, typer.Option("--candidate", help="Candidate model folder.")] = None,
    eval_path: Annotated[PathOpt, typer.Option("--eval", help="Held-out UTF-8 text to score.")] = None,
    chunk: Annotated[int, typer.Option("--chunk", help="Tokens per chunk; the second half is scored.")] = 256,
    max_chunks: Annotated[Optional[int], typer.Option("--max-chunks", help="Score at most this many chunks.")] = None,
    golden: Annotated[PathOpt, typer.Option("--golden", help="Score against this golden file instead of "
                                            "--reference.")] = None,
    golden_out: Annotated[PathOpt, typer.Option("--golden-out", help="Write the reference's top-k log-probs "
                                                "here.")] = None,
    topk: Annotated[Optional[int], typer.Option("--topk", help="Tokens per position kept in --golden-out "
                                                "(default 128).")] = None,
    tail_samples: Annotated[Optional[int], typer.Option("--tail-samples", help="Tail tokens sampled per position "
                                                        "in --golden-out (default 64).")] = None,
    gate: Annotated[PathOpt, typer.Option("--gate", help="YAML limits; exit 1 if any fails.")] = None,
    report: Annotated[PathOpt, typer.Option("--report", help="Write a Markdown report here.")] = None,
    plot: Annotated[PathOpt, typer.Option("--plot", help="Write the KLD histogram (PNG) here.")] = None,
    contexts: ContextsOpt = None,
    context_windows: ContextWindowsOpt = 4,
    tasks: TasksOpt = None,
    task_limit: TaskLimitOpt = None,
    loader: LoaderOpt = None,
    device: DeviceOpt = "cpu",
    json_out: JsonOpt = False,
) -> int:
    """Compare a candidate with a reference (or a golden file): KLD, Δp, top-1 and PPL statistics as
    llama-perplexity --kl-divergence reports them, optionally at several context lengths (--contexts) and
    with task accuracy through lm-evaluation-harness (--tasks); exit 1 when --gate fails."""
    from mv4deploy.validate.contexts import parse_contexts
    from mv4deploy.validate.report import write_report
    from mv4deploy.validate.run import ValidateRequest
    from mv4deploy.validate.run import validate as run_validate
    _check_outputs(candidate, report, plot)
    request = ValidateRequest(reference=reference, candidate=candidate, eval_path=eval_path, chunk_tokens=chunk,
                              max_chunks=max_chunks, golden=golden, golden_out=golden_out, gate=gate, device=device,
                              contexts=parse_contexts(contexts) if contexts else (), context_windows=context_windows,
                              tasks=_tasks(tasks), task_limit=task_limit, loader=loader,
                              **{k: v for k, v in (("topk", topk), ("tail_samples", tail_samples)) if v is not None})
    quiet = output.library_noise_to_stderr() if tasks else nullcontext()   # lm-eval logs at INFO
    with quiet:
        result = run_validate(request, progress=lambda text, total: output.progress(text, total, unit_bytes=False))
    data = result.to_json()
    drawn = write_report(data, result.positions.kld, report, plot) if report or plot else None
    data["plot"] = None if drawn is None else str(drawn)   # always present: --json keys are stable
    output.emit_json(data) if json_out else tables.validation_table(data)
    if result.gate is not None and not result.gate.passed:
        raise CheckFailed("gate failed: " + "; ".join(c.describe() for c in result.gate.failures))
    return EXIT_OK


def _tasks(text: str | None) -> tuple:
    if not text:
        return ()
    from mv4deploy.validate.tasks import parse_tasks
    return parse_tasks(text)


def _check_outputs(candidate: PathOpt, report: PathOpt, plot: PathOpt) -> None:
    for option, path in (("--report", report), ("--plot", plot)):
        if path is not None and candidate is None:
            raise InputError(None, option, str(path), "needs --candidate")
        if path is not None and not path.resolve().parent.is_dir():
            raise InputError(path, option, None, "its folder does not exist")
