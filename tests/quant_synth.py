"""Synthetic checkpoints for the quantization tests: the exact tensor names, dtypes and shapes a
config implies (from the inventory), random values, written as real safetensors shards + index."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from mv4deploy.model.config import load_json, read_config
from mv4deploy.model.tensors import RAW_FORMAT, Role
from mv4deploy.formats import get_format
from mv4deploy.model.rules import logical_weights

PRESETS = Path(__file__).resolve().parents[1] / "mv4deploy" / "model" / "presets"


def preset_config(name: str, full_precision: bool = True, **overrides) -> dict:
    """A preset's config; ``full_precision`` drops the FP8/FP4 quantization_config (a BF16 source)."""
    config = copy.deepcopy(load_json(PRESETS / f"{name}.json"))
    target = config.get("text_config", config)
    target.update(overrides)
    if full_precision:
        config.pop("quantization_config", None)
        config.pop("expert_dtype", None)
    return config


def scaled_v4_config(hidden: int = 512, experts: int = 16, inter: int = 256) -> dict:
    """tiny-deepseek-v4 made wider (kill tests need a run that lasts a little while)."""
    return preset_config("tiny-deepseek-v4", hidden_size=hidden, n_routed_experts=experts,
                         moe_intermediate_size=inter, vocab_size=2048)


def make_checkpoint(folder: Path, config: dict, shards: int = 3, seed: int = 0,
                    edit=None) -> Path:
    """Write ``config`` and random weights in the layout it implies, split over ``shards`` files.
    ``edit(name, tensor) -> tensor`` may alter a stored tensor (to plant NaNs, for instance)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 4096}\n')
    spec = read_config(config, "synthetic")
    gen = torch.Generator().manual_seed(seed)
    stored: list[tuple[str, torch.Tensor]] = []
    for w in logical_weights(spec):
        for name, tensor in _stored(w, gen, spec).items():
            stored.append((name, edit(name, tensor) if edit else tensor))
    per = -(-len(stored) // shards)
    files = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {}
    for i, file in enumerate(files):
        part = dict(stored[i * per:(i + 1) * per])
        save_file({k: v.contiguous() for k, v in part.items()}, str(folder / file), metadata={"format": "pt"})
        weight_map.update({k: file for k in part})
    total = sum(v.numel() * v.element_size() for _, v in stored)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return folder


def _stored(w, gen: torch.Generator, spec) -> dict[str, torch.Tensor]:
    if w.native == RAW_FORMAT:  # tid2eid: expert ids per token
        experts = spec.n_routed_experts
        return {w.name: torch.randint(0, experts, w.shape, generator=gen, dtype=torch.int64)}
    if w.role is Role.NORM or w.name.endswith(("norm.weight", "_base", "_scale")):
        value = 1.0 + 0.1 * torch.randn(w.shape, generator=gen)
    else:
        value = 0.02 * torch.randn(w.shape, generator=gen)
    fmt = get_format(w.native)
    return fmt.quantize(w.name, value.to(torch.bfloat16) if w.native != "f32" else value)
