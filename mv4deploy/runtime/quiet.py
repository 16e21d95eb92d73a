"""Third-party progress bars off while our code drives a library: every long step of a command draws one
bar of its own (``cli.output.progress``), so transformers' "Loading weights" (and the hub's) must not
draw a second one, nor litter captured logs. Restores the library's setting on exit."""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def library_bars_off():
    from transformers.utils import logging as hf_logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
