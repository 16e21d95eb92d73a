"""What a quantize run may find in OUT, and what it leaves there when it fails.

A finished OUT is reused only by the run that made it: the same recipe (rules as resolved for the
model), the same source shards (size and header hash) and the same calibration, all recorded in the
manifest as ``run_key``. Anything else is refused, so a recipe change or a plan for another model never
reports success over the old checkpoint. A failed run leaves OUT as it found it when it had nothing
worth resuming; otherwise its error names the staging folder and the two ways on.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from types import SimpleNamespace

from mv4deploy.core.errors import InputError


def check_same_run(job) -> None:
    """Refuse a finished OUT made by another recipe, source, calibration or tool version."""
    from mv4deploy.quant.manifest import MANIFEST
    path = job.out / MANIFEST
    try:
        data = json.loads(path.read_text())
        found = data.get("run_key") if isinstance(data, dict) else None
        made = (data.get("recipe") or {}).get("name")
    except (OSError, ValueError, RecursionError, AttributeError):
        raise InputError(path, None, None, "unreadable manifest; delete OUT to rebuild") from None
    if found != json.loads(json.dumps(job.run_key)):
        what = _difference(found, job.run_key)
        raise InputError(job.out, what, made, f"OUT holds a finished checkpoint made with another {what} "
                         f"(this run: recipe {job.recipe.name!r} from {job.src}); choose another OUT or delete it")


def _difference(found, wanted: dict) -> str:
    if not isinstance(found, dict):
        return "recipe"
    for key in ("recipe", "source", "calibration", "tool"):
        if json.loads(json.dumps(wanted.get(key))) != found.get(key):
            return key
    return "recipe"


@contextmanager
def failed_run_cleanup(job, fresh: bool):
    """On failure: a fresh run with no finished shard removes its staging (OUT is left as found); one
    with finished shards keeps them and says so. Yields a holder whose ``journal`` the caller sets."""
    from mv4deploy.quant.job import STAGING
    run = SimpleNamespace(journal=None)
    try:
        yield run
    except BaseException as exc:
        done = run.journal.done if run.journal is not None else {}
        if fresh and not done:
            shutil.rmtree(job.out / STAGING, ignore_errors=True)
        elif isinstance(exc, InputError) and done:
            raise InputError(exc.source, exc.field, exc.value,
                             f"{exc.reason}; finished shards are kept in {job.out / STAGING}: re-run the same "
                             f"command to resume, or `rm -r {job.out}` to start over") from None
        raise


def check_plan_model(plan_path, src) -> None:
    """Refuse ``quantize --plan`` with a plan made for another model: its ``fingerprint.model`` (tensor
    count, placed bytes, hash of the groups) must be SRC's, as ``mv4deploy run`` requires."""
    from mv4deploy.model.source import resolve_model
    from mv4deploy.plan.groups import build_groups
    
    from mv4deploy.plan.plan import model_fingerprint
    from mv4deploy.plan.workload import ExpertSkew
    from mv4deploy.core.schema import load_data
    data = load_data(plan_path)
    fingerprint = data.get("fingerprint") if isinstance(data, dict) else None
    want = fingerprint.get("model") if isinstance(fingerprint, dict) else None
    if not isinstance(want, dict):
        raise InputError(plan_path, "fingerprint.model", None, "missing: plan again with `mv4deploy plan --out`")
    workload = data.get("workload") if isinstance(data.get("workload"), dict) else {}
    skew = workload.get("expert_skew")
    try:
        skew = ExpertSkew(*skew) if skew else None
        resolved = resolve_model(str(src))
        found = model_fingerprint(resolved.inventory, build_groups(resolved.inventory, bool(workload.get("include_mtp")),
                                                                skew).groups)._asdict()
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(plan_path, "workload", skew, f"malformed plan ({type(exc).__name__}); plan again") from None
    if want != found:
        raise InputError(plan_path, "fingerprint.model", data.get("model"),
                         f"plan made for another model ({want.get('tensors', '?')} tensors, "
                         f"{want.get('placed_bytes', '?')} bytes placed); {src} has {found['tensors']} tensors, "
                         f"{found['placed_bytes']} bytes: plan again for it")
