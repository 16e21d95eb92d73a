"""Per-weight format rules: ordered (pattern / role / slot / layer -> format), first match wins.

A *logical weight* is one tensor of the model as the architecture defines it (``layers.3.attn.wq_a.weight``
of shape [1024, 4096]), whatever its stored form (payload + scale tensors). Each has a role (from the
inventory) and a *slot*: the StoredFormats field its family's inventory builder stores it with —
``linear`` (the weights DeepSeek ships in FP8), ``expert`` (routed experts: FP4 in V4), ``engram_table``,
``plain`` (embeddings, head, router and compressor weights, mHC) or ``norm``. Slots come from the
builders' own code, not from name substrings, so rules written against them cover every family.

Pure Python (no torch): the planner-side inventory applies a quantized checkpoint's rules through
``apply_rules`` to describe it exactly; the pipeline uses ``assign`` to pick each weight's format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from functools import lru_cache

from mv4deploy.core.errors import InputError
from mv4deploy.model.tensors import INVENTORY_BUILDERS, RAW_FORMAT, Role, TensorInfo
from mv4deploy.model.spec import Arch, ModelSpec, StoredFormats
from mv4deploy.formats import FORMATS, get_format

NATIVE = "native"   # keep the format the source checkpoint stores the weight in
SLOTS = ("linear", "expert", "engram_table", "plain", "norm")
# Aliases a recipe may use; resolved per architecture so "fp8" means the family's own FP8 layout.
FP8_BY_ARCH = {Arch.DEEPSEEK_V3: "fp8-e4m3-block128", Arch.DEEPSEEK_V32: "fp8-e4m3-block128",
               Arch.DEEPSEEK_V4: "fp8-e4m3-block128-ue8m0", Arch.DEEPSEEK_V41: "fp8-e4m3-block32-ue8m0",
               Arch.QWEN2: "fp8-e4m3-block128", Arch.LLAMA: "fp8-e4m3-block128"}
ALIASES = {"fp4": "mxfp4", "int4": "int4-g128"}


PLAIN_FORMATS = frozenset({"bf16", "f32", RAW_FORMAT})


@dataclass(frozen=True)
class LogicalWeight:
    """One weight of the model and its stored tensors: the quantizer, the readback and the runtime's
    loader and writer all walk these (``logical_weights``)."""

    name: str
    shape: tuple[int, ...]
    role: Role
    slot: str
    native: str                       # format the source config says it is stored in
    stored: tuple[TensorInfo, ...]    # its tensors in the source layout, payload first
    layer: int | None = None
    expert: int | None = None

    @property
    def payload(self) -> str:
        """The first stored tensor's name (``X.weight``; ``X.weight_packed`` for INT4)."""
        return self.stored[0].name

    @property
    def is_plain(self) -> bool:
        return self.native in PLAIN_FORMATS

    def decode(self, tensors: dict, dtype=None):
        """The full-precision tensor from its stored tensors (keys: stored names): a raw table as stored,
        any other format through its ``dequantize`` (a plain one is a cast) into ``dtype`` (default
        float32). The one decode path of the pipeline, the readback and the runtime's loader."""
        if self.native == RAW_FORMAT:
            return tensors[self.name]
        return get_format(self.native).dequantize(self.name, tensors, dtype, shape=self.shape)


@dataclass(frozen=True)
class Rule:
    """Conditions are ANDed; absent ones match anything. ``match`` is a regex searched in the
    weight's name. A rule only matches weights its format can hold (block and group formats need
    a matrix), so a role rule never turns a 1-D norm or bias into FP8 by accident."""

    format: str
    match: str | None = None
    role: str | None = None
    slot: str | None = None
    layer: int | None = None

    def matches(self, w: LogicalWeight, fmt_ndim: int) -> bool:
        return ((self.match is None or re.search(self.match, w.name) is not None)
                and (self.role is None or w.role.value == self.role)
                and (self.slot is None or w.slot == self.slot)
                and (self.layer is None or w.layer == self.layer)
                and len(w.shape) >= fmt_ndim)

    @property
    def catch_all(self) -> bool:
        return self.match in (None, ".*", "") and self.role is None and self.slot is None and self.layer is None

    def to_json(self) -> dict:
        keys = ("match", "role", "slot", "layer", "format")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


def resolve_format(name: str, arch: Arch) -> str:
    """A recipe's format name -> a FORMATS name (or NATIVE)."""
    if name == "fp8":
        return FP8_BY_ARCH[arch]
    return ALIASES.get(name, name)


def rule_from_json(data: object, source: str, index: int) -> Rule:
    """One rule from JSON/YAML, checked: known keys, a known format, a valid regex, a known role."""
    field = f"rules[{index}]"
    if not isinstance(data, dict):
        raise InputError(source, field, data, "a rule must be an object with 'format' and conditions")
    unknown = sorted(set(data) - {"match", "role", "slot", "layer", "format"})
    if unknown:
        raise InputError(source, f"{field}.{unknown[0]}", data[unknown[0]],
                         "unknown rule key; known: match, role, slot, layer, format")
    fmt = data.get("format")
    known = sorted(FORMATS) + [NATIVE, "fp8", *ALIASES]
    if fmt not in known:
        raise InputError(source, f"{field}.format", fmt, f"unknown format; known: {', '.join(known)}")
    if data.get("match") is not None:
        try:
            re.compile(data["match"])
        except (re.error, TypeError) as exc:
            raise InputError(source, f"{field}.match", data["match"], f"not a regular expression ({exc})") from None
    _check_choice(source, f"{field}.role", data.get("role"), [r.value for r in Role])
    _check_choice(source, f"{field}.slot", data.get("slot"), list(SLOTS))
    layer = data.get("layer")
    if layer is not None and (not isinstance(layer, int) or isinstance(layer, bool) or layer < 0):
        raise InputError(source, f"{field}.layer", layer, "must be a layer number >= 0")
    return Rule(format=fmt, match=data.get("match"), role=data.get("role"), slot=data.get("slot"), layer=layer)


