"""Greedy generation from a checkpoint folder: the smoke check behind ``mv4deploy generate``."""

from __future__ import annotations

import time
from pathlib import Path

from mv4deploy.core.device import resolve_device
from mv4deploy.core.errors import InputError
from mv4deploy.model.tokenizer import load_tokenizer


def generate_text(path: str | Path, prompt: str, max_new_tokens: int = 32, device: str = "cpu") -> dict:
    """Greedy continuation of ``prompt``; returns text, token counts and decode speed (tokens/s)."""
    import torch

    from mv4deploy.runtime.loader import load_model
    device = resolve_device(device)
    if max_new_tokens < 1:
        raise InputError(None, "--max-new-tokens", max_new_tokens, "must be at least 1")
    tokenizer = load_tokenizer(path)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    if ids.shape[1] == 0:
        raise InputError(None, "--prompt", prompt, "encodes to no tokens")
    load_start = time.perf_counter()
    model = load_model(path, device=device)
    load_s = time.perf_counter() - load_start
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(ids.to(device), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
    decode_s = time.perf_counter() - start
    new = out[0, ids.shape[1]:].tolist()
    return {"checkpoint": str(path), "model": type(model).__name__, "device": device, "prompt": prompt,
            "completion": tokenizer.decode(new, skip_special_tokens=False), "prompt_tokens": ids.shape[1],
            "new_tokens": len(new), "new_token_ids": new, "load_s": round(load_s, 3),
            "tokens_per_s": round(len(new) / decode_s, 2) if decode_s > 0 else None}
