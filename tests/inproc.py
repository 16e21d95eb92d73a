"""Run the CLI in this process (as ``python -m mv4deploy`` would, minus the interpreter start): the fuzz
and fault-injection tests run hundreds of command lines, which as subprocesses would take minutes."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from conftest import CliResult


def run_inproc(*args) -> CliResult:
    from mv4deploy.cli import run
    out, err = io.StringIO(), io.StringIO()
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "200"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = run([str(a) for a in args])
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return CliResult(code, out.getvalue(), err.getvalue())


def one_line_error(result: CliResult, *words: str) -> str:
    """Exit 2, nothing on stdout, one line on stderr holding every word; returns the line."""
    assert result.code == 2, (result.code, result.stderr[-2000:])
    assert result.stdout == "", result.stdout[:500]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes); {} when it does not exist."""
    folder = Path(folder)
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
