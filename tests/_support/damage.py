"""Damaged copies of a checkpoint: chosen stored tensors scaled, everything else byte-identical."""

from __future__ import annotations

import re
import shutil
from pathlib import Path


def scale_tensors(src: Path, dst: Path, pattern: str, scale: float) -> list[str]:
    """Copy ``src`` to ``dst`` and multiply every stored tensor whose name matches ``pattern`` (re.fullmatch)
    by ``scale``; returns the names changed (a test asserts it is not empty)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    changed = []
    for file in sorted(dst.glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            metadata = handle.metadata()
            tensors = {n: handle.get_tensor(n) for n in handle.keys()}
        names = [n for n in tensors if re.fullmatch(pattern, n)]
        for name in names:
            tensors[name] = (tensors[name].float() * scale).to(tensors[name].dtype)
        if names:
            save_file(tensors, str(file), metadata=metadata)
        changed += names
    return sorted(changed)


# V4's heavily compressed attention (HCA, one entry per 128 tokens) in tiny-v4's layer 2: a query sees its
# first entry at position 127, so this damage is invisible to chunks of 128 tokens and grows with context.
HCA_COMPRESSOR = r"layers\.2\.attn\.compressor\.wkv\.weight"
# One routed expert of the hash-routed first layer, its output projection sign-flipped and tripled.
EXPERT_0_OF_LAYER_0 = r"layers\.0\.ffn\.experts\.0\.w2\.weight"
