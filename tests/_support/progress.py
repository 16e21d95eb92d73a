"""A progress factory shaped like the CLI's (``progress(description, total)`` -> ``advance(n=1)``) that records
each bar, for tests of what long work reports."""

from __future__ import annotations

from contextlib import contextmanager


def recorder():
    """``(progress, bars)``: as each bar closes, ``bars`` gets ``(description, total, advances)``, the list of
    the ``n`` passed to each advance call."""
    bars = []

    @contextmanager
    def progress(description, total):
        advances = []
        yield lambda n=1: advances.append(n)
        bars.append((description, total, advances))
    return progress, bars
