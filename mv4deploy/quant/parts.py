"""``quantize --part I/N`` and ``--finalize``: one deterministic slice of the shards per process (a Slurm
array task), and the step that checks every slice is done and writes what makes OUT a checkpoint.

A part quantizes only its shards, into the shared staging folder ``OUT/.mv4deploy-partial/``, under the same
temporary-name-then-rename rule as a whole run, and journals them in ``journal.part-I-of-N.json``. Parts run
at once: each holds OUT's lock shared and its own part lock exclusively, so two copies of one part, or a
whole run and a part, never write together. A part never writes config.json, the manifest or the index,
so OUT never looks finished until ``--finalize`` (the whole run's code path, which quantizes nothing and
refuses while a shard is missing, naming its part). The result is the one-process run's, byte for byte:
the shards are the same bytes whoever writes them, and finalize writes the same config, manifest and index.

Shards go to parts by size (largest first, each to the part with the fewest bytes so far; ties: source
order, lowest part), a function of SRC alone: every array task computes the same split.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from mv4deploy.core.errors import InputError
from mv4deploy.quant.job import STAGING, Job, ShardJob

_PART = re.compile(r"([0-9]{1,6})/([0-9]{1,6})")
_PART_JOURNAL = re.compile(r"journal\.part-([0-9]+)-of-([0-9]+)\.json")


@dataclass(frozen=True)
class Part:
    index: int   # 1-based, as Slurm's SLURM_ARRAY_TASK_ID with --array=1-N
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def journal(self) -> str:
        return f"journal.part-{self.index}-of-{self.count}.json"

    @property
    def lock(self) -> str:
        return f"part-{self.index}-of-{self.count}.lock"


def parse_part(text: str) -> Part:
    """``"I/N"`` with 1 <= I <= N; anything else is one line, exit 2."""
    match = _PART.fullmatch(str(text).strip())
    index, count = (int(match[1]), int(match[2])) if match else (0, 0)
    if not 1 <= index <= count:
        raise InputError(None, "--part", text, "must be I/N with 1 <= I <= N (e.g. 2/8: the second of 8 parts)")
    return Part(index, count)


def owners(shards: tuple[ShardJob, ...], count: int) -> dict[str, int]:
    """Shard file -> the part (1-based) that quantizes it: largest first to the least loaded part."""
    load = [0] * count
    owner = {}
    for position, shard in sorted(enumerate(shards), key=lambda p: (-p[1].source_bytes, p[0])):
        part = min(range(count), key=lambda i: (load[i], i))
        load[part] += shard.source_bytes
        owner[shard.file] = part + 1
    return owner


def part_job(job: Job, part: Part) -> Job:
    """``job`` cut to the shards of ``part`` (in source order)."""
    owner = owners(job.shards, part.count)
    return dataclasses.replace(job, shards=tuple(s for s in job.shards if owner[s.file] == part.index))


def run_part(job: Job, part: Part, options, advance=lambda n: None) -> dict:
    """Quantize ``part``'s shards into OUT's staging (resuming what any earlier run of this job finished);
    the caller holds OUT shared. Returns what the part did, with stable keys."""
    from mv4deploy.core.outdir import hold_lock
    from mv4deploy.quant.pipeline import Journal, prepare_out, run_shards
    mine = part_job(job, part)
    prepare_out(job, part.journal)   # checks OUT, creates the staging folder
    with hold_lock(job.out / STAGING / part.lock, job.out):
        journal = Journal(job, part.journal)   # read under the part lock: what a killed copy left
        resumed = sum(1 for s in mine.shards if journal.verified(s.file, job.out))
        run_shards(mine, journal, options, advance)
    return {"part": str(part), "shards": len(mine.shards), "resumed_shards": resumed,
            "source_bytes": mine.source_bytes, "finalized": False}


def require_all_parts(job: Job) -> None:
    """Before ``--finalize``: every shard must be staged (or final) with the bytes a journal recorded
    (sha256), else one line naming the first missing shard and its part. Nothing is written."""
    from mv4deploy.quant.pipeline import Journal
    journal = Journal(job)
    missing = [s for s in job.shards if not journal.verified(s.file, job.out)]
    if not missing:
        return
    counts = sorted({int(m[2]) for p in journal.dir.glob("journal.part-*.json")
                     if (m := _PART_JOURNAL.fullmatch(p.name))})
    first = missing[0].file
    if len(counts) == 1:
        owner = owners(job.shards, counts[0])
        parts = sorted({owner[s.file] for s in missing})
        named = ", ".join(str(Part(i, counts[0])) for i in parts)
        raise InputError(job.out, "--part", named, f"part{'s' * (len(parts) > 1)} {named} not finished "
                         f"({len(missing)} of {len(job.shards)} shards missing, first {first}); run "
                         f"{'each' if len(parts) > 1 else 'it'} again with the same options, then --finalize")
    found = "no --part run is recorded" if not counts else f"parts of {len(counts)} different counts are recorded"
    raise InputError(job.out, STAGING, first, f"{len(missing)} of {len(job.shards)} shards are not quantized "
                     f"and {found}; run every --part I/N (one N), or the command without --part, first")


def all_staged(job: Job, journal, options=None, advance=lambda n: None) -> None:
    """The shard runner of ``--finalize`` (after ``require_all_parts``): quantize nothing."""
    for shard in job.shards:
        advance(shard.source_bytes)
