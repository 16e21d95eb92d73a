"""The errors a user can cause, each rendered as one line that names the file, the field and the value.

Exit codes (STYLE.md): 0 ok, 1 a check failed (``CheckFailed``), 2 bad input (``InputError``).
"""

from __future__ import annotations

import re
import reprlib
from pathlib import Path

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2


class InputError(ValueError):
    """Bad input from the user: a file, a field in it, the offending value and what was expected."""

    def __init__(self, source: str | Path | None, field: str | None, value: object, reason: str):
        self.source = str(source) if source is not None else None
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(self.one_line())

    def __reduce__(self):   # pickled whole (a Ray task raises it on another process; exceptions pickle args)
        return (type(self), (self.source, self.field, self.value, self.reason))

    def one_line(self) -> str:
        where = ": ".join(_clip(part) for part in (self.source, self.field) if part)
        value = _short(self.value)
        head = f"{where}: " if where else ""
        shown = f"{value}: " if value is not None else ""
        return _CONTROL.sub(" ", f"{head}{shown}{self.reason}")


class CheckFailed(RuntimeError):
    """A check ran to completion and did not pass (a gate, a verification): exit code 1."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries raise multi-line ones), or its class name."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _short(value: object, limit: int = 80) -> str | None:
    """A bounded repr: a YAML alias bomb or a 100 MB string costs a few hundred characters, never its size."""
    if value is None:
        return None
    return _clip(_REPR.repr(value), limit)


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 80, 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
