"""Tensor inventories: totals pinned to the published figures and to the released checkpoints' files.

Released-checkpoint figures (tensor count, payload bytes) come from their safetensors indexes and header
dumps (docs/inventory.md lists the sources); parameter totals from the model cards.
"""

from __future__ import annotations

from collections import Counter

import pytest

from mv4deploy.model.tensors import Role
from mv4deploy.model.source import resolve_model

# preset: (published total params, tolerance, tensors in the shipped checkpoint, payload bytes)
RELEASED = {
    "deepseek-v3": (671e9, 0.01, 91_991, 688_574_839_360),
    "deepseek-v3.2": (671e9, 0.01, 92_425, 689_471_107_200),
    "deepseek-v4-flash": (284e9, 0.01, 69_187, 159_609_485_896),    # index total_size is the payload
    "deepseek-v4-pro": (1.6e12, 0.02, 145_116, 864_704_792_696),     # 1.573T + 25.8B MTP = "1.6T"
    "deepseek-v4.1-flash": (552e9 + 196.9e9 + 0.49e9, 0.01, 96_085, 510_286_023_000),
    "deepseek-r1-distill-qwen-7b": (7_615_616_512, 0, 339, 15_231_233_024),
    "deepseek-r1-distill-llama-8b": (8_030_261_248, 0, 291, 16_060_522_496),
}


@pytest.mark.parametrize("preset", sorted(RELEASED))
def test_released_checkpoints_are_reproduced_exactly(preset):
    published, tolerance, tensors, payload = RELEASED[preset]
    inv = resolve_model(preset).inventory
    total = inv.params_total + (inv.params_mtp if preset == "deepseek-v4-pro" else 0)
    assert abs(total - published) <= tolerance * published
    assert len(inv.tensors) == tensors
    assert inv.checkpoint_bytes == payload


def test_v4_flash_totals_by_hand():
    inv = resolve_model("deepseek-v4-flash").inventory
    by_role = inv.params_by_role
    # routed experts: 43 layers x 256 experts x 3 x 2048 x 4096 = 277,025,390,592
    assert by_role["routed_expert"] == 43 * 256 * 3 * 2048 * 4096
    # shared expert: 43 x 3 x 2048 x 4096
    assert by_role["shared_expert"] == 43 * 3 * 2048 * 4096
    # embedding and head: 129,280 x 4,096 each
    assert by_role["embedding"] == by_role["lm_head"] == 129_280 * 4096
    # active: all non-routed + 6/256 of the routed experts ~ 13.8B (DeepSeek quotes ~13B)
    assert 12.5e9 < inv.params_active_per_token < 14.5e9
    assert inv.params_mtp == 6_610_048_891


def test_active_parameters_match_published_order():
    assert 36e9 < resolve_model("deepseek-v3").inventory.params_active_per_token < 38.5e9   # "37B"
    assert 48e9 < resolve_model("deepseek-v4-pro").inventory.params_active_per_token < 51e9  # "49B"


