"""Recipes: named, ordered rule lists (first match wins, explicit catch-all last), and the recipe a
planner plan implies. Pure Python; the matching itself lives in ``rules.py``.

Every preset starts with the same guard: norms, router weights and biases, mHC parameters and the
Engram gating weights stay as the source stores them. Formats are applied by *slot* (see rules.py):
``linear`` is what DeepSeek ships in FP8, ``expert`` the routed experts, ``engram_table`` the V4.1
tables; ``fp8`` resolves to the family's own FP8 layout (V3: 128x128 F32 scales, V4: 128x128 UE8M0,
V4.1: 32x32 UE8M0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mv4deploy.core.errors import InputError
from mv4deploy.model.tensors import RAW_FORMAT, Role
from mv4deploy.model.spec import ModelSpec
from mv4deploy.plan.groups import CLASS_ROLES, GroupClass
from mv4deploy.model.rules import NATIVE, Rule, assign, logical_weights, resolve_format, rules_from_json, unused_rules
from mv4deploy.core.schema import load_data

KEEP_HIGH_PRECISION = (
    Rule(NATIVE, role=Role.NORM.value),
    Rule(NATIVE, role=Role.ROUTER.value),
    Rule(NATIVE, role=Role.HASH_ROUTER.value),
    Rule(NATIVE, role=Role.MHC.value),
    Rule(NATIVE, match=r"(^|\.)engram\.(q_weight|k_weight)$"),  # Engram gating (per-stream norm weights)
)
CATCH_ALL = Rule(NATIVE, match=".*")

PRESETS: dict[str, tuple[Rule, ...]] = {
    "native": (CATCH_ALL,),
    "fp8": KEEP_HIGH_PRECISION + (
        Rule("fp8", slot="linear"), Rule("fp8", slot="expert"), Rule("fp8-rows-ue8m0", slot="engram_table"),
        CATCH_ALL),
    "fp8-fp4-experts": KEEP_HIGH_PRECISION + (  # the V4 shipping layout
        Rule("mxfp4", slot="expert"), Rule("fp8", slot="linear"), Rule("fp8-rows-ue8m0", slot="engram_table"),
        CATCH_ALL),
    "int4-experts": KEEP_HIGH_PRECISION + (     # GPUs without FP4 (Ada) or experts in host RAM
        Rule("int4-g128", slot="expert"), Rule("fp8", slot="linear"), Rule("fp8-rows-ue8m0", slot="engram_table"),
        CATCH_ALL),
    "int4": KEEP_HIGH_PRECISION + (             # compressed-tensors W4A16 on every linear (GPTQ with --calib)
        Rule("int4-g128", slot="expert"), Rule("int4-g128", slot="linear"), CATCH_ALL),
    "nvfp4": KEEP_HIGH_PRECISION + (            # Blackwell: compressed-tensors NVFP4A16 on every linear
        Rule("nvfp4", slot="expert"), Rule("nvfp4", slot="linear"), CATCH_ALL),
    "nf4": KEEP_HIGH_PRECISION + (              # transformers + bitsandbytes users
        Rule("nf4", slot="expert"), Rule("nf4", slot="linear"), CATCH_ALL),
}
# The rules that make a preset what it is: a model none of them applies to is refused (exit 2), so an
# experts preset never silently turns a dense model into plain FP8. The others (FP8 rows for Engram
# tables, FP8 experts under `fp8`) apply where the model has such weights.
DEFINING: dict[str, tuple[Rule, ...]] = {
    "fp8-fp4-experts": (Rule("mxfp4", slot="expert"),), "int4-experts": (Rule("int4-g128", slot="expert"),),
}


@dataclass(frozen=True)
class Recipe:
    name: str
    rules: tuple[Rule, ...]
    source: str = "preset"   # "preset", a recipe file, or a plan file

    def formats(self, spec: ModelSpec) -> dict[str, str]:
        """Logical weight name -> the format this recipe gives it on ``spec`` (in inventory order)."""
        return {w.name: assign(self.rules, w, spec.architecture) for w in logical_weights(spec)}

    def check_applies(self, spec: ModelSpec) -> None:
        """Refuse a recipe with a rule that converts nothing on ``spec``: a preset's defining rule
        (``DEFINING``), or any converting rule of a recipe file or plan. Exit 2, naming the rule."""
        unused = unused_rules(self.rules, logical_weights(spec), spec.architecture)
        defining = DEFINING.get(self.name, ()) if self.source == "preset" else \
            tuple(r for r in self.rules if r.format != NATIVE)
        for rule in (r for r in unused if r in defining):
            raise InputError(self.source if self.source != "preset" else None, "--recipe", self.name,
                             f"rule {rule.to_json()} applies to no weight of {spec.name} "
                             f"({spec.architecture.value}); this recipe does not apply to this model")

    def resolved_rules(self, spec: ModelSpec) -> list[dict]:
        """The rules as written into the output's config.json: aliases resolved for this family."""
        return [{**r.to_json(), "format": resolve_format(r.format, spec.architecture)} for r in self.rules]


