"""Resolve MODEL (a preset name, a config.json, or a checkpoint folder) into a spec and an inventory.

For a checkpoint folder the inventory comes from the safetensors headers (never tensor data) and is
compared, tensor by tensor, with the one the config implies; any difference is reported by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mv4deploy.errors import InputError
from mv4deploy.model.config import load_json, read_config
from mv4deploy.model.inventory import Inventory, TensorInfo, build_inventory
from mv4deploy.model.safetensors_headers import HeaderTensor, read_checkpoint_headers
from mv4deploy.model.spec import ModelSpec
from mv4deploy.safepaths import check_model_folder

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_MODEL = "deepseek-v4-flash"


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


def resolve_model(model: str | Path) -> ResolvedModel:
    text = str(model)
    path = Path(text)
    if path.is_dir():
        return _from_checkpoint(path)
    if path.is_file() or text.endswith(".json"):
        spec = read_config(load_json(path), str(path), name=_model_name(path))
        return ResolvedModel(spec, build_inventory(spec), str(path), "config")
    preset = PRESETS_DIR / f"{text}.json"
    if not preset.is_file():
        raise InputError(None, "model", text,
                         f"not a preset, config.json or checkpoint folder; presets: {', '.join(list_presets())}")
    spec = read_config(load_json(preset), f"preset {text}", name=text)
    return ResolvedModel(spec, build_inventory(spec), text, "preset")


def _model_name(config_path: Path) -> str:
    parent = config_path.resolve().parent.name
    return parent if config_path.name == "config.json" and parent else config_path.stem


def _from_checkpoint(folder: Path) -> ResolvedModel:
    check_model_folder(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(folder, "config.json", None, "checkpoint folder has no config.json")
    spec = read_config(load_json(config_path), str(config_path), name=folder.resolve().name)
    expected = build_inventory(spec)
    headers = tuple(read_checkpoint_headers(folder))
    by_name = {t.name: t for t in expected.tensors}
    tensors = tuple(TensorInfo(h.name, h.dtype, h.shape, want.role, want.format, _params(want, h), want.layer,
                               want.expert, want.mtp) for h in headers if (want := by_name.get(h.name)) is not None)
    inventory = Inventory(spec=spec, tensors=tensors)
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
