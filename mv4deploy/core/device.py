"""``--device``: the one list of choices and the one place they are checked and resolved.

``check_device`` runs while the CLI parses (no torch import, so a typo fails in milliseconds); the
library calls ``resolve_device`` where it needs a torch device, which turns ``auto`` into CUDA when
present and refuses ``cuda`` on a machine without it. Bad input names ``--device`` and the value.
"""

from __future__ import annotations

from mv4deploy.core.errors import InputError

DEVICES = ("auto", "cpu", "cuda")   # auto: CUDA when present, else the CPU


def check_device(name: str) -> str:
    if name not in DEVICES:
        raise InputError(None, "--device", name, f"must be one of {', '.join(DEVICES)}")
    return name


def resolve_device(name: str) -> str:
    """``"cpu"`` or ``"cuda"`` for a ``--device`` value."""
    if check_device(name) == "cpu":
        return "cpu"
    import torch
    if torch.cuda.is_available():
        return "cuda"
    if name == "cuda":
        raise InputError(None, "--device", name, "CUDA is not available on this machine")
    return "cpu"
