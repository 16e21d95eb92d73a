"""Backends: the table picks the right one per folder, and ONNX folders (onnxruntime-genai and plain
onnxruntime) give the same logits as the transformers model they were exported from."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
import torch

from mv4deploy.core.errors import InputError
from mv4deploy.validate.backends import BACKENDS, fingerprint, open_source
from mv4deploy.validate.run import ValidateRequest, validate
from validate_fixtures import build_tiny_models


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.getbasetemp() / "validate-models")


@pytest.fixture(scope="session")
def onnx_folders(tiny, tmp_path_factory):
    """The genai builder's fp32 export of ``ref``, and the same graph without genai_config.json."""
    root = tmp_path_factory.mktemp("onnx")
    genai = root / "genai"
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(tiny.ref), "-o", str(genai),
                    "-p", "fp32", "-e", "cpu", "-c", str(root / "cache")], check=True, capture_output=True)
    plain = root / "plain"
    plain.mkdir()
    for name in ("model.onnx", "model.onnx.data", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(genai / name, plain / name)
    shutil.copy(tiny.ref / "config.json", plain / "config.json")
    return genai, plain


def test_backend_table_order_and_detection(tiny, onnx_folders):
    assert [b.kind for b in BACKENDS] == ["onnx-genai", "onnx", "runtime", "transformers"]
    genai, plain = onnx_folders
    for folder, kind in ((genai, "onnx-genai"), (plain, "onnx"), (tiny.ref, "transformers")):
        assert next(b.kind for b in BACKENDS if b.matches(folder)) == kind


@pytest.mark.parametrize("names,config,kind", [
    (("embed.weight", "layers.0.attn.wq_a.weight"), '{"model_type": "deepseek_v4"}', "runtime"),
    (("model.embed_tokens.weight",), '{"model_type": "qwen2", "mv4deploy_quantization": {"rules": []}}',
     "runtime"),
    (("model.embed_tokens.weight",), '{"model_type": "qwen2"}', "transformers"),
])
def test_native_names_and_our_quantized_outputs_route_to_the_runtime(tmp_path, names, config, kind):
    from safetensors.torch import save_file
    (tmp_path / "config.json").write_text(config)
    save_file({name: torch.zeros(2, 2) for name in names}, str(tmp_path / "model.safetensors"))
    assert next(b.kind for b in BACKENDS if b.matches(tmp_path)) == kind


@pytest.mark.parametrize("which", [0, 1])
def test_onnx_candidates_match_the_transformers_reference(tiny, onnx_folders, which):
    folder = onnx_folders[which]
    source = open_source(folder)
    assert fingerprint(source) == fingerprint(open_source(tiny.ref))   # genai rewrote tokenizer.json; same ids
    r = validate(ValidateRequest(reference=tiny.ref, candidate=folder, eval_path=tiny.eval_text, chunk_tokens=64,
                                 max_chunks=3))
    s = r.summary
    assert r.candidate.kind == ("onnx-genai", "onnx")[which]
    assert s["tokens_scored"] == 3 * 31 and s["same_top1"] == 1.0
    assert s["kld_max"] < 1e-9 and abs(s["ppl_ratio"] - 1) < 1e-5


@pytest.mark.parametrize("which", ["transformers", "onnx-genai", "onnx"])
def test_greedy_steps_give_the_logits_of_a_full_prefill(tiny, onnx_folders, which):
    """begin/advance (the export's greedy check) keep each backend's own KV cache: after every step the
    logits equal those of the whole sequence run from an empty cache."""
    folder = {"transformers": tiny.ref, "onnx-genai": onnx_folders[0], "onnx": onnx_folders[1]}[which]
    source = open_source(folder)
    ids = torch.tensor(source.tokenizer(tiny.eval_text.read_text(), add_special_tokens=False)["input_ids"][:14])
    logits = source.begin(ids[:8])
    for end in range(9, 15):
        logits = source.advance(int(ids[end - 1]))
        full = source.last_logits(ids[:end], 1)[0]
        assert logits.shape == full.shape and torch.allclose(logits, full, atol=1e-4), end
    runtime = {"transformers": "PyTorch ", "onnx-genai": "onnxruntime-genai ", "onnx": "onnxruntime "}[which]
    assert source.runtime.startswith(runtime)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(InputError, match="no config.json"):
        open_source(tmp_path, role="candidate")
    with pytest.raises(InputError, match="must be a folder"):
        open_source(tmp_path / "absent", role="candidate")
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')
    with pytest.raises(InputError, match="no tokenizer files"):
        open_source(tmp_path)
