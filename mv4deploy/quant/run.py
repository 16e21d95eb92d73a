"""The ``quantize`` command's library entry: recipe and options from the CLI, then plan -> resume
or start -> process -> finalize. Planning (every input check) runs before torch is imported, so a bad
input fails in a fraction of a second with nothing written."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path

from mv4deploy.core.device import check_device, resolve_device
from mv4deploy.core.errors import InputError
from mv4deploy.model.safetensors_headers import INDEX_NAME
from mv4deploy.core.outdir import claim_out, write_errors
from mv4deploy.quant.outcheck import check_plan_model, check_same_run, failed_run_cleanup

AUTO_WORKERS = 0   # --workers 0: one per CPU, at most 4 (FP8 needs two workers to keep up with a copy on 2 cores)


def run_quantize(src: Path, out: Path, recipe: str | None = None, plan: Path | None = None,
                 calib: Path | None = None, workers: int = AUTO_WORKERS, device: str = "auto",
                 allow_nonfinite: bool = False, progress=None) -> dict:
    from mv4deploy.quant.recipe import get_recipe, recipe_from_plan
    if (recipe is None) == (plan is None):
        raise InputError(None, "--recipe/--plan", None, "give exactly one of --recipe NAME or --plan plan.json")
    check_device(device)
    chosen = get_recipe(recipe) if recipe is not None else recipe_from_plan(Path(plan))
    if plan is not None and Path(src).is_dir():   # (a SRC that is no folder: plan_job says so)
        check_plan_model(Path(plan), Path(src))
    calibration = None
    if calib is not None:
        from mv4deploy.quant.calibrate import CalibrationSpec
        calibration = CalibrationSpec.from_file(Path(calib))
    return quantize_checkpoint(Path(src), Path(out), chosen, calibration=calibration, workers=workers,
                               device=device, allow_nonfinite=allow_nonfinite, progress=progress)


def quantize_checkpoint(src: Path, out: Path, recipe, calibration=None, workers: int = AUTO_WORKERS,
                        device: str = "auto", allow_nonfinite: bool = False, progress=None,
                        calibration_inputs=None) -> dict:
    """``workers``: weights quantized in parallel (``AUTO_WORKERS``: one per CPU, at most 4). ``progress``
    is a context-manager factory ``(description, total_bytes) -> advance(n)`` (the CLI passes
    ``output.progress``). ``calibration_inputs`` = (model, token_ids) skips loading them
    (tests; callers that hold the model already). Returns a summary with stable keys."""
    from mv4deploy.quant.job import plan_job
    from mv4deploy.quant.manifest import MANIFEST, verify_output
    workers = _workers(workers)
    extra_key = {"calibration": calibration.key()} if calibration is not None else {}
    job = plan_job(src, out, recipe, extra_key)
    with claim_out(job.out), write_errors(job.out):   # one writer per OUT; a full disk is one line
        if (job.out / INDEX_NAME).is_file() and (job.out / MANIFEST).is_file():
            check_same_run(job)
            report = verify_output(job.out)
            if not report["ok"]:
                raise InputError(job.out, None, None, f"holds a finished output that fails verification "
                                 f"({report['problems'][0]}); delete it to rebuild")
            import shutil

            from mv4deploy.quant.job import STAGING
            shutil.rmtree(job.out / STAGING, ignore_errors=True)  # a run killed while cleaning up
            return {**_summary(job, resumed_shards=len(job.shards), already_complete=True), "calibration": None}
        return _run(job, calibration, workers, device, allow_nonfinite, progress, calibration_inputs)


def _run(job, calibration, workers, device, allow_nonfinite, progress, calibration_inputs=None) -> dict:
    import torch

    from mv4deploy.quant.job import STAGING
    from mv4deploy.quant.pipeline import JOURNAL, Options, prepare_out
    options = Options(allow_nonfinite=allow_nonfinite, workers=workers, device=resolve_device(device))
    # Parallelism comes from --workers, one intra-op thread each: the kernels work on cache-sized
    # strips, too small to split, and an OpenMP team waiting on a busy core costs ~10 ms per op.
    torch.set_num_threads(1)
    fresh = not (job.out / STAGING / JOURNAL).is_file()
    with failed_run_cleanup(job, fresh) as run, write_errors(job.out):
        run.journal = prepare_out(job)
        return _process(job, run.journal, options, calibration, progress, calibration_inputs)


def _process(job, journal, options, calibration, progress, calibration_inputs) -> dict:
    from mv4deploy.quant.manifest import finalize
    from mv4deploy.quant.pipeline import Options, run_shards
    resumed = sum(1 for s in job.shards if s.file in journal.done)
    report = None
    if calibration is not None:
        from mv4deploy.quant.calibrate import calibrate, calibration_report
        quantizer, tokens = calibrate(job, calibration, *(calibration_inputs or (None, None)), progress=progress)
        options = Options(options.allow_nonfinite, options.workers, options.device, quantizer)
    bar = progress(f"quantize {job.src.name} -> {job.recipe.name}", job.source_bytes) if progress else nullcontext()
    with bar as advance:
        run_shards(job, journal, options, advance or (lambda n: None))
    if calibration is not None:
        report = calibration_report(calibration, tokens, journal.done)
    finalize(job, journal.dir, journal.done, report)
    return {**_summary(job, resumed_shards=resumed, already_complete=False), "calibration": report}


def _workers(count: int) -> int:
    if count < 0:
        raise InputError(None, "--workers", count, "must be 0 (one per CPU, at most 4) or more")
    return count or max(1, min(4, os.cpu_count() or 1))


def _summary(job, resumed_shards: int, already_complete: bool) -> dict:
    from collections import Counter
    formats = Counter(w.target for s in job.shards for w in s.weights)
    out_bytes = sum(p.stat().st_size for p in (job.out / s.file for s in job.shards) if p.is_file())
    from mv4deploy.quant.ecosystem import portability
    return {"source": str(job.src), "out": str(job.out), "recipe": job.recipe.name,
            "portability": portability(job.out / "config.json"),
            "shards": len(job.shards), "resumed_shards": resumed_shards, "already_complete": already_complete,
            "source_bytes": job.source_bytes, "out_bytes": out_bytes, "weights": sum(formats.values()),
            "formats": dict(sorted(formats.items()))}