def test_v4_names_and_stored_formats_as_shipped():
    inv = resolve_model("deepseek-v4-flash").inventory
    by_name = {t.name: t for t in inv.tensors}
    assert "model.embed_tokens.weight" not in by_name and "embed.weight" in by_name      # no model. prefix
    w1 = by_name["layers.5.ffn.experts.17.w1.weight"]
    assert (w1.dtype, w1.shape, w1.role, w1.expert, w1.params) == ("I8", (2048, 2048), Role.ROUTED_EXPERT, 17,
                                                                    2048 * 4096)  # FP4: two per byte
    assert by_name["layers.5.ffn.experts.17.w1.scale"].shape == (2048, 4096 // 32)      # UE8M0 per 32
    assert by_name["layers.0.attn.wq_a.scale"].dtype == "F8_E8M0"
    assert by_name["layers.0.attn.wq_a.scale"].shape == (8, 32)                           # 1024/128, 4096/128
    assert by_name["layers.0.ffn.gate.tid2eid"].dtype == "I64"                            # hash layer
    assert "layers.0.ffn.gate.bias" not in by_name and "layers.3.ffn.gate.bias" in by_name
    assert by_name["layers.2.attn.compressor.ape"].shape == (4, 1024)                     # CSA: overlap 2x
    assert by_name["layers.3.attn.compressor.ape"].shape == (128, 512)                    # HCA
    assert "layers.3.attn.indexer.wq_b.weight" not in by_name                             # indexer: CSA only
    assert by_name["mtp.0.e_proj.weight"].mtp and not by_name["layers.42.attn.wkv.weight"].mtp


def test_v3_uses_hf_names_and_f32_block_scales():
    by_name = {t.name: t for t in resolve_model("deepseek-v3").inventory.tensors}
    scale = by_name["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"]
    assert (scale.dtype, scale.shape) == ("F32", (5, 56))                                 # ceil(576/128), 7168/128
    assert by_name["model.layers.61.eh_proj.weight"].dtype == "BF16"                      # MTP layer 61
    assert by_name["model.layers.0.input_layernorm.weight"].dtype == "BF16"


def test_v32_indexer_and_f32_norms():
    by_name = {t.name: t for t in resolve_model("deepseek-v3.2").inventory.tensors}
    assert by_name["model.layers.0.input_layernorm.weight"].dtype == "F32"
    assert by_name["model.layers.7.self_attn.indexer.k_norm.bias"].role is Role.INDEXER
    assert by_name["model.layers.7.self_attn.indexer.wk.weight"].shape == (128, 7168)


def test_v41_engram_dspark_and_vision():
    inv = resolve_model("deepseek-v4.1-flash").inventory
    by_name = {t.name: t for t in inv.tensors}
    table = by_name["layers.1.engram.embed.weight"]
    assert table.shape == (384_006_168, 256) and table.role is Role.ENGRAM_TABLE
    assert by_name["layers.14.engram.embed.scale"].shape == (384_016_682, 8)
    assert by_name["layers.1.engram.wkv.weight"].shape == (5120 * 5, 24 * 256)            # 4 keys + 1 value
    assert sum(t.nbytes for t in inv.tensors if t.role is Role.ENGRAM_TABLE) == 768_022_850 * 264
    assert sum(1 for t in inv.tensors if t.role is Role.VISION) == 266
    assert sum(t.nbytes for t in inv.tensors if t.role is Role.VISION) == 970_536_960
    assert by_name["mtp.0.main_proj.weight"].shape == (5120, 15360) and by_name["mtp.0.main_proj.weight"].mtp
    assert "layers.20.attn.compressor.wgate.weight" not in by_name                          # ratio 1: no gate
    assert "layers.4.attn.compressor.wkv.weight" not in by_name                             # not a kv source
    assert not any(name.startswith("hc_head") for name in by_name)


@pytest.mark.parametrize("preset", ["tiny-deepseek-v3", "tiny-deepseek-v3.2", "tiny-deepseek-v4",
                                    "tiny-deepseek-v4.1", "tiny-qwen2", "tiny-llama"])
def test_tiny_presets_are_consistent(preset):
    inv = resolve_model(preset).inventory
    names = Counter(t.name for t in inv.tensors)
    assert max(names.values()) == 1
    assert sum(t.params for t in inv.tensors) == inv.params_total + inv.params_mtp
    assert all(t.nbytes > 0 for t in inv.tensors)


# ---- the table's runs: what the planner reads instead of 145K tuples -----------------------------------------

def test_expert_blocks_expand_to_the_tensors_a_builder_adds_one_by_one():
    """``experts()`` keeps a layer's experts as one block; expanding it gives exactly the tensors ``add`` makes
    for each expert weight (names, dtypes, stored shapes, params, layer, expert index)."""
    from mv4deploy.model.tensors import ExpertBlock, _Builder
    weights = (("w1", (64, 32)), ("w2", (32, 64)), ("w3", (64, 32)))
    blocked, single = _Builder(mtp_from=4), _Builder(mtp_from=4)
    blocked.experts("layers.5.ffn.experts.", weights, 3, "mxfp4", 5)
    for e in range(3):
        for name, shape in weights:
            single.add(f"layers.5.ffn.experts.{e}.{name}.weight", shape, "mxfp4", Role.ROUTED_EXPERT, 5, e)
    (block,) = blocked.tensors
    assert isinstance(block, ExpertBlock) and block.size == 3 * 3 * 2 == len(single.tensors)   # weight + scale
    table = blocked.built()
    assert len(table) == 18 and table._flat is None             # the length needs no expansion
    assert list(table) == single.tensors and all(t.mtp for t in table)   # layer 5 >= mtp_from 4


def test_runs_cover_every_tensor_once_in_order():
    inv = resolve_model("tiny-deepseek-v4").inventory
    covered = []
    for start, run in inv.tensors.runs():
        items = run.expand() if hasattr(run, "expand") else run
        assert list(inv.tensors[start:start + len(items)]) == items
        covered += range(start, start + len(items))
    assert covered == list(range(len(inv.tensors)))


@pytest.mark.parametrize("names, prefixes, found", [
    (["a", "b", "a"], [], "a"),                                        # two single tensors
    (["a"], ["layers.1.experts.", "layers.1.experts."], "layers.1.experts.*"),   # two blocks
    (["layers.1.experts.0.w1.weight"], ["layers.1.experts."], "layers.1.experts.0.w1.weight"),  # one under a block
    (["layers.1.experts_norm.weight"], ["layers.1.experts."], None),   # a name that only starts alike
    (["layers.1.experts.2.w1.weight"], ["layers.1.experts."], None),   # expert 2 of a 2-expert block: not one
    (["layers.1.experts.0.bias"], ["layers.1.experts."], None),        # no such row in the block
])
def test_duplicate_names_are_found_without_expanding(names, prefixes, found):
    from mv4deploy.model.tensors import ExpertBlock, TensorInfo, TensorTable
    rows = (("w1.weight", "BF16", (2, 2), 4),)
    items = [TensorInfo(n, "BF16", (2,), Role.NORM, "bf16", 2) for n in names]
    items += [ExpertBlock(p, rows, 2, "bf16", 1, False) for p in prefixes]
    table = TensorTable(items)
    assert table.duplicate_name() == found and table._flat is None


def test_planning_never_expands_the_experts(monkeypatch):
    """The cold-CLI budget (docs/planner.md): V4-Pro's 142K expert tensors stay in their 62 blocks."""
    from mv4deploy.cli.plan import run_plan
    from mv4deploy.model.tensors import TensorTable
    expanded = []
    monkeypatch.setattr(TensorTable, "_expanded", lambda self: expanded.append(len(self)) or ())
    assert run_plan("deepseek-v4-pro", "b200x8").plan.estimates.decode_tokens_per_s > 0
    assert expanded == []
