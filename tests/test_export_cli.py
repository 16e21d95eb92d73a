"""Bad input to ``mv4deploy export onnx``: exit 2, one line on stderr, nothing on stdout, nothing written.
All of these are caught by the preflight, before any model is loaded."""

from __future__ import annotations

import pytest

from conftest import PRESETS, REPO, run_cli


def _folder(tmp_path, preset: str, tokenizer: bool = True, weights: bool = True):
    folder = tmp_path / preset
    folder.mkdir()
    (folder / "config.json").write_text((PRESETS / f"{preset}.json").read_text())
    if weights:
        (folder / "model.safetensors").write_bytes(b"")     # never opened by the preflight
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
    return folder


def _assert_one_line_error(result, *words):
    assert result.code == 2, (result.code, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_unknown_target(tmp_path):
    result = run_cli("export", "onnx", _folder(tmp_path, "tiny-qwen2"), tmp_path / "out", "--target", "gpu-fp8")
    _assert_one_line_error(result, "--target", "gpu-fp8", "cpu-int4")


@pytest.mark.parametrize("preset", ["tiny-deepseek-v3", "tiny-deepseek-v4"])
def test_unsupported_architecture(tmp_path, preset):
    result = run_cli("export", "onnx", _folder(tmp_path, preset), tmp_path / "out", "--target", "cpu-int4")
    _assert_one_line_error(result, "config.json", "unsupported architecture", "Qwen2ForCausalLM")


def test_missing_tokenizer(tmp_path):
    result = run_cli("export", "onnx", _folder(tmp_path, "tiny-qwen2", tokenizer=False), tmp_path / "out",
                     "--target", "cpu-int4")
    _assert_one_line_error(result, "tokenizer", "no tokenizer files")
    assert not (tmp_path / "out").exists()


def test_missing_weights_and_missing_folder(tmp_path):
    result = run_cli("export", "onnx", _folder(tmp_path, "tiny-qwen2", weights=False), tmp_path / "out",
                     "--target", "cpu-fp32")
    _assert_one_line_error(result, "safetensors")
    _assert_one_line_error(run_cli("export", "onnx", tmp_path / "nope", tmp_path / "out", "--target", "cpu-fp32"),
                           "nope")


def test_malformed_config(tmp_path):
    folder = _folder(tmp_path, "tiny-qwen2")
    (folder / "config.json").write_text('{"model_type": "qwen2", ')
    _assert_one_line_error(run_cli("export", "onnx", folder, tmp_path / "o", "--target", "cpu-int4"),
                           "malformed JSON")


def test_broken_target_yaml(tmp_path):
    (tmp_path / "t2.yaml").write_text("name: t\nbuilder: genai\n")
    result = run_cli("export", "onnx", _folder(tmp_path, "tiny-qwen2"), tmp_path / "o", "--target",
                     tmp_path / "t2.yaml")
    _assert_one_line_error(result, "t2.yaml", "required")


def test_non_empty_out_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run_cli("export", "onnx", _folder(tmp_path, "tiny-qwen2"), out, "--target", "cpu-int4")
    _assert_one_line_error(result, "OUT exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "mine"


def test_a_second_export_into_the_same_out_is_refused_naming_the_holder(tmp_path):
    """While one export holds OUT (its lock lives beside OUT: the folder appears only when published),
    another export into it exits 2 naming the holder's pid; nothing is left beside OUT afterwards."""
    import os

    from mv4deploy.core.outdir import claim_out
    fixture = REPO / "tests" / "fixtures" / "models" / "tiny-qwen2"
    out = tmp_path / "out"
    with claim_out(tmp_path / ".out.exporting"):
        result = run_cli("export", "onnx", fixture, out, "--target", "cpu-fp32")
    assert result.code == 2, result.stderr
    assert f"pid {os.getpid()}" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == []
