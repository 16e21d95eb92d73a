"""Typed reads of user data files (YAML profiles, export targets, gates, recipes; JSON configs) and of CLI
option values, with one error shape: ``InputError(file, field, value, reason)``, one line, exit 2.

``load_yaml(path)`` is the only YAML reader (``load_json`` its JSON twin): a missing, unreadable or malformed file names the file and,
for a syntax error, the line. ``Section`` reads one mapping field by field with a parser each; the field
parsers raise ``ValueError(reason)``, which the section turns into an error naming the field path
(``gpus.memory``) and the value. ``option`` applies the same parsers to a CLI option. No torch, no numpy:
the planner path imports this.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path

from mv4deploy.core.errors import InputError
from mv4deploy.core.units import parse_bytes, parse_bytes_per_s, parse_iops, parse_seconds

UNKNOWN = "unknown"   # a figure nobody measured (``profile detect`` writes it); loads as None where allowed


def read_text(path: Path) -> str:
    """A data file's text; a missing or unreadable file is one line naming it."""
    try:
        return path.read_text()
    except FileNotFoundError:
        raise InputError(path, None, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, None, None, f"cannot read ({exc.__class__.__name__})") from None


def load_yaml(path: str | Path) -> object:
    """The parsed data of a YAML file (libyaml's safe loader when built in: ~10x faster, same results).
    Aliases are allowed but the document they expand to is bounded (``bounded_yaml``): an alias bomb is
    one line and exit 2 in milliseconds, not a hang."""
    import yaml
    path = Path(path)
    text = read_text(path)
    try:
        return bounded_yaml(text)
    except RecursionError:
        raise InputError(path, None, None, "malformed YAML: nested too deeply") from None
    except DocumentTooLarge as exc:
        raise InputError(path, None, None, str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        problem = str(getattr(exc, "problem", None) or exc)[:120]
        raise InputError(path, None, None, f"malformed YAML{line}: {problem}") from None


MAX_YAML_NODES = 100_000   # a profile or gate has ~100; aliases may not expand a document past this


class DocumentTooLarge(ValueError):
    pass


def bounded_yaml(text: str) -> object:
    """``yaml.safe_load`` that first counts the nodes the document expands to (an alias counts as
    everything it names, memoised per node, so the count itself is linear in the file) and refuses more
    than ``MAX_YAML_NODES`` before anything is built."""
    import yaml
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        expanded = _expanded_nodes(node)
        if expanded > MAX_YAML_NODES:
            raise DocumentTooLarge(f"YAML expands to more than {MAX_YAML_NODES:,} values through aliases "
                                   f"(an alias bomb?); write the values out")
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _expanded_nodes(root) -> int:
    """Nodes of the tree ``root`` stands for with every alias expanded; stops early past the limit."""
    import yaml
    sizes: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        kids = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        if children_done:
            sizes[id(node)] = min(1 + sum(sizes.get(id(k), 0) for k in kids), MAX_YAML_NODES + 1)
        else:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]


def load_json(path: str | Path) -> object:
    """The parsed data of a JSON file; errors in ``load_yaml``'s shape."""
    import json
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except RecursionError:
        raise InputError(path, None, None, "malformed JSON: nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise InputError(path, None, None, f"malformed JSON at line {exc.lineno}: {exc.msg}") from None


def load_data(path: str | Path) -> object:
    """A ``.yaml``/``.yml`` file through ``load_yaml``, anything else through ``load_json``."""
    return load_yaml(path) if Path(path).suffix in (".yaml", ".yml") else load_json(path)


def option(name: str, parse, value):
    """A CLI option's value through a field parser: its ValueError becomes an error naming the option."""
    try:
        return parse(value)
    except (ValueError, TypeError) as exc:
        raise InputError(None, name, value, str(exc)) from None


class Section:
    """Typed reads from one mapping; ``done()`` makes leftover keys an error (typos fail at load time)."""

    suggest_typos = True    # a missing field names a near key that is present ("bandwith": a typo?)

    def __init__(self, data: object, source: str, path: str = ""):
        if not isinstance(data, dict):
            raise InputError(source, path or None, data, "must be a mapping")
        self.data, self.source, self.path, self.used = data, source, path, set()

    def field(self, key: str) -> str:
        """The dotted path of ``key`` (what errors name)."""
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, parse, required: bool = True, default=None, allow_unknown: bool = False):
        """``parse(value)``; a missing or null key is ``default`` unless required; ``unknown`` is None
        where ``allow_unknown``, an error elsewhere."""
        self.used.add(key)
        if key not in self.data or self.data[key] is None:
            if required:
                near = difflib.get_close_matches(key, [k for k in self.data if isinstance(k, str)], n=1) \
                    if self.suggest_typos else []
                hint = f" (found {near[0]!r}: a typo?)" if near and near[0] != key else ""
                raise InputError(self.source, self.field(key), None, f"required field is missing{hint}")
            return default
        value = self.data[key]
        if value == UNKNOWN:
            if not allow_unknown:
                raise InputError(self.source, self.field(key), value, "must be known for this field")
            return None
        try:
            return parse(value)
        except (ValueError, TypeError) as exc:
            raise InputError(self.source, self.field(key), value, str(exc)) from None

    def section(self, key: str, required: bool = True) -> "Section | None":
        self.used.add(key)
        if key not in self.data:
            if required:
                raise InputError(self.source, self.field(key), None, "required section is missing")
            return None
        return Section(self.data[key], self.source, self.field(key))

    def unread(self) -> list:
        """Keys no ``get``/``section`` asked for yet, in file order."""
        return [k for k in self.data if k not in self.used]

    def done(self) -> None:
        extra = sorted(self.unread(), key=str)
        if extra:
            raise InputError(self.source, self.field(str(extra[0])), self.data[extra[0]], "unknown field")


