"""Recipes and rules: first match wins, explicit catch-all last, presets as a table that resolves
per family, plans turned into recipes, and the rules a quantized config.json carries."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from mv4deploy.core.errors import InputError
from mv4deploy.hardware.profile import load_profile
from mv4deploy.model.config import read_config
from mv4deploy.model.inventory import build_inventory
from mv4deploy.model.source import resolve_model
from mv4deploy.plan.make import make_plan
from mv4deploy.plan.groups import build_groups
from mv4deploy.plan.workload import make_workload
from mv4deploy.quant.recipe import PLAN_GUARD, PRESETS, get_recipe, recipe_from_plan
from mv4deploy.model.rules import Rule, assign, logical_weights, rules_from_json
from quant_synth import PRESETS as PRESET_CONFIGS
from quant_synth import preset_config


def _spec(name: str, **kw):
    return read_config(preset_config(name, **kw), name)


def test_first_match_wins_and_catch_all_is_required():
    spec = _spec("tiny-deepseek-v4")
    w = next(w for w in logical_weights(spec) if w.name == "layers.2.ffn.experts.3.w2.weight")
    rules = (Rule("int4-g32", match=r"experts\.3\."), Rule("mxfp4", slot="expert"), Rule("native", match=".*"))
    assert assign(rules, w, spec.architecture) == "int4-g32"
    assert assign(rules[1:], w, spec.architecture) == "mxfp4"
    with pytest.raises(InputError, match="catch-all"):
        rules_from_json([{"slot": "expert", "format": "mxfp4"}], "r.json")


@pytest.mark.parametrize("data,needle", [
    ([{"format": "fp5", "match": ".*"}], "unknown format"),
    ([{"format": "fp8", "match": "(unclosed"}], "not a regular expression"),
    ([{"format": "fp8", "role": "expertz"}, {"format": "native"}], "rules[0].role"),
    ([{"format": "fp8", "slot": "linear", "colour": "red"}, {"format": "native"}], "unknown rule key"),
    ([{"format": "fp8", "layer": -1}, {"format": "native"}], "layer"),
    ("fp8", "non-empty list"),
])
def test_rule_validation_names_the_field(data, needle):
    with pytest.raises(InputError) as info:
        rules_from_json(data, "recipe.yaml")
    assert needle in str(info.value) and "recipe.yaml" in str(info.value)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_never_touch_norms_routers_mhc_or_engram_gating(preset):
    spec = _spec("tiny-deepseek-v4.1")
    formats = get_recipe(preset).formats(spec)
    for w in logical_weights(spec):
        if w.role.value in ("norm", "router", "hash_router", "mhc") or w.name.endswith(("q_weight", "k_weight")):
            assert formats[w.name] == w.native, (preset, w.name)
        if len(w.shape) == 1:
            assert formats[w.name] == w.native, (preset, w.name)


@pytest.mark.parametrize("model,fp8", [("tiny-deepseek-v3", "fp8-e4m3-block128"),
                                       ("tiny-deepseek-v4", "fp8-e4m3-block128-ue8m0"),
                                       ("tiny-deepseek-v4.1", "fp8-e4m3-block32-ue8m0"),
                                       ("tiny-qwen2", "fp8-e4m3-block128")])
def test_fp8_resolves_to_the_family_layout(model, fp8):
    counts = Counter(get_recipe("fp8").formats(_spec(model)).values())
    assert counts[fp8] > 0 and not {f for f in counts if f.startswith("fp8-e4m3") and f != fp8}


def test_v4_shipping_recipe_reproduces_the_shipped_inventory():
    """fp8-fp4-experts on a BF16 tiny-v4 gives exactly the tensors of the FP8/FP4 preset config."""
    bf16 = _spec("tiny-deepseek-v4")
    native = read_config(preset_config("tiny-deepseek-v4", full_precision=False), "native")
    rules = tuple(rules_from_json(get_recipe("fp8-fp4-experts").resolved_rules(bf16), "x"))
    quantized = build_inventory(replace(bf16, formats=replace(bf16.formats, rules=rules)))
    shipped = build_inventory(native)
    assert [(t.name, t.dtype, t.shape) for t in quantized.tensors] == [(t.name, t.dtype, t.shape) for t in shipped.tensors]


def test_config_rules_round_trip_through_read_config():
    cfg = preset_config("tiny-deepseek-v4", full_precision=False)
    base = cfg["quantization_config"]
    cfg["mv4deploy_quantization"] = {"recipe": "int4-experts", "base": base,
                                     "rules": get_recipe("int4-experts").resolved_rules(_spec("tiny-deepseek-v4"))}
    spec = read_config(cfg, "out/config.json")
    fmts = {w.name: w.native for w in logical_weights(spec)}
    assert fmts["layers.1.ffn.experts.0.w1.weight"] == "int4-g128"
    assert fmts["layers.1.attn.wq_a.weight"] == "fp8-e4m3-block128-ue8m0"      # native: from base
    names = {t.name for t in build_inventory(spec).tensors}
    assert "layers.1.ffn.experts.0.w1.weight_packed" in names and "layers.1.attn.wq_a.scale" in names
    cfg["mv4deploy_quantization"]["rules"][-1] = {"slot": "plain", "format": "bf16"}
    with pytest.raises(InputError, match="catch-all"):
        read_config(cfg, "out/config.json")


def _plan_file(tmp_path, model: str, policy: str, profile: str = "b200") -> tuple[Path, dict]:
    """What `mv4deploy plan --out` writes: the planner's own JSON, never a hand-written imitation."""
    plan = make_plan(resolve_model(model), load_profile(profile), make_workload(context=4096), policy).to_json()
    path = tmp_path / f"plan-{model}-{policy}.json"
    path.write_text(json.dumps(plan))
    return path, plan


