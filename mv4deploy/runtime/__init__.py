"""Run checkpoints: load native DeepSeek (and HF-layout) checkpoints into transformers models, Engram.

Importing this package imports torch; the planner path never does.
"""

from __future__ import annotations


def load_model(path, device="cpu", dtype=None, engram_device=None):
    """See ``mv4deploy.runtime.loader.load_model`` (imported lazily: it pulls in torch)."""
    import torch

    from mv4deploy.runtime.loader import load_model as _load
    return _load(path, device=device, dtype=dtype or torch.float32, engram_device=engram_device)


__all__ = ["load_model"]