def get_recipe(name_or_file: str) -> Recipe:
    """A preset name, or a JSON/YAML file ``{"name": ..., "rules": [...]}``."""
    if name_or_file in PRESETS:
        return Recipe(name_or_file, PRESETS[name_or_file])
    path = Path(name_or_file)
    if not path.is_file():
        raise InputError(None, "--recipe", name_or_file,
                         f"not a preset or a recipe file; presets: {', '.join(PRESETS)}")
    data = load_data(path)
    if not isinstance(data, dict):
        raise InputError(path, None, type(data).__name__, "a recipe file must be an object with 'rules'")
    return Recipe(str(data.get("name") or path.stem), rules_from_json(data.get("rules"), str(path)), str(path))


AS_STORED = frozenset({NATIVE, RAW_FORMAT, "as-stored"})  # plan formats that mean "keep what the source stores"
# A plan's recipe starts with the guard, plus the one F32 matrix its converted groups hold (V4's compressor
# positional embeddings, in the indexer): the planner never converts F32 weights (``groups._convertible``).
PLAN_GUARD = KEEP_HIGH_PRECISION + (Rule(NATIVE, match=r"(^|\.)compressor\.ape$"),)


def recipe_from_plan(path: Path) -> Recipe:
    """The recipe a planner plan implies (``mv4deploy plan --out``): the guard (``PLAN_GUARD``), then one
    rule per inventory role of each group whose format differs from its ``stored_format``, then the
    catch-all. Rows are ``{name, group, role, layer, stored_format, tier, format, bytes}`` (the planner's
    JSON contract); ``role`` is the group's class (``routed_experts``, ``head``), which ``CLASS_ROLES`` turns
    into the inventory roles whose weights the policy converts; a group cut over tiers gives one rule.
    The guard comes first: what it keeps (norms, routers, mHC, Engram gating, F32 matrices) no policy
    converts either, so the quantized bytes are the plan's bytes."""
    path = Path(path)
    data = load_data(path) if path.is_file() else None
    if data is None:
        raise InputError(path, None, None, "plan file not found")
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, list):
        raise InputError(path, "groups", groups, "must be the planner's list of tensor groups")
    rules: dict[tuple, dict] = {}
    for i, group in enumerate(groups):
        if not isinstance(group, dict):
            raise InputError(path, f"groups[{i}]", group, "must be an object")
        fmt = group.get("format")
        if fmt is None or fmt in AS_STORED or fmt == group.get("stored_format"):
            continue
        for role in _group_roles(path, i, group.get("role"), fmt):
            raw = {"format": fmt, "role": role.value, "layer": group.get("layer")}
            rule = {k: v for k, v in raw.items() if v is not None}
            rules.setdefault(tuple(sorted(rule.items())), rule)
    checked = rules_from_json(list(rules.values()) + [CATCH_ALL.to_json()], str(path))
    return Recipe(f"plan:{path.name}", PLAN_GUARD + checked[:-1] + (CATCH_ALL,), str(path))


def _group_roles(path: Path, index: int, cls: object, fmt: str) -> tuple[Role, ...]:
    """The inventory roles a plan row of group class ``cls`` converts to ``fmt``."""
    known = [c.value for c in GroupClass]
    if cls not in known:
        raise InputError(path, f"groups[{index}].role", cls, f"unknown group class; known: {', '.join(known)}")
    roles = CLASS_ROLES[GroupClass(cls)]
    if not roles:
        raise InputError(path, f"groups[{index}].format", fmt, f"{cls} groups are always kept as stored")
    return roles
