"""A frozen result dataclass as the JSON-ready dict its ``to_json`` promises: fields in order, nested
dataclasses and NamedTuples as dicts, other tuples as lists and ``str`` enums as their values, so an in-process caller sees
exactly what ``--json`` prints."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from enum import Enum


def to_json(value):
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple) and hasattr(value, "_asdict"):   # a NamedTuple record
        return {k: to_json(v) for k, v in value._asdict().items()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


class JsonResult:
    """Mixin for a frozen result dataclass: ``to_json()`` is ``to_json(self)``."""

    def to_json(self) -> dict:
        return to_json(self)
