"""Parse human quantities ("24GiB", "1008GB/s", "838TFLOPS") once, into ints of bytes and floats per second.

Strings like these never get past this module: the rest of the code sees ``*_bytes`` ints and
``*_per_s`` floats. Decimal prefixes are powers of 1000, binary ones (Ki, Mi, Gi, Ti) powers of 1024.
"""

from __future__ import annotations

import re

_PREFIX = {
    "": 1,
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50,
}
_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKMGTP]i?)?\s*([A-Za-z/]*)\s*$")
_SIZE_UNITS = {"B", ""}
_RATE_UNITS = {"B/s", "Bps"}
_BIT_RATE_UNITS = {"b/s", "bps", "bit/s"}     # network links are quoted in bits: "400Gb/s" = 50 GB/s
_FLOPS_UNITS = {"FLOPS", "FLOP/s", "OPS", "OP/s"}


def _split(text: object, units: set[str], what: str) -> float:
    if isinstance(text, bool):
        raise ValueError(f"expected {what}, got a boolean")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _QUANTITY.match(str(text))
        if not match:
            raise ValueError(f"expected {what} like {_EXAMPLE[what]}")
        number, prefix, unit = match.groups()
        prefix = (prefix[0].upper() + "i") if prefix and prefix.endswith("i") else (prefix or "")
        if unit not in units:
            raise ValueError(f"unknown unit {unit!r} for {what}; use one of {sorted(u for u in units if u)}")
        value = float(number) * _PREFIX[prefix]
    if value != value or value < 0 or value == float("inf"):
        raise ValueError(f"{what} must be a finite number >= 0")
    return value


_EXAMPLE = {"a size": "'24GiB' or '128GB'", "a rate": "'1008GB/s'", "a compute rate": "'838TFLOPS'"}


def parse_bytes(text: object) -> int:
    """'24GiB' -> 25769803776; a bare number is bytes (profile fields refuse one: ``schema._with_unit``)."""
    return int(round(_split(text, _SIZE_UNITS, "a size")))


def parse_bytes_per_s(text: object) -> float:
    """'1008GB/s' -> 1.008e12; bits per second as links are quoted: '400Gb/s' -> 5e10 bytes/s."""
    match = _QUANTITY.match(str(text)) if isinstance(text, str) else None
    if match and match.group(3) in _BIT_RATE_UNITS:
        return _split(text, _BIT_RATE_UNITS, "a rate") / 8
    return _split(text, _RATE_UNITS, "a rate")


def parse_flops_per_s(text: object) -> float:
    """'838TFLOPS' -> 8.38e14 (also TOPS for integer formats)."""
    return _split(text, _FLOPS_UNITS, "a compute rate")


def format_bytes(n_bytes: float) -> str:
    """Binary units for memory: 25769803776 -> '24.00 GiB'."""
    value = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


_TOKENS = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+)\s*([kKmM]?)\s*$")
_TOKEN_PREFIX = {"": 1, "k": 2**10, "K": 2**10, "m": 2**20, "M": 2**20}


def parse_tokens(text: object) -> int:
    """A token count: '131072', '128k' -> 131072, '1m' -> 1048576 (k and m are powers of 1024, as
    context lengths are quoted: "128K" = 131072). Must be a whole number; the sign is kept so the caller
    can say "must be positive" rather than "not a number"."""
    if isinstance(text, bool):
        raise ValueError("expected a token count, got a boolean")
    if isinstance(text, int):
        return text
    match = _TOKENS.match(str(text))
    if not match:
        raise ValueError("expected a token count like 131072, '128k' or '1m'")
    value = float(match.group(1)) * _TOKEN_PREFIX[match.group(2)]
    if not value.is_integer():
        raise ValueError("must be a whole number of tokens")
    return int(value)


_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(s|ms|us|µs|ns)\s*$")
_DURATION_DIVISOR = {"s": 1.0, "ms": 1e3, "us": 1e6, "µs": 1e6, "ns": 1e9}


def parse_seconds(text: object) -> float:
    """'10us' -> 1e-05; a latency must carry its unit (s, ms, us, ns)."""
    match = _DURATION.match(str(text)) if not isinstance(text, bool) else None
    if not match:
        raise ValueError("expected a duration like '10us', '0.08ms' or '1s'")
    return float(match.group(1)) / _DURATION_DIVISOR[match.group(2)]


def parse_iops(text: object) -> float:
    """'1.4M IOPS' or 1400000 -> 1.4e6 operations per second."""
    return _split(text, {"IOPS", ""}, "an operation rate")


_EXAMPLE["an operation rate"] = "'1.4M IOPS'"