# ---- field parsers: value -> parsed, or ValueError(reason) -------------------------------------------

def positive_int(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("must be a positive integer")
    return value


def integer(minimum: int, maximum: int):
    """An integer in [minimum, maximum]; a float with no fraction (``4096.0``) counts as one."""
    def parse(value) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError("must be an integer")
        if not minimum <= value <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}")
        return value
    return parse


def integers(minimum: int):
    """A list of integers >= minimum, as a tuple."""
    def parse(value) -> tuple[int, ...]:
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum
                                                  for v in value):
            raise ValueError(f"must be a list of integers >= {minimum}")
        return tuple(value)
    return parse


def finite(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("must be a finite number")
    return float(value)


def non_negative(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError("must be a number >= 0")
    return float(value)


def fraction(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError("must be a number in (0, 1]")
    return float(value)


def numeric(parse):
    """``parse`` applied to a number written as text (a CLI option's value): '0.9' -> parse(0.9)."""
    def wrapped(value):
        try:
            value = float(value)
        except (TypeError, ValueError):
            pass   # left to ``parse`` to reject with its own reason
        return parse(value)
    return wrapped


def boolean(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def text(value) -> str:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise ValueError("must be text")
    return str(value)


def strings(value) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


def enum_of(kind):
    """One of a ``str`` Enum's values -> the member."""
    def parse(value):
        try:
            return kind(value)
        except ValueError:
            raise ValueError(f"must be one of {[k.value for k in kind]}") from None
    return parse


def choice(*allowed: str):
    def parse(value):
        if value not in allowed:
            raise ValueError(f"must be one of {list(allowed)}")
        return value
    return parse


def positive_size(value) -> int:
    size = parse_bytes(_with_unit(value, "a size", "'24GiB' or '128GB'"))
    if size <= 0 or size > 2**60:
        raise ValueError("must be a size between 1 B and 1 EiB")
    return size


def size(value) -> int:
    """A size that may be zero (a reserve); a bare 0 needs no unit."""
    n_bytes = parse_bytes(value if value in (0, "0") else _with_unit(value, "a size", "'24GiB' or '128GB'"))
    if n_bytes > 2**60:
        raise ValueError("must be a size below 1 EiB")
    return n_bytes


def positive_rate(value) -> float:
    rate = parse_bytes_per_s(_with_unit(value, "a rate", "'1008GB/s'"))
    if rate <= 0 or rate > 1e16:
        raise ValueError("must be a rate between 0 and 10 PB/s")
    return rate


def _with_unit(value, what: str, example: str):
    """A bare number (``1008``, ``"1e12"``) is refused: is it bytes, GB or GB/s? The unit is the meaning."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"{what} needs a unit, like {example}")
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError(f"{what} needs a unit, like {example}")
    return value


def latency(value) -> float:
    seconds = parse_seconds(value)
    if not 0 < seconds <= 1:
        raise ValueError("must be a latency between 0 and 1 s")
    return seconds


def positive_iops(value) -> float:
    rate = parse_iops(value)
    if not 0 < rate <= 1e10:
        raise ValueError("must be an operation rate between 0 and 10G IOPS")
    return rate
