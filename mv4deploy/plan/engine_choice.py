"""Which engine a plan models: the one named, or (``auto``) the best serving engine the hardware supports.

Each engine that passes the machine gates (``gates.machine_gates``) is planned with its own kernels,
layouts and fixed costs; a plan whose formats it cannot run (``gates.format_gates``) is refused; of the
rest the best verdict wins, then the fastest decode. mv4deploy's own runtime is not a serving engine: it
is planned when named, or when no serving engine can run the model on this machine (a phone's NPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from mv4deploy.core.jsonify import JsonResult
from mv4deploy.engines.engine import AUTO, Engine, load_engine
from mv4deploy.plan.gates import format_gates, machine_gates
from mv4deploy.plan.items import ItemKind
from mv4deploy.plan.kv_tiering import cache_format
from mv4deploy.formats import FORMATS

SERVING = ("vllm", "sglang", "ktransformers", "llama.cpp", "ik_llama.cpp", "accelerate")
OWN_RUNTIME = "mv4deploy"

Weighed = NamedTuple("Weighed", [("engine", str), ("verdict", str), ("decode_tokens_per_s", float)])
Refused = NamedTuple("Refused", [("engine", str), ("why", str)])


@dataclass(frozen=True)
class EngineChoice(JsonResult):
    """The ``engine`` block of a plan: the engine modelled, why, and what the others came to."""

    name: str
    version: str
    why: str
    weighed: tuple[Weighed, ...] = ()
    refused: tuple[Refused, ...] = ()


def engines_to_weigh(name: str | Engine) -> list[Engine]:
    """``auto``: every serving engine; otherwise the one named (an unknown name exits 2 listing them), or the
    engine given (a caller's modified model: benchmarks/published_runs.py fits constants this way)."""
    if isinstance(name, Engine):
        return [name]
    return [load_engine(n) for n in SERVING] if name == AUTO else [load_engine(name)]


def plan_formats(candidate) -> tuple[dict[str, str], str | None]:
    """(storage format -> compute format of the weights the engine runs, KV cache format) of a candidate."""
    formats, kv = {}, None
    for p in candidate.placement.placed:
        if p.item.kind is ItemKind.WEIGHTS and p.option.format in FORMATS:
            formats[p.option.format] = FORMATS[p.option.format].compute
        elif p.item.kind is ItemKind.KV and cache_format(p.option) is not None:
            kv = cache_format(p.option).value
    return formats, kv


def refusals(engine: Engine, profile, arch: str, candidate=None) -> list[str]:
    """Why ``engine`` cannot run this (before planning: the machine; after: the candidate's formats)."""
    if candidate is None:
        return machine_gates(engine, profile, arch)
    return format_gates(engine, profile, *plan_formats(candidate))


def weigh_engines(requested, profile, arch: str, weigh) -> tuple[dict, list[Refused], bool]:
    """Plan each engine to weigh with ``weigh(engine)`` (-> (best candidate, by_mode, machine, policy)) unless a
    gate refuses it before or after. Returns the runs by engine name, the refusals, and whether the plan is forced
    not to fit: when every engine is refused, ``auto`` falls back to mv4deploy's own runtime, while a named engine
    is planned anyway and does not fit."""
    runs, refused = {}, []
    for engine in engines_to_weigh(requested):
        reasons = refusals(engine, profile, arch)
        run = None if reasons else weigh(engine)
        reasons = reasons or refusals(engine, profile, arch, run[0])
        if reasons:
            refused.append(Refused(engine.name, reasons[0]))
        else:
            runs[engine.name] = run
    if runs:
        return runs, refused, False
    fallback = load_engine(OWN_RUNTIME) if requested == AUTO else engines_to_weigh(requested)[0]
    return {fallback.name: weigh(fallback)}, refused, requested != AUTO


def why_chosen(name: str, requested: str | Engine, weighed: list[Weighed], refused: list[Refused]) -> str:
    if requested != AUTO:
        return f"named with --engine {getattr(requested, 'name', requested)}"
    if name == OWN_RUNTIME:
        return "no serving engine runs this model on this machine (see refused); mv4deploy's own runtime does"
    rest = [f"{w.engine} {w.verdict} at {w.decode_tokens_per_s:,.1f} tok/s" for w in weighed if w.engine != name]
    return "best verdict, then fastest decode, of the engines the hardware supports" + \
        (f" (others: {'; '.join(rest)})" if rest else "")
