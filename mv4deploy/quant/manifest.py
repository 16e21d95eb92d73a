"""The files that make a quantized checkpoint describe itself, written after every shard is done:
config.json (``quantization_config`` with the resolved rules, read back by ``mv4deploy inspect`` and
the runtime), ``quantization_manifest.json`` (format per weight, sha256 per shard, source checksums,
tool version) and, last, ``model.safetensors.index.json``. ``verify_output`` checks a finished OUT
against its manifest. All output is deterministic (sorted keys, no timestamps) so that a resumed run
is byte-identical to an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

from mv4deploy.core.errors import InputError
from mv4deploy.core.fileio import atomic_path, remove_stale_tmp, sha256_file, write_text_atomic
from mv4deploy.model.quant_config import OURS_KEY, QUANT_METHOD
from mv4deploy.model.safetensors_headers import INDEX_NAME
from mv4deploy.quant.job import Job
from mv4deploy.core.safepaths import regular_files

MANIFEST = "quantization_manifest.json"
FORMAT_VERSION = 2   # 2: our rules under config.json's OURS_KEY, quantization_config the ecosystem's
_NOT_COPIED = {"config.json", INDEX_NAME}


def output_config(job: Job) -> dict:
    """The source config.json with ``quantization_config`` replaced by the ecosystem's for the formats
    written (``ecosystem.ecosystem_config``; ``quant_method: mv4deploy`` where no ecosystem layout holds
    them, none when nothing is quantized), and ours under ``OURS_KEY``: ``base`` keeps the source's own
    config (so ``native`` rules stay meaningful), ``rules`` are the recipe's with aliases resolved."""
    from mv4deploy.quant.ecosystem import ecosystem_config, families
    config = {k: v for k, v in job.config.items() if k not in ("quantization_config", "expert_dtype")}
    targets = {w.target for s in job.shards for w in s.weights}
    quant = ecosystem_config(job)
    if quant is None and families(targets):
        quant = {"quant_method": QUANT_METHOD}
    if quant is not None:
        config["quantization_config"] = quant
    config[OURS_KEY] = {"format_version": FORMAT_VERSION, "recipe": job.recipe.name, "base": _base(job.config),
                        "rules": job.recipe.resolved_rules(job.spec)}
    return config


def _base(source: dict) -> dict | None:
    """The source's quantization_config, with V4's top-level ``expert_dtype`` folded in (the output's
    top level no longer describes the source)."""
    base = source.get("quantization_config")
    if base is None or "expert_dtype" not in source:
        return base
    return {"expert_dtype": source["expert_dtype"], **base}


def manifest(job: Job, done: dict[str, dict], calibration: dict | None = None) -> dict:
    weights = {w.weight.name: {"format": w.target, "native": w.weight.native, "shard": s.file,
                               "tensors": [t.name for t in w.outputs]}
               for s in job.shards for w in s.weights}
    return {
        "tool": job.run_key["tool"], "format_version": FORMAT_VERSION,
        "recipe": {"name": job.recipe.name, "from": job.recipe.source, "rules": job.recipe.resolved_rules(job.spec)},
        "source": {"path": str(job.src.resolve()),
                   "shards": {f: {"sha256": d["source_sha256"], "bytes": (job.src / f).stat().st_size}
                              for f, d in sorted(done.items())}},
        "shards": {f: {"sha256": d["sha256"], "bytes": d["bytes"], "tensors": d["tensors"]}
                   for f, d in sorted(done.items())},
        "weights": weights,
        "formats": dict(sorted(Counter(w["format"] for w in weights.values()).items())),
        "calibration": calibration,
        "run_key": job.run_key,   # what a re-run into this OUT must match (outcheck.check_same_run)
    }


def index(job: Job) -> dict:
    from mv4deploy.formats.dtypes import tensor_nbytes
    weight_map = {t.name: s.file for s in job.shards for w in s.weights for t in w.outputs}
    total = sum(tensor_nbytes(t.dtype, t.shape) for s in job.shards for w in s.weights for t in w.outputs)
    return {"metadata": {"total_size": total, "quantized_by": job.run_key["tool"]},
            "weight_map": dict(sorted(weight_map.items()))}


def finalize(job: Job, staging: Path, done: dict[str, dict], calibration: dict | None = None) -> None:
    """Move the shards to their final names, copy the tokenizer and other small files, write config
    and manifest, then the index (its presence marks a finished output), then drop the staging."""
    out = job.out
    remove_stale_tmp(out)  # an earlier, killed run may have died while writing config or manifest
    for shard in job.shards:
        if (staging / shard.file).is_file():
            os.replace(staging / shard.file, out / shard.file)
    for name, path in regular_files(job.src):   # never a link out of SRC, a device or a pipe
        if not name.endswith(".safetensors") and name not in _NOT_COPIED and not name.startswith("."):
            with atomic_path(out / name) as tmp:
                shutil.copyfile(path, tmp, follow_symlinks=False)
    _write_json(out / "config.json", output_config(job))
    _write_json(out / MANIFEST, manifest(job, done, calibration))
    _fsync_dir(out)
    _write_json(out / INDEX_NAME, index(job))
    _fsync_dir(out)
    shutil.rmtree(staging, ignore_errors=True)


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify_output(out: Path) -> dict:
    """Check a finished output against its manifest: every shard's size and sha256, the index, and
    every header against the inventory its config.json implies. Problems are listed, not raised."""
    from mv4deploy.model.source import resolve_model
    out = Path(out)
    path = out / MANIFEST
    if not path.is_file():
        raise InputError(out, MANIFEST, None, "not an mv4deploy quantize output (no manifest)")
    try:
        data = json.loads(path.read_text())
        shards, weights = data["shards"], data["weights"]
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(path, None, None, f"unreadable manifest ({exc.__class__.__name__})") from None
    problems = []
    for file, entry in sorted(shards.items()):
        shard = out / file
        if not shard.is_file():
            problems.append(f"{file}: missing")
        elif shard.stat().st_size != entry["bytes"] or sha256_file(shard) != entry["sha256"]:
            problems.append(f"{file}: contents differ from the manifest (sha256)")
    problems += _index_problems(out, weights)
    if not problems:
        problems += [f"{m.name}: {m.problem}" for m in resolve_model(out).mismatches]
    return {"out": str(out), "ok": not problems, "tool": data.get("tool"), "recipe": data.get("recipe", {}).get("name"),
            "shards": len(shards), "bytes": sum(e["bytes"] for e in shards.values()), "weights": len(weights),
            "formats": data.get("formats", {}), "problems": problems}


def _index_problems(out: Path, weights: dict) -> list[str]:
    path = out / INDEX_NAME
    if not path.is_file():
        return [f"{INDEX_NAME}: missing (an interrupted run? re-run the same quantize command)"]
    try:
        weight_map = json.loads(path.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError):
        return [f"{INDEX_NAME}: unreadable"]
    expected = {t: w["shard"] for w in weights.values() for t in w["tensors"]}
    if weight_map != expected:
        differ = sorted(set(weight_map.items()) ^ set(expected.items()))
        return [f"{INDEX_NAME}: weight_map disagrees with the manifest ({len(differ)} entries, e.g. {differ[0][0]})"]
    return []
