"""Read any checkpoint this project describes (native FP8/FP4, BF16, or an ``mv4deploy quantize``
output) back into its logical weights as float tensors: the formats' ``dequantize`` applied to the
stored tensors the config-derived inventory names. Used by tests, GPTQ's reference runs and the
KLD measurements; the runtime's loader does the same work with transformers' names."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from mv4deploy.model.source import read_folder_config
from mv4deploy.model.safetensors_headers import shard_files
from mv4deploy.model.rules import logical_weights


def iter_logical(folder: Path, dtype=torch.float32, names=None):
    """Yield (name, tensor) for every logical weight (raw integer tables as stored), shard by shard."""
    folder = Path(folder)
    spec = read_folder_config(folder)
    stored_at = {}
    for file, listed in shard_files(folder).items():
        with safe_open(str(folder / file), "pt") as handle:
            stored_at.update({name: file for name in (listed or handle.keys())})
    handles: dict[str, object] = {}
    try:
        for w in logical_weights(spec):
            if names is not None and w.name not in names:
                continue
            tensors = {}
            for t in w.stored:
                file = stored_at[t.name]
                if file not in handles:
                    handles[file] = safe_open(str(folder / file), "pt")
                tensors[t.name] = handles[file].get_tensor(t.name)
            yield w.name, w.decode(tensors, dtype)
    finally:
        handles.clear()


def load_logical(folder: Path, dtype=torch.float32, names=None) -> dict[str, torch.Tensor]:
    return dict(iter_logical(folder, dtype, names))
