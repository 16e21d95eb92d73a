"""The DeepSeek-V3 / V3.2 inventory tensor by tensor: every name as the Hugging Face checkpoints spell it
(modeling_deepseek.py's module names, `model.layers.N.` prefixes, MTP extras at layer L), with its role,
layer, expert and shape worked from the tiny presets' configs. The released totals (tests/test_inventory.py)
pin counts and bytes; this pins which tensor is which. Found by mutation testing (docs/ci.md)."""

from __future__ import annotations

import json
import re

import pytest

from conftest import PRESETS
from mv4deploy.model.config import read_config
from mv4deploy.model.inventory import build_inventory
from mv4deploy.model.source import resolve_model
from mv4deploy.model.tensors import Role, _layout

# a dotted path of lower-case module names, under one of the checkpoints' top-level modules
V4_NAME = re.compile(r"hc_head_(fn|base|scale)|image_(start|end|newline)|"
                     r"(embed|head|norm|layers|mtp|vision|aligner)(\.[a-z0-9_]+)+")

A, N, R = Role.ATTENTION, Role.NORM, Role.ROUTER


def _expected(indexer: bool) -> dict:
    """tiny-deepseek-v3(.2): hidden 128, vocab 512, 4 heads, q_lora 64, kv_lora 32, nope = rope = v = 16,
    dense 256, 8 experts of 64, 1 shared, 3 layers (layer 0 dense), MTP layer 3; V3.2 indexer 4 heads x 32."""
    out = {"model.embed_tokens.weight": (Role.EMBEDDING, None, None, (512, 128)),
           "model.norm.weight": (N, None, None, (128,)), "lm_head.weight": (Role.LM_HEAD, None, None, (512, 128))}
    for i in range(4):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        out.update({
            a + "q_a_proj.weight": (A, i, None, (64, 128)), a + "q_a_layernorm.weight": (N, i, None, (64,)),
            a + "q_b_proj.weight": (A, i, None, (4 * (16 + 16), 64)),                     # 128 x 64
            a + "kv_a_proj_with_mqa.weight": (A, i, None, (32 + 16, 128)),
            a + "kv_a_layernorm.weight": (N, i, None, (32,)),
            a + "kv_b_proj.weight": (A, i, None, (4 * (16 + 16), 32)),
            a + "o_proj.weight": (A, i, None, (128, 4 * 16)),
            p + "input_layernorm.weight": (N, i, None, (128,)),
            p + "post_attention_layernorm.weight": (N, i, None, (128,))})
        if indexer:
            x = a + "indexer."
            out.update({x + "wq_b.weight": (Role.INDEXER, i, None, (4 * 32, 64)),
                        x + "wk.weight": (Role.INDEXER, i, None, (32, 128)),
                        x + "k_norm.weight": (Role.INDEXER, i, None, (32,)),
                        x + "k_norm.bias": (Role.INDEXER, i, None, (32,)),
                        x + "weights_proj.weight": (Role.INDEXER, i, None, (4, 128))})
        m = p + "mlp."
        if i == 0:
            out.update({m + "gate_proj.weight": (Role.DENSE_MLP, 0, None, (256, 128)),
                        m + "up_proj.weight": (Role.DENSE_MLP, 0, None, (256, 128)),
                        m + "down_proj.weight": (Role.DENSE_MLP, 0, None, (128, 256))})
            continue
        out.update({m + "gate.weight": (R, i, None, (8, 128)), m + "gate.e_score_correction_bias": (R, i, None, (8,))})
        for e in range(8):
            out.update({f"{m}experts.{e}.gate_proj.weight": (Role.ROUTED_EXPERT, i, e, (64, 128)),
                        f"{m}experts.{e}.up_proj.weight": (Role.ROUTED_EXPERT, i, e, (64, 128)),
                        f"{m}experts.{e}.down_proj.weight": (Role.ROUTED_EXPERT, i, e, (128, 64))})
        out.update({m + "shared_experts.gate_proj.weight": (Role.SHARED_EXPERT, i, None, (64, 128)),
                    m + "shared_experts.up_proj.weight": (Role.SHARED_EXPERT, i, None, (64, 128)),
                    m + "shared_experts.down_proj.weight": (Role.SHARED_EXPERT, i, None, (128, 64))})
    p = "model.layers.3."                                      # the MTP layer's own embedding, norms, head
    out.update({p + "embed_tokens.weight": (Role.EMBEDDING, 3, None, (512, 128)),
                p + "enorm.weight": (N, 3, None, (128,)), p + "hnorm.weight": (N, 3, None, (128,)),
                p + "eh_proj.weight": (A, 3, None, (128, 256)),
                p + "shared_head.norm.weight": (N, 3, None, (128,)),
                p + "shared_head.head.weight": (Role.LM_HEAD, 3, None, (512, 128))})
    return out


@pytest.mark.parametrize("preset, indexer", [("tiny-deepseek-v3", False), ("tiny-deepseek-v3.2", True)])
def test_v3_tensors_by_name_role_layer_expert_and_shape(preset, indexer):
    inv = resolve_model(preset).inventory
    got = {t.name: (t.role, t.layer, t.expert, t.shape) for t in inv.tensors if not t.name.endswith("_scale_inv")}
    assert got == _expected(indexer)
    # every FP8 block scale sits beside its weight, with the weight's role, layer and expert
    weights = {t.name: t for t in inv.tensors}
    for t in inv.tensors:
        if t.name.endswith("_scale_inv"):
            w = weights[t.name.removesuffix("_scale_inv")]
            assert (t.role, t.layer, t.expert, t.mtp) == (w.role, w.layer, w.expert, w.mtp)
    assert {t.layer for t in inv.tensors if t.mtp} == {3}
    assert all(type(d) is int for t in inv.tensors for d in t.shape)


def test_v3_without_a_q_lora_and_with_two_shared_experts(fresh_layouts):
    """DeepSeek-V2-Lite style attention (q_lora_rank null: one q_proj) and 2 shared experts (one MLP twice
    as wide): q_proj [4 x (16 + 16), 128]; shared gate/up [2 x 64, 128], down [128, 2 x 64]."""
    raw = {**json.loads((PRESETS / "tiny-deepseek-v3.json").read_text()), "q_lora_rank": None, "n_shared_experts": 2}
    inv = build_inventory(read_config(raw, "v2-lite-like"))
    got = {t.name: (t.role, t.layer, t.shape) for t in inv.tensors if t.name.startswith("model.layers.1.")}
    assert got["model.layers.1.self_attn.q_proj.weight"] == (Role.ATTENTION, 1, (128, 128))
    assert not any("q_a_proj" in name or "q_b_proj" in name for name in got)
    shared = "model.layers.1.mlp.shared_experts."
    assert got[shared + "gate_proj.weight"] == got[shared + "up_proj.weight"] == (Role.SHARED_EXPERT, 1, (128, 128))
    assert got[shared + "down_proj.weight"] == (Role.SHARED_EXPERT, 1, (128, 128))
    assert all(type(d) is int for t in inv.tensors for d in t.shape)


def _v4_role(name: str, layer: int | None, hash_layers: int) -> Role:
    """The role each V4 tensor's name gives it (DeepSeek-native names; a `.scale` goes with its weight)."""
    rules = ((".engram.embed.", Role.ENGRAM_TABLE), (".engram.", Role.ENGRAM_PROJ),
             (".ffn.experts.", Role.ROUTED_EXPERT), (".ffn.shared_experts.", Role.SHARED_EXPERT),
             (".ffn.gate.tid2eid", Role.HASH_ROUTER), (".attn.indexer.", Role.INDEXER),
             (".attn.compressor.", Role.COMPRESSOR), ("hc_", Role.MHC), ("markov_head.", Role.LM_HEAD),
             ("confidence_head.", Role.LM_HEAD), ("vision.", Role.VISION), ("aligner.", Role.VISION),
             ("image_", Role.VISION))
    role = next((r for key, r in rules if key in name), None)
    if role is not None:
        return role
    if ".ffn.gate." in name:                       # the router: hashed on the first layers
        return Role.HASH_ROUTER if layer < hash_layers and name.endswith((".weight", ".scale")) else Role.ROUTER
    if name.startswith(("embed.",)):
        return Role.EMBEDDING
    if name.startswith("head."):
        return Role.LM_HEAD
    if name.endswith("norm.weight"):
        return Role.NORM
    return Role.ATTENTION                          # attn sink, q/kv/o projections, MTP e/h/main projections


@pytest.fixture
def fresh_layouts():
    """Stored layouts are cached per (format, shape), and 128.0 finds 128's entry: start empty, so a shape
    this build computes as a float shows as one."""
    _layout.cache_clear()
    yield
    _layout.cache_clear()


