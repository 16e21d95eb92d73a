"""``mv4deploy quantize``: stream a checkpoint shard by shard into the recipe's formats, resumably.

Per source shard: the output header is computed first (every format knows its stored dtypes and
shapes), then each logical weight is read (``pread``, no mmap), dequantized if the source stores it
quantized, quantized into its target format and written at its offset. Peak memory is a few weights
in flight, not a shard. Completed shards are written under a temporary name, fsynced, hashed and
renamed into ``OUT/.mv4deploy-partial/``; a journal there records them (``journal.json``; a
``--part I/N`` run keeps its own, ``journal.part-I-of-N.json``, and every journal reads its siblings' shards,
so any run of the same job resumes what any other finished). A re-run of the same command
verifies the journal's shards by sha256 and continues with the rest. Only when every shard is done
are the shards moved to their final names, then config.json, the manifest and — last — the index are
written; so a killed run never leaves a complete-looking file with partial data, and a bad input
mid-run (NaN weights) leaves nothing under OUT's final names.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from mv4deploy.core.errors import InputError
from mv4deploy.core.fileio import sha256_file, write_text_atomic
from mv4deploy.core.outdir import LOCK_NAME
from mv4deploy.formats import get_format
from mv4deploy.quant.job import STAGING, Job, ShardJob, WeightJob
from mv4deploy.formats.kernels import NonFiniteError
from mv4deploy.quant.shards import OrderedHasher, copy_bytes, output_layout, read_tensor, write_tensor

JOURNAL = "journal.json"
JOURNALS = "journal*.json"   # the whole run's and every part's (``parts.Part.journal``)


@dataclass(frozen=True)
class Options:
    allow_nonfinite: bool = False
    workers: int = 1
    device: str = "cpu"            # "cpu" or "cuda": same bits either way
    quantizer: object = None       # callable(WeightJob, tensor) -> dict | None (GPTQ); None: round to nearest
    hash_aside: bool = True        # hash the source shard on a thread of its own (a core beyond the workers);
                                   # False: in line (a Ray task holds exactly its workers' CPUs)


class Journal:
    """Completed shards of an interrupted run, kept in OUT/.mv4deploy-partial/journal.json (``name``: a part's
    own journal). The shards its sibling journals record are read too (each is re-hashed before it counts)."""

    def __init__(self, job: Job, name: str = JOURNAL):
        self.dir = job.out / STAGING
        self.path = self.dir / name
        self.run_key = job.run_key
        self.done: dict[str, dict] = {}
        for path in sorted(p for p in self.dir.glob(JOURNALS) if p != self.path) + [self.path]:
            if path.is_file():
                self.done.update(self._read(path, job))   # its own last: its entries win

    def _read(self, path: Path, job: Job) -> dict:
        try:
            data = json.loads(path.read_text())
            data.get("run_key")
        except (ValueError, RecursionError, AttributeError):
            raise InputError(path, None, None, f"unreadable journal of an interrupted run; delete "
                             f"{self.dir} to start over") from None
        if data.get("run_key") != job.run_key:
            raise InputError(job.out, STAGING, None, "holds an interrupted run of a different recipe, source or "
                             "tool version; use another OUT or delete it")
        return data.get("done", {})

    def record(self, file: str, entry: dict) -> None:
        self.done[file] = entry
        self.save()

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps({"run_key": self.run_key, "done": self.done}, indent=1,
                                                sort_keys=True))

    def verified(self, file: str, out: Path) -> bool:
        """A journal shard counts as done only if its bytes still hash to what was recorded."""
        entry = self.done.get(file)
        if entry is None:
            return False
        for place in (self.dir / file, out / file):
            if place.is_file() and place.stat().st_size == entry["bytes"] and sha256_file(place) == entry["sha256"]:
                return True
        del self.done[file]
        return False


def prepare_out(job: Job, name: str = JOURNAL) -> Journal:
    """Create OUT (or reuse an interrupted run of the same job); refuse a foreign non-empty folder.
    ``name``: the journal this run writes (a part's own)."""
    out = job.out
    if out.exists() and not out.is_dir():
        raise InputError(out, None, None, "OUT exists and is not a folder")
    foreign = out.is_dir() and any(p.name not in (STAGING, LOCK_NAME) for p in out.iterdir())
    if foreign and not any((out / STAGING).glob(JOURNALS)):
        raise InputError(out, None, None, "OUT is not empty and holds no interrupted mv4deploy run; "
                                          "choose an empty or new folder")
    (out / STAGING).mkdir(parents=True, exist_ok=True)
    journal = Journal(job, name)
    if not journal.path.is_file():
        journal.save()  # the marker of an interrupted run exists before anything else is written
    return journal


def run_shards(job: Job, journal: Journal, options: Options, advance=lambda n: None) -> None:
    """Process every shard not already verified in the journal."""
    for shard in job.shards:
        if journal.verified(shard.file, job.out):
            advance(shard.source_bytes)
            continue
        entry = process_shard(job, shard, journal.dir, options, advance)
        journal.record(shard.file, entry)


def process_shard(job: Job, shard: ShardJob, staging: Path, options: Options, advance=lambda n: None) -> dict:
    """Quantize one shard into ``staging`` (temporary name, then renamed); returns its journal entry."""
    tensors = [(t.name, t.dtype, t.shape) for w in shard.weights for t in w.outputs]
    header, slots = output_layout(tensors, shard_metadata(job, shard), shard.file)
    total = slots[-1].offset + slots[-1].nbytes if slots else len(header)
    out = _Output(slots, OrderedHasher())
    tmp = staging / f"{shard.file}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)   # never through a planted link
    sources = _SourceFiles(job.src)
    source_sha = _source_sha(job.src / shard.file, options.hash_aside)
    try:
        os.pwrite(fd, header, 0)
        out.hasher.add(0, header)
        os.ftruncate(fd, total)
        work = lambda w: (_process_weight(w, sources, fd, out, options), advance(w.source_bytes))  # noqa: E731
        if options.workers > 1:
            with ThreadPoolExecutor(options.workers) as pool:
                list(pool.map(work, shard.weights))
        else:
            for w in shard.weights:
                work(w)
        os.fsync(fd)
    finally:
        os.close(fd)
        sources.close()
    entry = {"sha256": out.hasher.hexdigest(total), "bytes": total, "source_sha256": source_sha(),
             "tensors": len(tensors)}
    outcomes = getattr(options.quantizer, "outcomes", None)
    if outcomes is not None:  # GPTQ or RTN fallback per INT4 weight, kept for the manifest
        entry["calibration"] = {w.weight.name: outcomes[w.weight.name] for w in shard.weights
                                if w.weight.name in outcomes}
    os.replace(tmp, staging / shard.file)
    return entry


def _source_sha(path: Path, aside: bool):
    """A call that returns the source shard's sha256: started now on a thread of its own (another core, from the
    page cache), or, with ``aside`` False, computed in line when called."""
    if not aside:
        return lambda: sha256_file(path)
    side = ThreadPoolExecutor(1)
    future = side.submit(sha256_file, path)
    side.shutdown(wait=False)          # the thread finishes this one hash and exits
    return future.result


class _Output:
    """The shard being written: each tensor's slot, and the hasher its bytes go through."""

    def __init__(self, slots: list, hasher: OrderedHasher):
        self.by_name = {s.name: s for s in slots}
        self.hasher = hasher


class _SourceFiles:
    """Open source shards by name, shared by the workers (pread is safe across threads)."""

    def __init__(self, src: Path):
        self.src, self.fds = src, {}

    def fd(self, file: str) -> int:
        if file not in self.fds:
            self.fds[file] = os.open(self.src / file, os.O_RDONLY)
        return self.fds[file]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


def _process_weight(w: WeightJob, sources: _SourceFiles, fd: int, out: "_Output", options: Options) -> None:
    slots = out.by_name
    if w.passthrough:
        for (file, src_slot), stored in zip(w.sources, w.outputs):
            check = None if options.allow_nonfinite else _finite_check(w.weight.name, file, src_slot)
            copy_bytes(sources.fd(file), src_slot, fd, slots[stored.name], sources.src / file, check, out.hasher)
        return
    x = _load_logical(w, sources)
    try:
        q = options.quantizer(w, x) if options.quantizer else None
        if q is None:
            q = get_format(w.target).quantize(w.weight.name, x.to(options.device), options.allow_nonfinite)
    except NonFiniteError as exc:
        raise _nonfinite(exc, sources.src / w.sources[0][0]) from None
    for stored in w.outputs:
        write_tensor(fd, slots[stored.name], q[stored.name], out.hasher)


def _load_logical(w: WeightJob, sources: _SourceFiles) -> torch.Tensor:
    """The logical weight in a float dtype that holds it exactly (bf16 where possible: half the traffic)."""
    stored = {slot.name: read_tensor(sources.fd(file), slot, sources.src / file) for file, slot in w.sources}
    if get_format(w.weight.native).lossless:
        return next(iter(stored.values()))
    return w.weight.decode(stored, torch.bfloat16 if _bf16_exact(stored) else torch.float32)


def _bf16_exact(stored: dict) -> bool:
    """FP8/FP4 values times UE8M0 scales are exact in bf16 unless a scale is below 2**-110 (the
    product could then fall under bf16's smallest subnormal); F32 scales need float32."""
    scales = [t for t in stored.values() if t.dtype == torch.float8_e8m0fnu]
    if not scales or any(t.dtype == torch.float32 for t in stored.values()):
        return False
    return all(int(s.view(torch.uint8).min()) >= 127 - 110 for s in scales if s.numel())


def _finite_check(name: str, file: str, slot):
    """A callback that refuses NaN/Inf in a float tensor copied unchanged (None for integer data)."""
    from mv4deploy.formats.kernels import TORCH_DTYPES, finite_or_zero
    dtype = TORCH_DTYPES[slot.dtype]
    if not dtype.is_floating_point:
        return None

    def check(piece: memoryview, path: Path) -> None:
        values = torch.frombuffer(piece, dtype=torch.uint8).view(dtype)
        try:
            finite_or_zero(slot.name, values.float() if values.element_size() == 1 else values, False)
        except NonFiniteError as exc:
            raise _nonfinite(exc, path) from None
    return check


def _nonfinite(exc: NonFiniteError, path: Path) -> InputError:
    return InputError(path, exc.name, f"{exc.count} of {exc.total} values", "are NaN or Inf; pass "
                      "--allow-nonfinite to store them as 0")


def shard_metadata(job: Job, shard: ShardJob) -> dict[str, str]:
    """safetensors ``__metadata__``: the checkpoint describes itself (strings only)."""
    formats = {w.weight.name: w.target for w in shard.weights}
    return {"format": "pt", "quantized_by": job.run_key["tool"], "recipe": job.recipe.name,
            "formats": json.dumps(formats, separators=(",", ":"))}

