"""Config readers across releases: transformers' renamed keys (read and written), draft layers beyond the
MTP tail, the expert format never guessed, and DeepSeek-V3-architecture models of other labs."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from conftest import PRESETS, REPO
from mv4deploy.core.errors import InputError
from mv4deploy.model.config import load_json, read_config
from mv4deploy.model.quant_config import MissingExpertDtype
from mv4deploy.model.inventory import build_inventory
from mv4deploy.model.source import resolve_model
from mv4deploy.model.spec import Arch

FLASH = load_json(PRESETS / "deepseek-v4-flash.json")
FLASH_BYTES = 159_609_485_896          # the shipped index's payload (tests/test_inventory.py)


def _spec(cfg: dict, **kw):
    return read_config(cfg, "config.json", **kw)


def _without(cfg: dict, *keys: str) -> dict:
    return {k: v for k, v in cfg.items() if k not in keys}


# ---- renamed keys ----------------------------------------------------------------------------------------
def test_compress_rates_list_is_compress_ratios_under_its_new_name():
    renamed = {**_without(FLASH, "compress_ratios"), "compress_rates": FLASH["compress_ratios"]}
    native, new = _spec(FLASH), _spec(renamed)
    assert new.compress_ratios == native.compress_ratios and new.compress_ratios[2:4] == (4, 128)
    assert new.unknown_keys == ()
    assert build_inventory(new).checkpoint_bytes == FLASH_BYTES


def test_compress_rates_that_contradict_compress_ratios_are_refused():
    both = {**FLASH, "compress_rates": [128] * len(FLASH["compress_ratios"])}
    with pytest.raises(InputError, match="compress_rates.*contradicts compress_ratios"):
        _spec(both)


def test_rope_parameters_is_rope_scaling_under_its_new_name():
    v3 = load_json(PRESETS / "deepseek-v3.json")
    renamed = {**_without(v3, "rope_scaling"), "rope_parameters": {**v3["rope_scaling"], "rope_theta": 10000}}
    assert _spec(renamed) == _spec(v3) and _spec(renamed).unknown_keys == ()


def test_a_config_transformers_writes_reads_back_as_the_native_one(tmp_path):
    """DeepseekV4Config.save_pretrained writes layer_types + a compress_rates mapping, mlp_layer_types,
    partial_rotary_factor and nested rope_parameters (no compress_ratios, no rope_scaling)."""
    pytest.importorskip("transformers")
    from mv4deploy.runtime.hf_config import v4_config
    native = _spec(FLASH)
    v4_config(FLASH, "preset").save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert "compress_ratios" not in written and "rope_scaling" not in written
    assert isinstance(written["compress_rates"], dict) and set(written["rope_parameters"]) == {"main", "compress"}
    back = _spec({**written, "quantization_config": FLASH["quantization_config"], "expert_dtype": "fp4"})
    for field in ("compress_ratios", "num_hash_layers", "qk_rope_head_dim", "num_nextn_predict_layers", "hc_mult"):
        assert getattr(back, field) == getattr(native, field), field
    assert build_inventory(back).checkpoint_bytes == FLASH_BYTES


def test_the_compress_rates_list_spelling_builds_a_transformers_config():
    pytest.importorskip("transformers")
    from mv4deploy.runtime.hf_config import v4_config
    tiny = load_json(PRESETS / "tiny-deepseek-v4.json")
    renamed = {**_without(tiny, "compress_ratios"), "compress_rates": tiny["compress_ratios"]}
    assert v4_config(renamed, "t").layer_types == v4_config(tiny, "t").layer_types


# ---- draft layers (V4-Flash-0731: compress_ratios longer than layers + MTP) ----------------------------
DSPARK = {"dspark_n_routed_experts": 128, "dspark_num_experts_per_tok": 3, "dspark_target_layer_ids": [10, 21, 32],
          "dspark_markov_rank": 256, "dspark_block_size": 5, "dspark_noise_token_id": 0}


def test_draft_layers_extend_the_mtp_tail_and_are_placed_like_it():
    with_drafts = {**FLASH, **DSPARK, "compress_ratios": FLASH["compress_ratios"] + [0, 0, 0]}
    spec = _spec(with_drafts)
    assert len(spec.compress_ratios) == 43 + 1 + 3 and spec.num_nextn_predict_layers == 4
    inv, base = build_inventory(spec), build_inventory(_spec(FLASH))
    draft = [t for t in inv.tensors if t.name.startswith("mtp.3.")]
    assert draft and all(t.mtp for t in draft)                      # placeable (or left out) like MTP
    assert sum(1 for t in draft if t.role.value == "routed_expert") == 128 * 3 * 2   # weight + scale
    assert inv.params_total == base.params_total and inv.params_mtp > base.params_mtp


def test_extra_ratios_without_draft_layers_are_refused(cli, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**FLASH, "compress_ratios": FLASH["compress_ratios"] + [0, 0]}))
    result = cli("inspect", path)
    assert result.code == 2
    assert result.stderr.strip().count("\n") == 0
    assert str(path) in result.stderr and "compress_ratios" in result.stderr and "46 entries" in result.stderr


# ---- the expert format is read, given or refused: never guessed ------------------------------------------
def test_missing_expert_dtype_is_refused_naming_the_field(cli, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_without(FLASH, "expert_dtype")))
    with pytest.raises(MissingExpertDtype):
        _spec(_without(FLASH, "expert_dtype"))
    result = cli("inspect", path)
    assert result.code == 2 and result.stdout == ""
    assert str(path) in result.stderr and "expert_dtype" in result.stderr and "--expert-dtype" in result.stderr
    assert cli("plan", "--model", path, "--profile", "rtx5090").code == 2


def test_expert_dtype_flag_sizes_the_experts(cli, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_without(FLASH, "expert_dtype")))
    fp4 = cli("inspect", path, "--expert-dtype", "fp4", "--json")
    assert fp4.code == 0 and fp4.json()["checkpoint_bytes"] == FLASH_BYTES
    fp8 = resolve_model(path, "fp8").inventory
    # routed experts: (43 layers + 1 MTP) x 256 x 3 x [2048, 4096]; FP8 = 1 B + a UE8M0 scale per 128x128
    # block, MXFP4 = 0.5 B + a UE8M0 scale per 32 values
    experts = 44 * 256 * 3 * 2048 * 4096
    fp8_bytes = experts + experts // (128 * 128)
    fp4_bytes = experts // 2 + experts // 32
    assert fp8.checkpoint_bytes - FLASH_BYTES == fp8_bytes - fp4_bytes
    assert round(fp8.checkpoint_bytes / FLASH_BYTES, 2) == 1.83        # the "1.83x the bytes"
    assert cli("plan", "--model", path, "--profile", "rtx5090", "--expert-dtype", "fp4", "--json").code == 0
    bad = cli("inspect", path, "--expert-dtype", "fp2")
    assert bad.code == 2 and "expert_dtype" in bad.stderr and "fp2" in bad.stderr


def test_declared_expert_dtype_wins_over_nothing_and_refuses_a_contradiction():
    assert _spec(FLASH, expert_dtype="fp4").formats.expert == "mxfp4"
    with pytest.raises(InputError, match="contradicts"):
        _spec(FLASH, expert_dtype="fp8")
    base = _spec({**FLASH, "expert_dtype": "fp8"})          # the -Base checkpoints: FP8 experts
    assert base.formats.expert == base.formats.linear == "fp8-e4m3-block128-ue8m0"


def test_a_checkpoint_folder_says_its_expert_format_in_its_headers(cli, tmp_path):
    folder = tmp_path / "tiny-v4-fp8fp4"
    shutil.copytree(REPO / "tests" / "fixtures" / "models" / "tiny-v4-fp8fp4", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("expert_dtype", None)
    cfg.get("quantization_config", {}).pop("expert_dtype", None)
    (folder / "config.json").write_text(json.dumps(cfg))
    resolved = resolve_model(folder)
    assert resolved.spec.formats.expert == "mxfp4" and resolved.mismatches == ()
    assert cli("inspect", folder, "--json").code == 0


# ---- other labs' DeepSeek-V3-architecture models ---------------------------------------------------------
def test_kimi_k2_is_read_as_deepseek_v3():
    inv = resolve_model("kimi-k2-instruct").inventory
    assert inv.spec.architecture is Arch.DEEPSEEK_V3 and inv.spec.unknown_keys == ()
    # published: 1T total (1.04T in the tech report's rounding of embeddings + experts), 32B activated
    assert inv.params_total == 1_026_408_232_448
    assert 32e9 < inv.params_active_per_token < 33e9
    # one dense layer (first_k_dense_replace 1), then 60 MoE layers of 384 experts
    assert sum(1 for t in inv.tensors if t.name.endswith("mlp.experts.0.gate_proj.weight")) == 60


# ---- each shipped release against its published safetensors index ------------------------------------------
# preset: (tensors in model.safetensors.index.json's weight_map, its metadata.total_size); SOURCES.md gives
# where each figure was read. V3-family total_size counts the F32 scales and BF16 norms as shipped, so our
# payload sits within 0.1% of it; V4's is the payload itself.
PUBLISHED_INDEX = {
    "deepseek-v4-flash-0731": (72_317, 166_878_536_440),
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED_INDEX))
def test_inspect_gives_the_published_index(cli, preset):
    tensors, total_size = PUBLISHED_INDEX[preset]
    result = cli("inspect", preset, "--json")
    assert result.code == 0
    assert result.json()["tensors"] == tensors
    assert abs(result.json()["checkpoint_bytes"] - total_size) <= 0.001 * total_size


def test_v4_flash_0731_draft_layers_as_shipped():
    """The real config: 46 ratios for 43 layers + 1 MTP, no dspark_n_routed_experts. The index holds three
    DSpark stages mtp.0..2 of 1,568 / 1,565 / 1,572 tensors (shards 46-48): stage 0 adds main_proj (+scale)
    and main_norm, stage 2 the norm, Markov head (2), confidence head and hc_head (3)."""
    spec = resolve_model("deepseek-v4-flash-0731").spec
    assert len(spec.compress_ratios) == 46 > spec.num_hidden_layers + 1
    assert spec.num_nextn_predict_layers == 3 and spec.dspark.n_routed_experts == 256
    assert spec.dspark.target_layer_ids == (40, 41, 42) and spec.unknown_keys == ()
    inv = build_inventory(spec)
    stages = [[t for t in inv.tensors if t.name.startswith(f"mtp.{m}.")] for m in range(3)]
    assert [len(s) for s in stages] == [1568, 1565, 1572]
    assert all(t.mtp for s in stages for t in s)                     # placeable (or left out) like MTP
    assert not any(t.mtp for t in inv.tensors if t.name.startswith("layers.42."))
    assert inv.params_total == build_inventory(_spec(FLASH)).params_total   # same main model as V4-Flash


@pytest.mark.parametrize("preset", ["deepseek-r1", "deepseek-v3.1"])
def test_r1_and_v31_have_v3s_architecture_and_inventory(preset):
    """Their real configs differ from V3's only in transformers_version (and V3.1's scale_fmt ue8m0, whose
    scales are still F32 weight_scale_inv tensors), so each inventory is V3's: 91,991 tensors, the bytes V3's
    index pins, 671B (README: 671B total / 37B activated). Their own indexes were not found."""
    inv, v3 = resolve_model(preset).inventory, resolve_model("deepseek-v3").inventory
    assert inv.spec.unknown_keys == () and replace(inv.spec, name="deepseek-v3") == v3.spec
    assert [(t.name, t.dtype, t.shape) for t in inv.tensors] == [(t.name, t.dtype, t.shape) for t in v3.tensors]
    assert len(inv.tensors) == 91_991 and abs(inv.params_total - 671e9) <= 0.01 * 671e9
    assert 36e9 < inv.params_active_per_token < 38.5e9
