"""The native <-> transformers name map, both ways, on every tensor of V4-Flash, V4-Pro, V4.1-Flash and
the tiny fixtures; and agreement with transformers' own ``deepseek_v4`` conversion mapping."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

import pytest

torch = pytest.importorskip("torch")

from mv4deploy.model.source import resolve_model  # noqa: E402
from mv4deploy.runtime import name_map  # noqa: E402
from mv4deploy.model.rules import logical_weights  # noqa: E402

from tests.conftest import REPO  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "models"


@lru_cache(maxsize=None)
def inventory(preset: str):
    return resolve_model(preset).inventory


@lru_cache(maxsize=None)
def meta_state(preset: str) -> dict[str, tuple[int, ...]]:
    """Parameter and persistent-buffer shapes of transformers' model for a preset, built on meta."""
    from transformers import DeepseekV4ForCausalLM

    from mv4deploy.model.config import load_json
    from mv4deploy.model.source import PRESETS_DIR
    from mv4deploy.runtime.hf_config import v4_config
    config = v4_config(load_json(PRESETS_DIR / f"{preset}.json"), preset)
    with torch.device("meta"):
        model = DeepseekV4ForCausalLM(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def covered_slots(weights) -> Counter:
    """How often each (param, expert, half) slot is the target of some native weight."""
    slots = Counter()
    for weight in weights:
        target = name_map.to_target(weight.name)
        if target is not None:
            slots[target.key] += 1
    return slots


@pytest.mark.parametrize("preset", ["deepseek-v4-flash", "deepseek-v4-pro"])
def test_every_shipped_name_maps_once_and_back(preset):
    weights = logical_weights(inventory(preset).spec)
    assert sum(len(w.stored) for w in weights) == len(inventory(preset).tensors)   # scales all belong
    slots = covered_slots(weights)
    assert max(slots.values()) == 1                                                 # none twice
    for weight in weights:
        target = name_map.to_target(weight.name)
        if target is None:
            assert weight.name.startswith("mtp.")                                   # only MTP is skipped
            continue
        assert name_map.to_native(target) == weight.name
    skipped = sum(name_map.to_target(w.name) is None for w in weights)
    assert skipped == sum(1 for w in weights if w.name.startswith("mtp."))


@pytest.mark.parametrize("preset", ["deepseek-v4-flash", "deepseek-v4-pro"])
def test_targets_cover_every_transformers_parameter_exactly(preset):
    """Backwards: every parameter / persistent buffer of transformers' model is filled, fused experts
    slot by slot, and every target names one."""
    state = meta_state(preset)
    spec = inventory(preset).spec
    slots = covered_slots(logical_weights(spec))
    expected = Counter()
    for param, shape in state.items():
        if param.endswith("experts.gate_up_proj"):
            expected.update(f"{param}[{e}]:{half}" for e in range(shape[0]) for half in ("gate", "up"))
        elif param.endswith("experts.down_proj"):
            expected.update(f"{param}[{e}]" for e in range(shape[0]))
        else:
            expected[param] += 1
    assert slots == expected


@pytest.mark.parametrize("preset", ["deepseek-v4-flash", "deepseek-v4-pro"])
def test_agrees_with_transformers_conversion_mapping(preset):
    """The library's own deepseek_v4 renamings give the same parameter for every native name (routed
    experts: the first and last of each layer, the rest differ only in the index), and its expert
    converter concatenates w1 then w3 (gate first), as our ``:gate`` / ``:up`` halves say."""
    from transformers.conversion_mapping import get_checkpoint_conversion_mapping
    from transformers.core_model_loading import WeightConverter, rename_source_key
    transforms = get_checkpoint_conversion_mapping("deepseek_v4")
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    assert [p.split(".")[-2] for p in converters[0].source_patterns] == ["w1", "w3"]
    state = meta_state(preset)
    spec = inventory(preset).spec
    for weight in logical_weights(spec):
        target = name_map.to_target(weight.name)
        if target is None or target.expert not in (None, 0, spec.n_routed_experts - 1):
            continue
        theirs, _ = rename_source_key(weight.name, renamings, converters, base_model_prefix="model",
                                      meta_state_dict=state)
        assert theirs == target.param, weight.name


def test_v41_flash_every_name_is_mapped_or_skipped_with_a_reason():
    spec = inventory("deepseek-v4.1-flash").spec
    weights = logical_weights(spec)
    reasons = Counter(name_map.skip_reason(w.name) for w in weights if name_map.to_target(w.name) is None)
    assert set(reasons) <= {reason for _, reason in name_map.SKIPPED}
    engram = [w for w in weights if ".engram." in w.name]
    assert len(engram) == 8 and all(name_map.to_target(w.name) is not None for w in engram)
    assert name_map.to_target("layers.14.engram.embed.weight").param == "model.layers.14.engram.embed.weight"
    for weight in weights:
        target = name_map.to_target(weight.name)
        if target is not None:
            assert name_map.to_native(target) == weight.name


def test_expert_slots_and_errors():
    target = name_map.to_target("layers.3.ffn.experts.17.w3.weight")
    assert (target.param, target.expert, target.half) == ("model.layers.3.mlp.experts.gate_up_proj", 17, "up")
    assert name_map.to_native("model.layers.3.mlp.experts.down_proj[5]") == "layers.3.ffn.experts.5.w2.weight"
    with pytest.raises(KeyError, match="no row"):
        name_map.to_target("layers.0.attn.not_a_tensor.weight")
    with pytest.raises(KeyError):
        name_map.to_native("model.layers.0.mlp.experts.gate_up_proj")   # a fused tensor needs its slot


@pytest.mark.parametrize("fixture", ["tiny-v4", "tiny-v41", "tiny-v4-fp8fp4"])
def test_fixture_tensors_map_both_ways_onto_the_loaded_model(fixture):
    from mv4deploy.runtime import load_model
    folder = FIXTURES / fixture
    if not folder.is_dir():
        pytest.skip(f"{fixture} not built yet")
    resolved = resolve_model(folder)
    weights = logical_weights(resolved.spec)
    assert {t.name for w in weights for t in w.stored} == {t.name for t in resolved.inventory.tensors}
    state = load_model(folder).state_dict()
    slots = covered_slots(weights)
    assert max(slots.values()) == 1
    for weight in weights:
        target = name_map.to_target(weight.name)
        assert target.param in state and name_map.to_native(target) == weight.name
    assert {key.split("[")[0] for key in slots} == set(state)
