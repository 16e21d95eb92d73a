"""Config readers: both forms of each family give the same spec; unknown keys are listed, not dropped."""

from __future__ import annotations

import hashlib
import json

from conftest import PRESETS, REPO
from mv4deploy.model.config import load_json, read_config
from mv4deploy.model.spec import Arch


def _read(path):
    return read_config(load_json(path), str(path))


def test_transformers_folded_form_equals_native_form():
    native = _read(PRESETS / "deepseek-v4-flash.json")
    folded = _read(REPO / "tests" / "data" / "deepseek-v4-flash.transformers-folded.json")
    for field in ("compress_ratios", "num_hash_layers", "qk_rope_head_dim", "hc_mult", "formats", "o_groups",
                  "num_nextn_predict_layers", "index_topk"):
        assert getattr(folded, field) == getattr(native, field), field
    # 2 sliding, then CSA/HCA alternating, and the MTP tail (dropped by transformers) restored as 0
    assert native.compress_ratios[:4] == (0, 0, 4, 128) and native.compress_ratios[-2:] == (4, 0)
    assert folded.unknown_keys == ()


# SHA-256 of the official config.json files at the revisions in presets/SOURCES.md (HF-published hashes)
OFFICIAL_SHA256 = {
    "deepseek-v3": "cbf0b95dc614de208a109bb5fd4e7eed11385e9c68411d2c17db5319443035d9",
    "deepseek-v4-flash": "b628e63398a645abc711d92207f8737dd8140f7a4ef1e0a5b3616019e0ddd818",
    "deepseek-v4-pro": "5fe4568daee51c208cb8a79538eaeda090ae011ade1dee2c386aa95f569c810e",
    "deepseek-v4.1-flash": "8be45ce0476004a3f529fd896115a4a2e800a129ad2d3ec05b16050f52e21879",
}


def test_presets_are_the_official_files_byte_for_byte():
    for preset, digest in OFFICIAL_SHA256.items():
        assert hashlib.sha256((PRESETS / f"{preset}.json").read_bytes()).hexdigest() == digest, preset


def test_v41_text_config_is_flattened_and_engram_rows_match_the_prime_search():
    spec = _read(PRESETS / "deepseek-v4.1-flash.json")
    assert spec.architecture is Arch.DEEPSEEK_V41
    assert spec.hidden_size == 5120 and spec.num_nextn_predict_layers == 3
    # rows = sum of 24 distinct primes >= 16,000,000 per layer: our search reproduces the shipped values
    from mv4deploy.model.engram_tables import table_rows
    assert table_rows(16_000_000, 4, 8, 2) == (384_006_168, 384_016_682) == spec.engram.num_embeddings
    assert spec.formats.linear == "fp8-e4m3-block32-ue8m0" and spec.formats.engram_table == "fp8-rows-ue8m0"
    assert spec.vision is not None and spec.dspark.n_routed_experts == 128
    assert spec.unknown_keys == ()


def test_unknown_keys_are_listed_and_warned(tmp_path, cli):
    cfg = json.loads((PRESETS / "deepseek-v4-flash.json").read_text())
    cfg["attention_residuals"] = True
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    assert _read(path).unknown_keys == ("attention_residuals",)
    result = cli("inspect", path, "--json")
    assert result.code == 0
    assert result.json()["unknown_keys"] == ["attention_residuals"]
    assert "attention_residuals" in result.stderr


def test_stored_formats_per_family():
    assert _read(PRESETS / "deepseek-v3.json").formats.linear == "fp8-e4m3-block128"         # F32 scale_inv
    v32 = _read(PRESETS / "deepseek-v3.2.json").formats
    assert v32.linear == "fp8-e4m3-block128" and v32.norm == "f32"                         # ue8m0 values, F32 file
    v4 = _read(PRESETS / "deepseek-v4-pro.json").formats
    assert (v4.linear, v4.expert) == ("fp8-e4m3-block128-ue8m0", "mxfp4")
    assert _read(PRESETS / "deepseek-r1-distill-qwen-7b.json").formats.linear == "bf16"
