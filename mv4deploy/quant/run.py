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
                 allow_nonfinite: bool = False, progress=None, ray: str | None = None, part: str | None = None,
                 finalize: bool = False) -> dict:
    """``ray``: an address (``cluster.py``); ``part``: ``"I/N"``; ``finalize``: the step after the parts
    (``parts.py``). At most one of the three; none with ``calib`` (calibration loads the whole model in
    one process)."""
    from mv4deploy.quant.recipe import get_recipe, recipe_from_plan
    if (recipe is None) == (plan is None):
        raise InputError(None, "--recipe/--plan", None, "give exactly one of --recipe NAME or --plan plan.json")
    check_device(device)
    scale = _scale_out(ray, part, finalize, calib)
    chosen = get_recipe(recipe) if recipe is not None else recipe_from_plan(Path(plan))
    if plan is not None and Path(src).is_dir():   # (a SRC that is no folder: plan_job says so)
        check_plan_model(Path(plan), Path(src))
    calibration = None
    if calib is not None:
        from mv4deploy.quant.calibrate import CalibrationSpec
        calibration = CalibrationSpec.from_file(Path(calib))
    return quantize_checkpoint(Path(src), Path(out), chosen, calibration=calibration, workers=workers,
                               device=device, allow_nonfinite=allow_nonfinite, progress=progress, scale=scale)


def _scale_out(ray: str | None, part: str | None, finalize: bool, calib) -> object:
    """None (one process), ``("ray", address)``, a ``parts.Part`` or ``"finalize"``; bad combinations exit 2."""
    given = [flag for flag, on in (("--ray", ray is not None), ("--part", part is not None),
                                   ("--finalize", finalize)) if on]
    if len(given) > 1:
        raise InputError(None, "/".join(given), None, "give at most one of --ray, --part and --finalize")
    if given and calib is not None:
        raise InputError(None, given[0], None, "--calib (GPTQ) runs in one process: leave out --calib or "
                         + given[0])
    if part is not None:
        from mv4deploy.quant.parts import parse_part
        return parse_part(part)
    if ray is not None:
        from mv4deploy.quant.cluster import import_ray
        import_ray()   # not installed: say so before any work
        return ("ray", ray)
    return "finalize" if finalize else None


def quantize_checkpoint(src: Path, out: Path, recipe, calibration=None, workers: int = AUTO_WORKERS,
                        device: str = "auto", allow_nonfinite: bool = False, progress=None,
                        calibration_inputs=None, scale=None) -> dict:
    """``workers``: weights quantized in parallel (``AUTO_WORKERS``: one per CPU, at most 4; with Ray, per
    task, and ``AUTO_WORKERS`` is 1). ``progress``
    is a context-manager factory ``(description, total_bytes) -> advance(n)`` (the CLI passes
    ``output.progress``). ``calibration_inputs`` = (model, token_ids) skips loading them
    (tests; callers that hold the model already). ``scale``: see ``_scale_out``. Returns a summary with
    stable keys."""
    from mv4deploy.quant.job import plan_job
    workers = (workers or 1) if isinstance(scale, tuple) else _workers(workers)
    extra_key = {"calibration": calibration.key()} if calibration is not None else {}
    job = plan_job(src, out, recipe, extra_key)
    if isinstance(scale, tuple):
        from mv4deploy.quant.cluster import RayShards, ray_session
        with ray_session(scale[1]) as ray:
            return _claimed(job, calibration, workers, device, allow_nonfinite, progress, calibration_inputs,
                            RayShards(ray, device))
    if scale is not None and scale != "finalize":
        return _part(job, scale, workers, device, allow_nonfinite, progress)
    from mv4deploy.quant.parts import all_staged
    return _claimed(job, calibration, workers, device, allow_nonfinite, progress, calibration_inputs,
                    all_staged if scale == "finalize" else None)


def _claimed(job, calibration, workers, device, allow_nonfinite, progress, calibration_inputs, runner) -> dict:
    """The whole run (or Ray's, or finalize's) under OUT's exclusive lock; ``runner``: the shard runner."""
    from mv4deploy.quant.manifest import MANIFEST, verify_output
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
        from mv4deploy.quant.parts import all_staged, require_all_parts
        if runner is all_staged:
            require_all_parts(job)   # --finalize: refuse before anything is written
        return _run(job, calibration, workers, device, allow_nonfinite, progress, calibration_inputs, runner)


def _options(workers: int, device: str, allow_nonfinite: bool):
    import torch

    from mv4deploy.quant.pipeline import Options
    # Parallelism comes from --workers, one intra-op thread each: the kernels work on cache-sized
    # strips, too small to split, and an OpenMP team waiting on a busy core costs ~10 ms per op.
    torch.set_num_threads(1)
    return Options(allow_nonfinite=allow_nonfinite, workers=workers, device=resolve_device(device))


def _run(job, calibration, workers, device, allow_nonfinite, progress, calibration_inputs=None,
         runner=None) -> dict:
    from mv4deploy.quant.job import STAGING
    from mv4deploy.quant.pipeline import JOURNALS, prepare_out
    options = _options(workers, device, allow_nonfinite)
    fresh = not any((job.out / STAGING).glob(JOURNALS))
    with failed_run_cleanup(job, fresh) as run, write_errors(job.out):
        run.journal = prepare_out(job)
        return _process(job, run.journal, options, calibration, progress, calibration_inputs, runner)


def _part(job, part, workers, device, allow_nonfinite, progress) -> dict:
    """One ``--part I/N``: its shards into the staging folder, OUT held shared with the other parts."""
    from mv4deploy.quant.manifest import MANIFEST
    from mv4deploy.quant.parts import part_job, run_part
    with claim_out(job.out, shared=True), write_errors(job.out):
        if (job.out / INDEX_NAME).is_file() and (job.out / MANIFEST).is_file():
            check_same_run(job)   # finalized already: nothing left for any part
            mine = part_job(job, part)
            return {"out": str(job.out), "recipe": job.recipe.name, "part": str(part), "shards": len(mine.shards),
                    "resumed_shards": len(mine.shards), "source_bytes": mine.source_bytes, "finalized": True}
        options = _options(workers, device, allow_nonfinite)
        bar = progress(f"quantize {job.src.name} part {part}", part_job(job, part).source_bytes) if progress \
            else nullcontext()
        with bar as advance:
            return {"out": str(job.out), "recipe": job.recipe.name,
                    **run_part(job, part, options, advance or (lambda n: None))}


def _process(job, journal, options, calibration, progress, calibration_inputs, runner=None) -> dict:
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
        (runner or run_shards)(job, journal, options, advance or (lambda n: None))
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
