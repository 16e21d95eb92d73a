"""The only place that prints. Data goes to stdout (a rich table, or JSON with ``--json``);
errors, warnings and progress go to stderr, so ``--json`` output always parses."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

from rich.console import Console
from rich.markup import escape



def _stdout() -> Console:
    return Console(file=sys.stdout, highlight=False, soft_wrap=False)


def _stderr() -> Console:
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def emit_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=_default) + "\n")


def _default(value: object):
    if hasattr(value, "value"):          # str Enums
        return value.value
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def error(message: str) -> None:
    _stderr().print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)


def warn(message: str) -> None:
    _stderr().print(f"[yellow]warning:[/] {escape(message)}", markup=True, highlight=False)


def info(message: str) -> None:
    _stderr().print(message, markup=False, highlight=False)


def text(data: str) -> None:
    """Text that is the command's result (a profile YAML, usage help) to stdout, ending in one newline."""
    sys.stdout.write(data if data.endswith("\n") else data + "\n")


@contextmanager
def progress(description: str, total: float | None, unit_bytes: bool = True):
    """A progress bar on stderr (bytes/s and ETA when ``unit_bytes``); yields ``advance(n)``.

    One rule for every command: the bar is drawn only when stderr is a terminal. Piped or captured
    (CI logs, tests) nothing is drawn and ``advance`` does nothing, so logs hold results, not redraws."""
    if not sys.stderr.isatty():
        yield lambda n=1: None
        return
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)
    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += [DownloadColumn(), TransferSpeedColumn()] if unit_bytes else [MofNCompleteColumn()]
    columns.append(TimeRemainingColumn())
    with Progress(*columns, console=_stderr(), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)


@contextmanager
def library_noise_to_stderr():
    """While heavy libraries run: anything native code writes to file descriptor 1 goes to stderr (the QNN
    HTP library prints a banner on stdout, which would break ``--json``), and their Python logging below
    ERROR and their warnings are dropped. Our own progress lines still reach stderr through ``info``."""
    import logging
    import os
    import warnings
    sys.stdout.flush()
    saved_fd = os.dup(1)
    try:
        os.dup2(2, 1)
        logging.disable(logging.WARNING)      # levels alone fail: onnxruntime's quantizer calls basicConfig(INFO)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved_fd, 1)
        os.close(saved_fd)
        logging.disable(logging.NOTSET)


def _count(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def print_warnings(items: list[str]) -> None:
    for item in items:
        warn(item)
