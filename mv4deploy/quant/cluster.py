"""``quantize --ray ADDRESS``: whole shards as Ray tasks, on every node that sees SRC and OUT at the same paths.

The driver (the ``mv4deploy quantize`` process) plans the job, holds OUT's lock and its journal, and sends
one task per shard not yet done; a task runs the one-process pipeline's ``process_shard`` on its node (the
shard written under a temporary name in OUT's staging folder, renamed when complete) and returns the
journal entry, which the driver records as each task finishes. Finalize is the one-process run's, so the
output is the same bytes. A task whose worker dies is retried by Ray (``MAX_RETRIES``); a task that raises
is not: the driver lets the other tasks finish, records them, and raises the first error, so re-running
the same command resumes from the journal.

``ADDRESS`` is ``ray.init(address=...)``'s: ``local`` starts a new Ray instance on this machine for this run
(all its CPUs) and stops it at the end; ``auto`` connects to the cluster this node belongs to (``ray start``
there, or ``RAY_ADDRESS``) and fails if there is none; ``HOST:PORT`` (the GCS address ``ray start --head``
printed) or ``ray://HOST:10001`` (Ray Client) connect to that cluster. A process that already called
``ray.init`` (a library caller, the tests) is used as it is, whatever ``ADDRESS`` says.

Ray is an optional extra (``pip install 'mv4deploy[ray]'``), imported only here, only for ``--ray``. Ray moves
the job description (paths, shapes, recipe: our own objects) between its processes with its own
serialization; no file a user supplies is ever unpickled.
"""

from __future__ import annotations

from contextlib import contextmanager

from mv4deploy.core.errors import InputError, first_line
from mv4deploy.quant.job import STAGING

MAX_RETRIES = 3          # a task whose worker process or node died is run again this many times
INSTALL = "pip install 'mv4deploy[ray]'"


def import_ray():
    """The ``ray`` module, or one line saying how to install it (exit 2)."""
    try:
        import ray
    except ImportError:
        raise InputError(None, "--ray", None, f"needs Ray, which is not installed: {INSTALL}") from None
    return ray


@contextmanager
def ray_session(address: str):
    """Connected to ``address`` for the ``with`` block (see the module doc); yields the ``ray`` module."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    options = {"include_dashboard": False} if address == "local" else {}
    _check_reachable(address)
    try:
        ray.init(address=address, log_to_driver=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise InputError(None, "--ray", address, f"cannot connect to a Ray cluster ({first_line(exc)}); give "
                         "HOST:PORT of its head, ray://HOST:10001, auto (a cluster this node joined) or local")
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A HOST:PORT (or ray://HOST:PORT) nobody listens on is one line at once: ``ray.init`` would retry
    for minutes."""
    import socket
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return   # local, auto: ray.init decides
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise InputError(None, "--ray", address, f"cannot connect to a Ray cluster ({exc.strerror or exc}); "
                         "give HOST:PORT of its head (ray start --head prints it), ray://HOST:10001, auto or "
                         "local") from None


class RayShards:
    """A shard runner (``pipeline.run_shards``'s signature) that sends each shard to a Ray task.
    ``device`` is resolved on each worker (``auto``: its own CUDA when it has one; same bits either way)."""

    def __init__(self, ray, device: str):
        self.ray, self.device = ray, device

    def __call__(self, job, journal, options, advance=lambda n: None) -> None:
        ray = self.ray
        todo = []
        for shard in job.shards:
            if journal.verified(shard.file, job.out):
                advance(shard.source_bytes)
            else:
                todo.append(shard)
        if not todo:
            return
        task = ray.remote(num_cpus=options.workers, max_retries=MAX_RETRIES, retry_exceptions=False)(quantize_shard)
        job_ref = ray.put(job)
        pending = {task.remote(job_ref, s.file, options, self.device): s for s in todo}
        failure = None
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            shard = pending.pop(ready[0])
            try:
                entry = ray.get(ready[0])
            except ray.exceptions.RayError as exc:
                failure = failure or _cause(exc, job)   # the others finish and are recorded first
                continue
            journal.record(shard.file, entry)
            advance(shard.source_bytes)
        if failure is not None:
            raise failure


def quantize_shard(job, file: str, options, device: str) -> dict:
    """One Ray task: quantize ``file`` of ``job`` into OUT's staging folder; returns its journal entry."""
    import dataclasses

    import torch

    from mv4deploy.core.device import resolve_device
    from mv4deploy.quant.pipeline import process_shard
    torch.set_num_threads(1)   # parallelism is options.workers threads per task (run.py says why)
    shard = next(s for s in job.shards if s.file == file)
    # the task holds options.workers CPUs: no extra thread to hash the source beside them
    options = dataclasses.replace(options, device=resolve_device(device), hash_aside=False)
    return process_shard(job, shard, job.out / STAGING, options)


def _cause(exc, job) -> BaseException:
    """A task's own error as raised on the worker (an InputError stays one line, exit 2); a Ray failure
    (a worker or node lost past its retries) as one line naming OUT."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return cause
    return InputError(job.out, None, None, f"a Ray task failed ({first_line(exc)})")   # + how to resume
