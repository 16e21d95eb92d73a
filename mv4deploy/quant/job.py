"""Plan a quantization run before touching OUT: read and check the source, give every logical weight
its target format, and group the weights into output shards (one per source shard, same file name).

Everything a user can get wrong is found here, so a bad input fails with one line and nothing
written: a missing or malformed config, an index naming a file outside the folder, a truncated shard
or a header that lies about its data, a tensor whose dtype or shape contradicts config.json, a tensor
the config does not explain, or OUT inside SRC.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from mv4deploy import __version__
from mv4deploy.core.errors import InputError
from mv4deploy.model.config import load_json
from mv4deploy.model.quant_config import OURS_KEY
from mv4deploy.model.tensors import RAW_FORMAT
from mv4deploy.model.safetensors_headers import HeaderTensor, read_checkpoint_headers, shard_files
from mv4deploy.model.source import compare, read_folder_config, refuse_mismatches
from mv4deploy.model.spec import ModelSpec
from mv4deploy.formats import StoredTensor, get_format
from mv4deploy.quant.recipe import Recipe
from mv4deploy.core.safepaths import check_model_folder
from mv4deploy.model.rules import LogicalWeight, assign, logical_weights

STAGING = ".mv4deploy-partial"   # OUT/STAGING holds an unfinished run: staged shards + journal


@dataclass(frozen=True)
class WeightJob:
    weight: LogicalWeight
    target: str
    sources: tuple[tuple[str, HeaderTensor], ...]   # (source file, place) of each stored tensor, in format order
    outputs: tuple[StoredTensor, ...]        # the tensors the target format stores

    @property
    def passthrough(self) -> bool:
        return self.target == self.weight.native

    @property
    def source_bytes(self) -> int:
        return sum(slot.nbytes for _, slot in self.sources)


@dataclass(frozen=True)
class ShardJob:
    file: str
    weights: tuple[WeightJob, ...]

    @property
    def source_bytes(self) -> int:
        return sum(w.source_bytes for w in self.weights)


@dataclass(frozen=True)
class Job:
    src: Path
    out: Path
    spec: ModelSpec
    config: dict                      # the source config.json as read
    recipe: Recipe
    shards: tuple[ShardJob, ...]
    run_key: dict                     # what a resumed run must match (recipe, source identity, tool)

    @property
    def source_bytes(self) -> int:
        return sum(s.source_bytes for s in self.shards)


def plan_job(src: Path, out: Path, recipe: Recipe, extra_key: dict | None = None) -> Job:
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise InputError(src, None, None, "source must be a checkpoint folder (config.json + safetensors)")
    check_model_folder(src)
    if out.resolve() == src.resolve() or src.resolve() in out.resolve().parents:
        raise InputError(out, None, None, "OUT must not be SRC or lie inside it (the source is never modified)")
    config_path = src / "config.json"
    if not config_path.is_file():
        raise InputError(src, "config.json", None, "checkpoint folder has no config.json")
    config = load_json(config_path)
    spec = read_folder_config(src, config)
    if spec.formats.rules:
        raise InputError(config_path, OURS_KEY, "present",
                         "SRC is already an mv4deploy output; quantize from its full-precision or native source")
    recipe.check_applies(spec)
    slots = _check_headers(src, spec)
    weights = logical_weights(spec)
    by_file: dict[str, list[WeightJob]] = {}
    for w in weights:
        target = assign(recipe.rules, w, spec.architecture)
        if target != w.native and w.native == RAW_FORMAT:
            raise AssertionError(f"{w.name}: a rule changed a raw table")
        sources = tuple(slots[t.name] for t in w.stored)
        outputs = tuple(w.stored) if target == w.native else get_format(target).stored(w.name, w.shape)
        outputs = tuple(StoredTensor(t.name, t.dtype, t.shape, getattr(t, "params", 0)) for t in outputs)
        by_file.setdefault(sources[0][0], []).append(WeightJob(w, target, sources, outputs))
    order = list(shard_files(src))
    shards = tuple(ShardJob(f, tuple(by_file[f])) for f in order if f in by_file)
    key = {"tool": f"mv4deploy {__version__}", "recipe": recipe.resolved_rules(spec),
           "source": {f: _identity(src / f) for f in order}, **(extra_key or {})}
    return Job(src, out, spec, config, recipe, shards, key)


def _check_headers(src: Path, spec: ModelSpec) -> dict[str, tuple[str, HeaderTensor]]:
    """Every header tensor must be one the config implies, with its dtype and shape (the first that is not
    is refused); returns each tensor's shard and place. (read_checkpoint_headers already checked the
    index, sizes and offsets.)"""
    from mv4deploy.model.inventory import build_inventory
    headers = read_checkpoint_headers(src)
    refuse_mismatches(src, compare(build_inventory(spec).tensors, headers))
    return {h.name: (h.file, h) for h in headers}


def _identity(path: Path) -> list:
    """Cheap identity of a source shard for resuming: size and a hash of its header."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little")
        digest = hashlib.sha256(head + handle.read(length)).hexdigest()
    return [path.stat().st_size, digest]
