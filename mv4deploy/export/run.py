"""``mv4deploy export onnx MODEL_DIR OUT --target TARGET``: build, validate, describe, then publish.

Order: every input is checked before anything slow (target, model folder, architecture, tokenizer, eval
text, output folder); the builder writes into a hidden folder beside OUT; the export is validated against
PyTorch there; README.md and export.json are written; only then is the folder renamed to OUT. An export
that misses its target's tolerance is kept for inspection as ``OUT.rejected`` and the command exits 1.
"""

from __future__ import annotations

import os
import shutil
import sysconfig
import time
from pathlib import Path
from typing import Callable

from mv4deploy.core.errors import InputError
from mv4deploy.export import dynamo, genai, qnn
from mv4deploy.export.report import folder_sizes, readme, usage, write_outputs
from mv4deploy.export.source import check_source, load_torch_model
from mv4deploy.export.targets import Builder, ExportTarget, load_target
from mv4deploy.export.verify import reference_source, verify
from mv4deploy.core.outdir import claim_out, write_error

BUILDERS = {Builder.GENAI: genai.build, Builder.DYNAMO: dynamo.build, Builder.QNN_STATIC: qnn.build}
# Default texts when --eval / --calib are not given: modules of this Python's standard library, read from
# disk (offline, deterministic per Python version). Code is what the R1 distillates are often asked for.
DEFAULT_EVAL_MODULE, DEFAULT_CALIB_MODULE = "textwrap", "argparse"
CALIB_CHUNKS = 8
Notify = Callable[[str], None]     # a one-line progress note ("building cpu-int4 ..."); the CLI prints it


def default_text(module: str) -> Path:
    """A module of this Python's standard library: offline, deterministic per Python version."""
    return Path(sysconfig.get_paths()["stdlib"]) / f"{module}.py"


def eval_tokens(path: Path, tokenizer, chunk_tokens: int, max_chunks: int):
    from mv4deploy.validate.evaltext import tokenize_eval
    return tokenize_eval(path, tokenizer, chunk_tokens, max_chunks)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise InputError(out, None, None, "OUT exists and is not empty (pass --overwrite to replace it)")
    if not out.parent.is_dir():
        raise InputError(out.parent, None, None, "parent folder of OUT does not exist")


def export_onnx(model_dir: str | Path, out: str | Path, target_name: str, eval_path: Path | None = None,
                calib_path: Path | None = None, overwrite: bool = False, notify: Notify | None = None,
                progress=None) -> dict:
    """Export, validate and publish; returns the report (also written to OUT/export.json). ``notify``
    receives a line as each slow step starts; ``progress(description, total)`` (as ``validate``'s) follows the
    validation chunk by chunk and run by run. The builders' own chatter is not filtered here: the CLI
    runs this inside ``output.library_noise_to_stderr`` so that ``--json`` stdout stays clean."""
    started = time.perf_counter()
    target = load_target(target_name)
    out = Path(out)
    _check_out(out, overwrite)
    source = check_source(model_dir)
    tol = target.tolerance
    tokens = eval_tokens(eval_path or default_text(DEFAULT_EVAL_MODULE), source.tokenizer, tol.chunk_tokens,
                         tol.max_chunks)
    calib = eval_tokens(calib_path or default_text(DEFAULT_CALIB_MODULE), source.tokenizer, tol.chunk_tokens,
                        CALIB_CHUNKS) if target.builder is Builder.QNN_STATIC else None
    with claim_out(out.parent / f".{out.name}.exporting"):   # one export into OUT at a time (OUT appears last)
        return _export(model_dir, out, target_name, target, source, tokens, calib, eval_path, calib_path, notify,
                       started, progress)


def _export(model_dir, out: Path, target_name: str, target: ExportTarget, source, tokens, calib, eval_path,
            calib_path, notify: Notify | None, started: float, progress=None) -> dict:
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        (work / "out").mkdir(parents=True)
        report, max_length = _build_and_verify(source, target, work, tokens, calib, notify or (lambda line: None),
                                               progress)
        report["seconds"]["total_s"] = round(time.perf_counter() - started, 1)
        report["out"] = str(out if report["validation"]["passed"] else out.with_name(out.name + ".rejected"))
        report["command"] = report["command"].replace(str(work / "out"), report["out"]).replace(
            str(work / "builder-cache"), "CACHE_DIR")
        report["cli"] = " ".join(["mv4deploy export onnx", str(model_dir), str(out), "--target", target_name,
                                  *(["--eval", str(eval_path)] if eval_path else []),
                                  *(["--calib", str(calib_path)] if calib_path else [])])
        how_to_run = usage(target, Path(report["out"]), source.spec, max_length)
        write_outputs(work / "out", report, readme(report, target, source.spec, how_to_run))
        _publish(work / "out", Path(report["out"]))
    except OSError as exc:      # a full or read-only disk: one line naming the file, exit 2
        raise write_error(exc, out) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _build_and_verify(source, target: ExportTarget, work: Path, tokens, calib,
                      notify: Notify, progress=None) -> tuple[dict, int | None]:
    seconds = {}
    t0 = time.perf_counter()
    notify(f"loading {source.folder} in PyTorch (fp32)")
    model = load_torch_model(source.folder)
    notify(f"building {target.name} with the {target.builder.value} builder")
    built = BUILDERS[target.builder](source, target, work / "out", work, model=model,
                                     calib_chunks=None if calib is None else calib.tokens.numpy())
    seconds["build_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    runner = built.runner()
    notify(f"validating on {runner.runtime}: {tokens.chunks} chunks of {tokens.chunking.chunk_tokens} "
           f"tokens, {target.tolerance.greedy_prompts} greedy runs of {target.tolerance.greedy_tokens} tokens")
    result = verify(reference_source(model, source), runner, tokens, target.tolerance, target.source, progress)
    seconds["validate_s"] = round(time.perf_counter() - t0, 1)
    return {
        "model": source.folder.resolve().name, "model_dir": str(source.folder), "target": target.name,
        "target_file": target.source, "runtime": target.runtime, "provider": target.provider.value,
        "weights": {"precision": target.weights.precision.value, "format": target.weights.format,
                    "block_size": target.weights.block_size, "symmetric": target.weights.symmetric},
        "command": built.command, "runner": runner.runtime, "graphs": list(built.graphs), "notes": list(built.notes),
        "sizes": folder_sizes(work / "out", built.graphs), "validation": result, "seconds": seconds,
    }, getattr(built, "max_length", None)


def _publish(folder: Path, final: Path) -> None:
    """Rename the finished folder to its final name, replacing an older export there."""
    if final.exists():
        shutil.rmtree(final) if final.is_dir() else final.unlink()
    os.replace(folder, final)
