"""Resolve MODEL (a preset name, a config.json, or a checkpoint folder) into a spec and an inventory.

For a checkpoint folder the inventory comes from the safetensors headers (never tensor data) and is
compared, tensor by tensor, with the one the config implies; any difference is reported by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mv4deploy.errors import InputError
from mv4deploy.model.config import load_json, read_config
from mv4deploy.model.inventory import Inventory, TensorInfo, build_inventory
from mv4deploy.model.safetensors_headers import read_checkpoint_headers
from mv4deploy.model.spec import ModelSpec

PRESETS_DIR = Path(__file__).resolve().parent / "presets"
DEFAULT_MODEL = "deepseek-v4-flash"


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.json"))


@dataclass(frozen=True)
class Mismatch:
    name: str
    problem: str  # "missing from checkpoint" | "not in config" | "dtype ..." | "shape ..."


@dataclass(frozen=True)
class ResolvedModel:
    spec: ModelSpec
    inventory: Inventory            # from headers when a checkpoint folder was given
    source: str                     # preset name or path
    kind: str                       # "preset" | "config" | "checkpoint"
    mismatches: tuple[Mismatch, ...] = field(default=())


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
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InputError(folder, "config.json", None, "checkpoint folder has no config.json")
    spec = read_config(load_json(config_path), str(config_path), name=folder.resolve().name)
    expected = build_inventory(spec)
    headers = read_checkpoint_headers(folder)
    by_name = {t.name: t for t in expected.tensors}
    tensors, mismatches = [], []
    for h in headers:
        want = by_name.pop(h.name, None)
        if want is None:
            mismatches.append(Mismatch(h.name, f"not in config-derived inventory ({h.dtype}{list(h.shape)})"))
            continue
        if h.dtype != want.dtype:
            mismatches.append(Mismatch(h.name, f"dtype {h.dtype} in checkpoint, {want.dtype} expected"))
        if h.shape != want.shape:
            mismatches.append(Mismatch(h.name, f"shape {list(h.shape)} in checkpoint, {list(want.shape)} expected"))
        tensors.append(TensorInfo(h.name, h.dtype, h.shape, want.role, want.format, _params(want, h),
                                  want.layer, want.expert, want.mtp))
    mismatches += [Mismatch(name, "missing from checkpoint") for name in sorted(by_name)]
    inventory = Inventory(spec=spec, tensors=tuple(tensors))
    return ResolvedModel(spec, inventory, str(folder), "checkpoint", tuple(mismatches))


def _params(want: TensorInfo, header) -> int:
    """Parameters of a header tensor: the expected count when shapes agree, else scaled by size."""
    if header.shape == want.shape or not want.params:
        return want.params
    return round(want.params * header.nbytes / max(want.nbytes, 1))