@pytest.mark.parametrize("preset", ["tiny-deepseek-v4", "tiny-deepseek-v4.1", "deepseek-v4-flash-0731"])
def test_v4_layer_expert_and_role_follow_the_name(preset, fresh_layouts):
    """`layers.N.*` is layer N, `mtp.M.*` layer L + M (and MTP), anything else no layer; `experts.E.` is
    expert E; the role is the module's kind, read from the name."""
    inv = resolve_model(preset).inventory
    spec = inv.spec
    for t in inv.tensors:
        head, _, rest = t.name.partition(".")
        layer = int(rest.split(".")[0]) if head == "layers" else \
            spec.num_hidden_layers + int(rest.split(".")[0]) if head == "mtp" else None
        expert = int(t.name.split(".experts.")[1].split(".")[0]) if ".experts." in t.name else None
        assert (t.layer, t.mtp, t.expert) == (layer, head == "mtp", expert), t.name
        assert t.role is _v4_role(t.name, layer, spec.num_hash_layers), t.name
        assert V4_NAME.fullmatch(t.name) and all(type(d) is int for d in t.shape), t.name
    for i in range(spec.num_hidden_layers):        # mHC: a mix before attention and one before the FFN
        assert {t.name for t in inv.tensors if t.name.startswith(f"layers.{i}.hc_")} == {
            f"layers.{i}.hc_{sub}_{part}" for sub in ("attn", "ffn") for part in ("fn", "base", "scale")}
    if spec.vision is not None:
        assert {"image_start", "image_end", "image_newline"} <= {t.name for t in inv.tensors}


def test_v4_flash_0731_draft_stages_as_in_the_published_index():
    """The released index's three DSpark stages hold 1,568 / 1,565 / 1,572 tensors (shards 46-48; the figures
    tests/test_config_releases.py cites): stage 0 adds main_proj and main_norm, the last the heads."""
    inv = resolve_model("deepseek-v4-flash-0731").inventory
    assert [sum(1 for t in inv.tensors if t.name.startswith(f"mtp.{m}.")) for m in range(3)] == [1568, 1565, 1572]
    assert "mtp.2.markov_head.head.weight" in {t.name for t in inv.tensors}


# ---- model.tensors: the table and the builder's integer lookup tables ---------------------------------------

def test_lookup_tables_are_raw_have_no_parameters_and_know_their_mtp_layers():
    from mv4deploy.model.tensors import RAW_FORMAT, TensorInfo, _Builder
    b = _Builder(mtp_from=4)
    b.table("layers.3.ffn.gate.tid2eid", "I64", [16, 2], Role.HASH_ROUTER, 3)
    b.table("mtp.0.ffn.gate.tid2eid", "I64", (16, 2), Role.HASH_ROUTER, 4)      # layer 4 >= mtp_from 4
    b.table("tid2eid", "I64", (16, 2), Role.HASH_ROUTER)                        # no layer: not MTP
    assert b.tensors == [
        TensorInfo("layers.3.ffn.gate.tid2eid", "I64", (16, 2), Role.HASH_ROUTER, RAW_FORMAT, 0, 3, None, False),
        TensorInfo("mtp.0.ffn.gate.tid2eid", "I64", (16, 2), Role.HASH_ROUTER, RAW_FORMAT, 0, 4, None, True),
        TensorInfo("tid2eid", "I64", (16, 2), Role.HASH_ROUTER, RAW_FORMAT, 0, None, None, False)]
    plain = _Builder()                                                          # no MTP layers at all
    plain.table("layers.9.t", "I64", (1,), Role.HASH_ROUTER, 9)
    assert plain.tensors[0].mtp is False


def test_duplicates_name_the_repeated_entry_and_tables_compare_as_sequences():
    from mv4deploy.model.tensors import ExpertBlock, TensorInfo, TensorTable
    rows = (("w1.weight", "BF16", (2, 2), 4),)
    singles = [TensorInfo(n, "BF16", (2,), Role.NORM, "bf16", 2) for n in ("a", "b", "b")]
    assert TensorTable(singles).duplicate_name() == "b"
    blocks = [ExpertBlock(p, rows, 2, "bf16", 1, False) for p in ("x.", "y.", "y.")]
    assert TensorTable(blocks).duplicate_name() == "y.*"
    table = TensorTable(singles)
    assert table == singles and table == tuple(singles) and table == TensorTable(list(singles))
    assert table != singles[:2] and (table == 5) is False and (table == "abb") is False
    assert hash(table) == hash(TensorTable(list(singles)))