def test_plan_groups_become_rules(tmp_path):
    """int4-experts on tiny-v4 as shipped: only the routed experts of the 4 placed layers change (the MTP
    layer is not placed, so it keeps MXFP4); rows in their stored format give no rule."""
    path, plan = _plan_file(tmp_path, "tiny-deepseek-v4", "int4-experts")
    assert {g["role"] for g in plan["groups"]} >= {"routed_experts", "norms_mhc", "head"}   # group classes
    recipe = recipe_from_plan(path)
    assert recipe.rules[:len(PLAN_GUARD)] == PLAN_GUARD and recipe.rules[-1].catch_all
    assert recipe.rules[len(PLAN_GUARD):-1] == tuple(Rule("int4-g128", role="routed_expert", layer=layer)
                                                     for layer in range(4))
    formats = recipe.formats(resolve_model("tiny-deepseek-v4").spec)
    assert formats["layers.3.ffn.experts.1.w1.weight"] == "int4-g128"
    assert formats["mtp.0.ffn.experts.1.w1.weight"] == "mxfp4"
    assert formats["layers.1.attn.wq_a.weight"] == "fp8-e4m3-block128-ue8m0"
    assert Counter(formats.values())["int4-g128"] == 4 * 8 * 3            # layers x experts x (w1, w2, w3)


@pytest.mark.parametrize("model, policy, profile", [
    ("tiny-deepseek-v4", "int4-experts", "b200"), ("tiny-deepseek-v4", "int4", "rtx5090"),
    ("tiny-deepseek-v4", "fp8", "b200"), ("tiny-deepseek-v4.1", "int4-experts", "b200"),
    ("tiny-deepseek-v3", "int4-experts", "h100"), ("tiny-deepseek-v3", "int4", "b200"),
    ("tiny-qwen2", "mobile-int4", "snapdragon-8-elite-gen5"), ("tiny-llama", "int4", "rtx5090")])
def test_a_plans_recipe_quantizes_to_the_plans_bytes(tmp_path, model, policy, profile):
    """The checkpoint the plan's recipe describes (its rules in config.json, read back) holds, group by
    group, exactly the bytes the plan placed: the plan and `quantize --plan` agree on every format."""
    path, plan = _plan_file(tmp_path, model, policy, profile)
    recipe = recipe_from_plan(path)
    cfg = json.loads((PRESET_CONFIGS / f"{model}.json").read_text())
    base = cfg.get("quantization_config")
    resolved = resolve_model(model)
    cfg["mv4deploy_quantization"] = {"recipe": recipe.name, "base": base,
                                     "rules": recipe.resolved_rules(resolved.spec)}
    quantized = build_groups(build_inventory(read_config(cfg, "out/config.json", name=model)))
    planned = Counter()
    for row in plan["groups"]:
        planned[row["group"]] += row["bytes"]
    assert planned == Counter({g.name: g.native_bytes for g in quantized.groups if g.name in planned})
    assert any(g["format"] != g["stored_format"] for g in plan["groups"])   # the plan did convert something


@pytest.mark.parametrize("plan,needle", [({"groups": "all"}, "groups"),
                                         ({"groups": [{"role": "attention", "format": "fp9"}]}, "unknown format"),
                                         ({"groups": [{"role": "routed_expert", "format": "int4"}]},
                                          "unknown group class"),
                                         ({"groups": [{"role": "norms_mhc", "format": "fp8"}]}, "kept as stored"),
                                         ({"groups": [7]}, "must be an object")])
def test_bad_plans(tmp_path, plan, needle):
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    with pytest.raises(InputError, match=needle):
        recipe_from_plan(tmp_path / "plan.json")


def test_recipe_files_in_yaml(tmp_path):
    (tmp_path / "mine.yaml").write_text("name: experts-g32\nrules:\n  - {slot: expert, format: int4-g32}\n"
                                        "  - {match: '.*', format: native}\n")
    recipe = get_recipe(str(tmp_path / "mine.yaml"))
    assert recipe.name == "experts-g32"
    assert Counter(recipe.formats(_spec("tiny-deepseek-v4")).values())["int4-g32"] == 120


def test_logical_weights_cover_every_stored_tensor_of_the_full_models():
    """Slots and grouping hold on the real configs (V4-Flash, V4.1-Flash): every inventory tensor
    belongs to exactly one logical weight, and slots split the way DeepSeek stores them."""
    for name in ("deepseek-v4-flash", "deepseek-v4.1-flash"):
        spec = read_config(json.loads((__import__("quant_synth").PRESETS / f"{name}.json").read_text()), name)
        weights = logical_weights(spec)
        stored = [t.name for w in weights for t in w.stored]
        assert stored == [t.name for t in build_inventory(spec).tensors]
        slots = Counter(w.slot for w in weights)
        assert slots["expert"] == sum(1 for w in weights if w.role.value == "routed_expert")
        assert all(w.native.startswith("fp8") for w in weights if w.slot == "linear")