def _check_choice(source: str, field: str, value, allowed: list[str]) -> None:
    if value is not None and value not in allowed:
        raise InputError(source, field, value, f"unknown; known: {', '.join(allowed)}")


def rules_from_json(data: object, source: str) -> tuple[Rule, ...]:
    """An ordered rule list whose last rule is an explicit catch-all (nothing falls through silently)."""
    if not isinstance(data, list) or not data:
        raise InputError(source, "rules", data, "must be a non-empty list of rules")
    rules = tuple(rule_from_json(item, source, i) for i, item in enumerate(data))
    if not rules[-1].catch_all:
        raise InputError(source, f"rules[{len(rules) - 1}]", rules[-1].to_json(),
                         'the last rule must be a catch-all (e.g. {"match": ".*", "format": "native"})')
    return rules


def assign(rules: tuple[Rule, ...], weight: LogicalWeight, arch: Arch) -> str:
    """The format the first matching rule gives ``weight`` (NATIVE resolved to its source format)."""
    for rule in rules:
        fmt = resolve_format(rule.format, arch)
        ndim = 0 if fmt == NATIVE else get_format(fmt).min_ndim
        if rule.matches(weight, ndim):
            return weight.native if fmt == NATIVE or weight.native == RAW_FORMAT else fmt
    return weight.native


def unused_rules(rules: tuple[Rule, ...], weights, arch: Arch) -> list[Rule]:
    """The rules that are the first match of no weight (a rule for experts on a dense model)."""
    used = set()
    for w in weights:
        for i, rule in enumerate(rules):
            fmt = resolve_format(rule.format, arch)
            if rule.matches(w, 0 if fmt == NATIVE else get_format(fmt).min_ndim):
                used.add(i)
                break
    return [rule for i, rule in enumerate(rules) if i not in used]


# ---------------------------------------------------------------- logical weights of a spec
_PROBE = StoredFormats(linear="fp8-e4m3-block128", expert="mxfp4", engram_table="fp8-rows-ue8m0", plain="bf16",
                       norm="nf4")
_PROBE_SLOT = {"fp8-e4m3-block128": "linear", "mxfp4": "expert", "fp8-rows-ue8m0": "engram_table",
               "bf16": "plain", "f32": "plain", "nf4": "norm", RAW_FORMAT: "plain"}
_PLAIN = StoredFormats(linear="bf16", expert="bf16", engram_table="bf16", plain="bf16", norm="bf16")


def _grouped(tensors: list[TensorInfo]) -> list[tuple[TensorInfo, ...]]:
    """Split an inventory into its logical weights: each weight's stored tensors are consecutive and
    their number is fixed by its format (builders add a weight's payload and scales together)."""
    out, i = [], 0
    while i < len(tensors):
        fmt = tensors[i].format
        n = 1 if fmt == RAW_FORMAT else len(get_format(fmt).stored("w.weight", (1, 1)))
        out.append(tuple(tensors[i:i + n]))
        i += n
    return out


def _build(spec: ModelSpec, formats: StoredFormats) -> list[TensorInfo]:
    from mv4deploy.model import inventory_deepseek, inventory_dense  # noqa: F401  (registers builders)
    return list(INVENTORY_BUILDERS[spec.architecture](replace(spec, formats=formats)))   # one by one: experts too


@lru_cache(maxsize=8)
def _base_weights(spec: ModelSpec) -> tuple[LogicalWeight, ...]:
    """Logical weights with the formats of ``spec.formats`` itself (rules ignored)."""
    plain = [g[0] for g in _grouped(_build(spec, _PLAIN))]
    probe = [g[0].format for g in _grouped(_build(spec, _PROBE))]
    native = _grouped(_build(spec, replace(spec.formats, rules=())))
    if not len(plain) == len(probe) == len(native):
        raise AssertionError(f"inventory builds of {spec.name} disagree on the number of weights")
    return tuple(LogicalWeight(p.name, p.shape, p.role, _PROBE_SLOT[slot], n[0].format, n, p.layer, p.expert)
                 for p, slot, n in zip(plain, probe, native))


@lru_cache(maxsize=8)
def logical_weights(spec: ModelSpec) -> tuple[LogicalWeight, ...]:
    """Every logical weight of ``spec`` with its role, slot, stored format and stored tensors. For a
    checkpoint written by ``mv4deploy quantize`` (``spec.formats.rules``), the format each weight got
    from its first matching rule; ``native`` is then that format."""
    base = _base_weights(spec)
    if not spec.formats.rules:
        return base
    out = []
    for w in base:
        fmt = assign(spec.formats.rules, w, spec.architecture)
        if fmt == w.native:
            out.append(w)
            continue
        first = w.stored[0]
        stored = tuple(TensorInfo(t.name, t.dtype, t.shape, first.role, fmt, t.params, first.layer, first.expert,
                                  first.mtp) for t in get_format(fmt).stored(w.name, w.shape))
        out.append(replace(w, native=fmt, stored=stored))
    return tuple(out)


def apply_rules(spec: ModelSpec) -> list[TensorInfo]:
    """The inventory of a checkpoint quantized by ``spec.formats.rules`` on top of its base formats."""
    return [t for w in logical_weights(spec) for t in w.stored]
