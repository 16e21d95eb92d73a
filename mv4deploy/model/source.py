"""Resolve MODEL (a preset name, a config.json, or a checkpoint folder) into a spec and an inventory.

For a checkpoint folder the inventory comes from the safetensors headers (never tensor data) and is
compared, tensor by tensor, with the one the config implies; any difference is reported by name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mv4deploy.core.errors import InputError
from mv4deploy.model.config import load_json, read_config
from mv4deploy.model.quant_config import MissingExpertDtype
from mv4deploy.model.inventory import build_inventory
from mv4deploy.model.tensors import Inventory, TensorInfo, TensorTable
from mv4deploy.model.safetensors_headers import HeaderTensor, read_checkpoint_headers
from mv4deploy.model.spec import ModelSpec
from mv4deploy.core.safepaths import check_model_folder

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


@dataclass(frozen=True)
class Mismatch:
    name: str
    problem: str  # "missing from checkpoint" | "not in config" | "dtype ..." | "shape ..."
    file: str | None = None  # the shard holding the tensor; None when no shard does


@dataclass(frozen=True)
class ResolvedModel:
    spec: ModelSpec
    inventory: Inventory            # from headers when a checkpoint folder was given
    source: str                     # preset name or path
    kind: str                       # "preset" | "config" | "checkpoint"
    mismatches: tuple[Mismatch, ...] = field(default=())
    headers: tuple[HeaderTensor, ...] = field(default=())   # a checkpoint's tensors as its headers say


def resolve_model(model: str | Path, expert_dtype: str | None = None) -> ResolvedModel:
    """``expert_dtype`` (fp4 | fp8): the routed experts' format where the config leaves it open."""
    text = str(model)
    path = Path(text)
    if path.is_dir():
        return _from_checkpoint(path, expert_dtype)
    if path.is_file() or text.endswith(".json"):
        spec = read_config(load_json(path), str(path), name=_model_name(path), expert_dtype=expert_dtype)
        return ResolvedModel(spec, build_inventory(spec), str(path), "config")
    preset = PRESETS_DIR / f"{text}.json"
    if not preset.is_file():
        raise InputError(None, "model", text,
                         f"not a preset, config.json or checkpoint folder; presets: {', '.join(list_presets())}")
    spec = read_config(load_json(preset), f"preset {text}", name=text, expert_dtype=expert_dtype)
    return ResolvedModel(spec, build_inventory(spec), text, "preset")


def _model_name(config_path: Path) -> str:
    parent = config_path.resolve().parent.name
    return parent if config_path.name == "config.json" and parent else config_path.stem


# A routed expert's weight in V4's native names, and what its stored dtype says about the format
EXPERT_WEIGHT = re.compile(r"(?:layers|mtp)\.\d+\.ffn\.experts\.\d+\.w[123]\.weight")
EXPERT_DTYPE_OF_HEADER = {"I8": "fp4", "U8": "fp4", "F8_E4M3": "fp8"}  # FP4: two values per byte


def expert_dtype_from_headers(headers: Iterable[HeaderTensor]) -> str | None:
    """fp4 | fp8 from the first routed-expert weight in the headers; None if there is none (or it is BF16)."""
    first = next((h for h in headers if EXPERT_WEIGHT.fullmatch(h.name)), None)
    return EXPERT_DTYPE_OF_HEADER.get(first.dtype) if first is not None else None


def read_folder_config(folder: Path, raw: dict | None = None, expert_dtype: str | None = None,
                       headers: tuple[HeaderTensor, ...] | None = None) -> ModelSpec:
    """A checkpoint folder's spec: its config.json (or ``raw``), and where the config is silent on the routed
    experts' format, what ``expert_dtype`` or else the folder's safetensors headers say."""
    config_path = Path(folder) / "config.json"
    raw = load_json(config_path) if raw is None else raw
    name = Path(folder).resolve().name
    try:
        return read_config(raw, str(config_path), name=name, expert_dtype=expert_dtype)
    except MissingExpertDtype:
        found = expert_dtype_from_headers(headers if headers is not None else read_checkpoint_headers(folder))
        if found is None:
            raise
        return read_config(raw, str(config_path), name=name, expert_dtype=found)


def _from_checkpoint(folder: Path, expert_dtype: str | None = None) -> ResolvedModel:
    check_model_folder(folder)
    if not (folder / "config.json").is_file():
        raise InputError(folder, "config.json", None, "checkpoint folder has no config.json")
    headers = tuple(read_checkpoint_headers(folder))
    spec = read_folder_config(folder, expert_dtype=expert_dtype, headers=headers)
    expected = build_inventory(spec)
    by_name = {t.name: t for t in expected.tensors}
    tensors = tuple(TensorInfo(h.name, h.dtype, h.shape, want.role, want.format, _params(want, h), want.layer,
                               want.expert, want.mtp) for h in headers if (want := by_name.get(h.name)) is not None)
    inventory = Inventory(spec=spec, tensors=TensorTable(tensors))
    return ResolvedModel(spec, inventory, str(folder), "checkpoint", compare(expected.tensors, headers), headers)


def compare(expected: Iterable[TensorInfo], headers: Iterable[HeaderTensor]) -> tuple[Mismatch, ...]:
    """The checkpoint's headers against the inventory config.json implies: header tensors in header order
    (one the config does not imply; a dtype or shape it contradicts), then the implied tensors no shard
    holds, by name."""
    by_name = {t.name: t for t in expected}
    mismatches = []
    for h in headers:
        want = by_name.pop(h.name, None)
        if want is None:
            mismatches.append(Mismatch(h.name, f"not in config-derived inventory ({h.dtype}{list(h.shape)})", h.file))
            continue
        if h.dtype != want.dtype:
            mismatches.append(Mismatch(h.name, f"dtype {h.dtype} in checkpoint contradicts config.json, which "
                                               f"implies {want.dtype}", h.file))
        if h.shape != want.shape:
            mismatches.append(Mismatch(h.name, f"shape {list(h.shape)} in checkpoint contradicts config.json, "
                                               f"which implies {list(want.shape)}", h.file))
    return tuple(mismatches) + tuple(Mismatch(name, "missing from checkpoint") for name in sorted(by_name))


def refuse_mismatches(folder: Path, mismatches: tuple[Mismatch, ...]) -> None:
    """The first mismatch as an ``InputError`` naming its shard (or the folder) and how many more there are."""
    if mismatches:
        first = mismatches[0]
        more = f" ({len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        raise InputError(Path(folder) / first.file if first.file else folder, first.name, None,
                         f"{first.problem}{more}")


def _params(want: TensorInfo, header) -> int:
    """Parameters of a header tensor: the expected count when shapes agree, else scaled by size."""
    if header.shape == want.shape or not want.params:
        return want.params
    return round(want.params * header.nbytes / max(want.nbytes, 1))
