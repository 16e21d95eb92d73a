"""core.units against hand-worked values: every prefix, every unit family, the boundaries of the
binary formatter and the exact error messages (a profile author reads them). Expected values are the
definitions written out (10**9, 2**30, ...), not calls back into the module."""

from __future__ import annotations

import math

import pytest

from mv4deploy.core.units import (format_bytes, parse_bytes, parse_bytes_per_s, parse_flops_per_s, parse_iops,
                                  parse_seconds, parse_tokens)


@pytest.mark.parametrize("text, n_bytes", [
    ("24GiB", 24 * 2**30),          # 24 * 1073741824 = 25769803776
    ("128GB", 128 * 10**9),
    ("1.5KiB", 1536),               # 1.5 * 1024
    ("2kiB", 2048),                 # lower-case binary prefix means Ki
    ("3 MiB", 3 * 2**20),
    ("1TiB", 2**40),
    ("1PiB", 2**50),
    ("2k", 2000),
    ("7", 7),
    ("0", 0),                       # zero is a size (an empty tier)
    (4096, 4096),
    ("1e3B", 1000),
    (" 5 GB ", 5 * 10**9),
])
def test_parse_bytes_by_hand(text, n_bytes):
    assert parse_bytes(text) == n_bytes
    assert isinstance(parse_bytes(text), int)


def test_rates_by_hand():
    assert parse_bytes_per_s("1008GB/s") == 1.008e12
    assert parse_bytes_per_s("64GiBps") == 64 * 2**30
    assert parse_bytes_per_s(0) == 0.0
    assert parse_flops_per_s("838TFLOPS") == 838e12
    assert parse_flops_per_s("1.5PFLOP/s") == 1.5e15
    assert parse_flops_per_s("200TOPS") == 200e12
    assert parse_iops("1.4M IOPS") == 1.4e6
    assert parse_iops("1.4M") == 1.4e6                  # a bare count is operations per second
    assert parse_iops(1400000) == 1.4e6


@pytest.mark.parametrize("fn, what", [(parse_bytes, "a size"), (parse_bytes_per_s, "a rate"),
                                      (parse_flops_per_s, "a compute rate"), (parse_iops, "an operation rate")])
@pytest.mark.parametrize("bad", [-1, -0.5, float("nan"), float("inf")])
def test_non_finite_or_negative_quantities_are_refused(fn, what, bad):
    with pytest.raises(ValueError, match=f"^{what} must be a finite number >= 0$"):
        fn(bad)


@pytest.mark.parametrize("fn, what, example, units", [
    (parse_bytes, "a size", "'24GiB' or '128GB'", "['B']"),
    (parse_bytes_per_s, "a rate", "'1008GB/s'", "['B/s', 'Bps']"),
    (parse_flops_per_s, "a compute rate", "'838TFLOPS'", "['FLOP/s', 'FLOPS', 'OP/s', 'OPS']"),
    (parse_iops, "an operation rate", "'1.4M IOPS'", "['IOPS']"),
])
def test_error_messages_name_the_quantity(fn, what, example, units):
    with pytest.raises(ValueError, match=f"^expected {what}, got a boolean$"):
        fn(True)
    with pytest.raises(ValueError, match=f"^expected {what} like {example}$"):
        fn("lots")
    with pytest.raises(ValueError) as err:
        fn("12 parsecs")
    assert str(err.value) == f"unknown unit 'parsecs' for {what}; use one of {units}"


@pytest.mark.parametrize("n_bytes, text", [
    (0, "0 B"),
    (1023, "1023 B"),
    (1024, "1.00 KiB"),             # the boundary: 1024 B is one KiB
    (1536, "1.50 KiB"),
    (-2048, "-2.00 KiB"),
    (5 * 2**20, "5.00 MiB"),
    (24 * 2**30, "24.00 GiB"),      # divided by 1024 three times; by 1025 it would print 23.93
    (3 * 2**40, "3.00 TiB"),
    (2**50, "1024.00 TiB"),         # TiB is the largest unit: no PiB
])
def test_format_bytes_by_hand(n_bytes, text):
    assert format_bytes(n_bytes) == text


@pytest.mark.parametrize("text, tokens", [
    ("131072", 131072), ("128k", 131072), ("128K", 131072), ("1m", 1048576), ("2M", 2 * 2**20),
    ("0.5k", 512), (" 64 ", 64), ("-4", -4), (7, 7),
])
def test_parse_tokens_by_hand(text, tokens):
    assert parse_tokens(text) == tokens


def test_parse_tokens_errors():
    with pytest.raises(ValueError, match="^expected a token count, got a boolean$"):
        parse_tokens(True)
    with pytest.raises(ValueError, match=r"^expected a token count like 131072, '128k' or '1m'$"):
        parse_tokens("many")
    with pytest.raises(ValueError, match="^must be a whole number of tokens$"):
        parse_tokens("1.5")


@pytest.mark.parametrize("text, seconds", [
    ("10us", 1e-5), ("10µs", 1e-5), ("0.08ms", 8e-5), ("1s", 1.0), ("5ns", 5e-9), ("2.5e3 ms", 2.5),
])
def test_parse_seconds_by_hand(text, seconds):
    assert math.isclose(parse_seconds(text), seconds, rel_tol=1e-15)


@pytest.mark.parametrize("bad", ["10", "ten us", True, "1 h"])
def test_parse_seconds_errors(bad):
    with pytest.raises(ValueError, match=r"^expected a duration like '10us', '0.08ms' or '1s'$"):
        parse_seconds(bad)
