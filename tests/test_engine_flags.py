"""Every launch line the planner emits parses against the flags of the engine version it is written for
(tests/data/engine_flags/*.txt: each file names its repository, commit and source file). A flag the engine
does not have, a value of the wrong type or outside its choices fails here."""

from __future__ import annotations

import functools

import re
import shlex
from pathlib import Path

import pytest

from mv4deploy.hardware.profile import list_profiles, load_profile
from mv4deploy.model.source import list_presets, resolve_model
from mv4deploy.plan.groups import build_groups
from mv4deploy.plan.make import make_plan
from mv4deploy.plan.workload import make_workload

FLAGS = Path(__file__).parent / "data" / "engine_flags"
BOOLEAN = re.compile(r"^bool|^flag \(no value\)")


def _flag_table(*names: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """flag -> (value type, allowed choices) from the fixture files (aliases share one entry)."""
    table = {}
    for name in names:
        for line in (FLAGS / name).read_text().splitlines():
            if not line.startswith("-"):
                continue
            columns = line.split("\t")
            kind = columns[1] if len(columns) > 1 else "str"
            found = re.search(r"choices=\[([^\]]*)\]", line)
            choices = tuple(c.strip(" '\"") for c in found.group(1).split(",")) if found else ()
            for alias in columns[0].split(","):
                table[alias.strip()] = (kind, choices)
    return table


VLLM = _flag_table("vllm_serve.txt")
SGLANG = _flag_table("sglang_launch_server.txt")
SGLANG_KT = {**SGLANG, **_flag_table("sglang_kt.txt")}
LLAMA = _flag_table("llama_server.txt")


def _check(tokens: list[str], table: dict, line: str) -> None:
    i = 0
    while i < len(tokens):
        flag = tokens[i]
        assert flag.startswith("-") and flag in table, f"unknown flag {flag!r} in: {line}"
        kind, choices = table[flag]
        if BOOLEAN.match(kind):
            i += 1
            continue
        assert i + 1 < len(tokens), f"{flag} needs a value in: {line}"
        value = tokens[i + 1]
        if kind.startswith("int") or kind == "N":
            assert re.fullmatch(r"\d+", value), f"{flag} {value!r} is not an integer in: {line}"
        if kind.startswith("float"):
            float(value)
        if choices:
            assert value in choices, f"{flag} {value!r} not in {choices}"
        i += 2


def check_vllm(line: str) -> None:
    tokens = shlex.split(line)
    assert tokens[:2] == ["vllm", "serve"] and not tokens[2].startswith("-"), line   # vllm serve MODEL
    _check(tokens[3:], VLLM, line)


def check_sglang(line: str) -> None:
    tokens = [t for t in shlex.split(line) if not re.fullmatch(r"[A-Z0-9_]+=\S*", t)]   # leading env settings
    assert tokens[:3] == ["python", "-m", "sglang.launch_server"], line
    _check(tokens[3:], SGLANG_KT if "--kt-" in line else SGLANG, line)


def check_llama(line: str) -> None:
    tokens = shlex.split(line)
    assert tokens[0] == "llama-server", line
    _check(tokens[1:], LLAMA, line)


def test_the_checker_refuses_what_the_engines_would():
    check_vllm("vllm serve /m --max-model-len 4096 --tensor-parallel-size 8 --enable-expert-parallel")
    for bad in ("vllm serve /m --max-model-length 4096", "vllm serve /m --max-model-len 4k2",
                "vllm serve /m --kv-offloading-size 3"):
        with pytest.raises(AssertionError):
            check_vllm(bad)
    with pytest.raises(AssertionError):
        check_sglang("python -m sglang.launch_server --model-path /m --kv-cache-dtype fp8")   # fp8_e4m3 only
    with pytest.raises(AssertionError):   # a strategy sglang-kt does not know
        check_sglang("python -m sglang.launch_server --model-path /m --kt-expert-placement-strategy first")
    check_llama("llama-server -m /m.gguf -c 4096 -ngl 999 -nkvo -ot 'blk\\.(1)\\.ffn_(gate|up|down)_exps\\.=CPU'")


@functools.lru_cache(maxsize=None)
def _model(preset: str):
    """A preset resolved and grouped once for every profile (the inventory of V4-Pro takes ~0.15 s)."""
    resolved = resolve_model(preset)
    return resolved, build_groups(resolved.inventory)


@pytest.mark.parametrize("profile", sorted(list_profiles()))
def test_every_emitted_launch_line_parses(profile):
    hardware = load_profile(profile)
    for preset in list_presets():
        resolved, grouping = _model(preset)
        for context in ("4096", "131072"):
            plan = make_plan(resolved, hardware, make_workload(context=context, batch="4"), suggest=False,
                             grouping=grouping)
            for line, check in ((plan.hints.vllm, check_vllm), (plan.hints.sglang, check_sglang),
                                (plan.hints.llama_cpp, check_llama)):
                if line:
                    check(line)
