"""Loading native checkpoints: agreement with transformers' own loader, bad checkpoints -> exit 2 naming
the tensor, engram placement, and the ``generate`` command."""

from __future__ import annotations

import json
import shutil

import pytest

torch = pytest.importorskip("torch")

from mv4deploy.core.errors import InputError  # noqa: E402
from mv4deploy.runtime import load_model  # noqa: E402
from mv4deploy.validate.run import compare_models  # noqa: E402

from tests.conftest import REPO, run_cli  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "models"
PROMPT = "def fibonacci(n):\n    "


def fixture(name: str):
    folder = FIXTURES / name
    if not (folder / "config.json").is_file():
        pytest.skip(f"{name} not built (python scripts/make_fixtures.py all)")
    return folder


def copy_fixture(name: str, tmp_path):
    return shutil.copytree(fixture(name), tmp_path / name)


def rewrite_shard(folder, tensor_name: str, change) -> str:
    """Apply ``change(tensors)`` to the shard holding ``tensor_name`` and keep the index consistent."""
    from safetensors.torch import load_file, save_file
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    file = index["weight_map"][tensor_name]
    tensors = load_file(folder / file)
    change(tensors)
    save_file(tensors, folder / file, metadata={"format": "pt"})
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != file or k in tensors}
    index_path.write_text(json.dumps(index))
    return file


def _eval_start(folder, tmp_path, chars: int = 6000, chunks: int = 4):
    """The first ``chars`` of eval.txt, chunked and scored as `mv4deploy validate --chunk 256` does."""
    from mv4deploy.model.tokenizer import load_tokenizer
    from mv4deploy.validate.evaltext import tokenize_eval
    text = tmp_path / "eval-start.txt"
    text.write_text((REPO / "tests" / "fixtures" / "eval.txt").read_text()[:chars])
    return tokenize_eval(text, load_tokenizer(folder), 256, chunks)


def ids_of(folder, text: str = PROMPT * 4):
    from mv4deploy.model.tokenizer import load_tokenizer
    return load_tokenizer(folder)(text, return_tensors="pt").input_ids


def test_native_bf16_load_matches_transformers_from_pretrained():
    """transformers' own deepseek_v4 conversion mapping loads our native fixture to the same weights."""
    from transformers import DeepseekV4ForCausalLM
    folder = fixture("tiny-v4")
    ours = load_model(folder)
    theirs, info = DeepseekV4ForCausalLM.from_pretrained(folder, dtype=torch.float32, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    a, b = ours.state_dict(), theirs.state_dict()
    assert set(a) == set(b)
    assert all(torch.equal(a[k].float(), b[k].float()) for k in a)
    ids = ids_of(folder)
    with torch.no_grad():
        assert torch.equal(ours(input_ids=ids).logits, theirs.eval()(input_ids=ids).logits)


def test_dtype_and_fp32_modules():
    model = load_model(fixture("tiny-v4"), dtype=torch.bfloat16)
    layer = model.model.layers[1]
    assert layer.self_attn.q_a_proj.weight.dtype == torch.bfloat16
    assert layer.mlp.experts.gate_up_proj.dtype == torch.bfloat16
    assert layer.attn_hc.fn.dtype == torch.float32 and layer.self_attn.sinks.dtype == torch.float32
    assert model.model.layers[0].mlp.gate.tid2eid.dtype == torch.int64


def test_missing_tensor_names_it(tmp_path):
    folder = copy_fixture("tiny-v4", tmp_path)
    rewrite_shard(folder, "layers.2.ffn.experts.5.w3.weight", lambda t: t.pop("layers.2.ffn.experts.5.w3.weight"))
    with pytest.raises(InputError, match=r"layers\.2\.ffn\.experts\.5\.w3\.weight.*missing"):
        load_model(folder)


def test_shape_contradicting_config_names_it(tmp_path):
    folder = copy_fixture("tiny-v4", tmp_path)
    name = "layers.1.attn.wq_a.weight"
    rewrite_shard(folder, name, lambda t: t.__setitem__(name, t[name][:32].clone()))
    with pytest.raises(InputError, match=r"layers\.1\.attn\.wq_a\.weight.*shape \[32, 128\].*\[64, 128\]"):
        load_model(folder)


def test_truncated_shard_names_the_tensor(tmp_path):
    folder = copy_fixture("tiny-v4", tmp_path)
    shard = sorted(folder.glob("model-*.safetensors"))[-1]
    shard.write_bytes(shard.read_bytes()[:-1000])
    with pytest.raises(InputError, match=r"data_offsets.*truncated"):
        load_model(folder)


def test_garbage_payload_names_the_tensor(tmp_path):
    """Bytes overwritten inside a payload (header intact) decode to NaN: the tensor is named."""
    folder = copy_fixture("tiny-v4", tmp_path)
    from mv4deploy.model.safetensors_headers import read_header
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    header = read_header(shard)
    victim = next(t for t in header.tensors if t.dtype == "BF16" and t.nbytes > 64)
    raw = bytearray(shard.read_bytes())
    import struct
    header_len = struct.unpack("<Q", raw[:8])[0]
    entry = json.loads(raw[8: 8 + header_len])[victim.name]
    start = 8 + header_len + entry["data_offsets"][0]
    raw[start: start + 64] = b"\xff" * 64                        # 0xFFFF is a BF16 NaN
    shard.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=victim.name.replace(".", r"\.") + ".*NaN"):
        load_model(folder)


def test_v41_config_is_refused_with_the_reason(tmp_path):
    folder = copy_fixture("tiny-v4", tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({"model_type": "deepseek_v41", "text_config": config}))
    with pytest.raises(InputError):
        load_model(folder)


def test_cli_generate_bad_checkpoints_exit_2_naming_the_tensor(tmp_path):
    folder = copy_fixture("tiny-v4", tmp_path)
    name = "layers.3.ffn.shared_experts.w2.weight"
    rewrite_shard(folder, name, lambda t: t.pop(name))
    result = run_cli("generate", folder, "--prompt", "x = ", "--max-new-tokens", "2")
    assert result.code == 2 and name in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
    result = run_cli("generate", fixture("tiny-v4"), "--prompt", "x", "--device", "tpu")
    assert result.code == 2 and "--device" in result.stderr


def test_cli_generate_json():
    result = run_cli("generate", fixture("tiny-qwen2"), "--prompt", PROMPT, "--max-new-tokens", "12", "--json")
    assert result.code == 0, result.stderr
    data = result.json()
    assert data["new_tokens"] == 12 and data["model"] == "Qwen2ForCausalLM" and data["completion"]


def test_fp8fp4_dequant_agrees_with_transformers_finegrained_fp8():
    """transformers' FineGrainedFP8 dequantization (FP8 128x128 UE8M0 + MXFP4 experts) on CPU gives the
    same weights as the format registry's, tensor for tensor."""
    from transformers import DeepseekV4ForCausalLM, FineGrainedFP8Config
    folder = fixture("tiny-v4-fp8fp4")
    config = FineGrainedFP8Config(weight_block_size=[128, 128], dequantize=True, scale_fmt="ue8m0",
                                  expert_dtype="fp4")
    theirs, info = DeepseekV4ForCausalLM.from_pretrained(folder, dtype=torch.float32, quantization_config=config,
                                                         output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ours = load_model(folder).state_dict()
    theirs = theirs.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k].float(), theirs[k].float()) for k in ours)


def test_reads_shard_by_shard_each_tensor_once(monkeypatch):
    from mv4deploy.runtime import loader
    reads = []
    original = loader._Shards.read
    monkeypatch.setattr(loader._Shards, "read", lambda self, file, name: reads.append((file, name))
                        or original(self, file, name))
    load_model(fixture("tiny-v4-fp8fp4"))
    files = [file for file, _ in reads]
    assert files == sorted(files) and len(set(files)) == 2
    names = [name for _, name in reads]
    assert len(names) == len(set(names))
    from mv4deploy.model.safetensors_headers import read_checkpoint_headers
    assert set(names) == {h.name for h in read_checkpoint_headers(fixture("tiny-v4-fp8fp4"))}


def test_transformers_own_save_loads_through_from_pretrained(tmp_path):
    """An HF-layout V4 folder (transformers' save_pretrained) takes the from_pretrained path."""
    folder = fixture("tiny-v4")
    native = load_model(folder)
    native.save_pretrained(tmp_path / "hf")
    again = load_model(tmp_path / "hf")
    ids = ids_of(folder)
    with torch.no_grad():
        assert torch.equal(native(input_ids=ids).logits, again(input_ids=ids).logits)


def test_fp8_32x32_blocks_load(tmp_path):
    """V4.1's 32x32 UE8M0 block layout on V4 weights: written by the format registry, read back close
    to the BF16 network."""
    from mv4deploy.model.safetensors_headers import read_checkpoint_headers
    from mv4deploy.runtime.native_save import save_native
    folder = fixture("tiny-v4")
    reference = load_model(folder)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "activation_scheme": "dynamic", "scale_fmt": "ue8m0",
                                     "weight_block_size": [32, 32], "expert_dtype": "fp8"}  # FP8 experts too
    save_native(reference.state_dict(), config, tmp_path / "b32")
    headers = {h.name: h for h in read_checkpoint_headers(tmp_path / "b32")}
    assert headers["layers.1.attn.wq_a.scale"].shape == (2, 4)        # [64, 128] in 32x32 tiles
    assert headers["layers.1.attn.wq_a.scale"].dtype == "F8_E8M0"
    candidate = load_model(tmp_path / "b32")
    stats = compare_models(reference, candidate, _eval_start(folder, tmp_path))
    assert stats["same_top1"] > 0.97 and 0 < stats["kld_mean"] < 0.002


@pytest.mark.parametrize("name, recipe", [("tiny-v41", "fp8"), ("tiny-qwen2", "nf4")])
def test_loads_checkpoints_written_by_mv4deploy_quantize(tmp_path, name, recipe):
    """`mv4deploy quantize` outputs (formats transformers cannot read) load through the same loop: an
    FP8 Engram table stays FP8 + UE8M0 scales and is decoded per gathered row; a Qwen2 in NF4 goes
    through the identity name map."""
    from mv4deploy.quant.recipe import get_recipe
    from mv4deploy.quant.run import quantize_checkpoint
    folder = fixture(name)
    quantize_checkpoint(folder, tmp_path / "q", get_recipe(recipe))
    candidate = load_model(tmp_path / "q")
    if name == "tiny-v41":
        table = candidate.model.layers[1].engram.embed
        assert table.weight.dtype == torch.float8_e4m3fn and table.scale.shape == (table.weight.shape[0], 1)
    stats = compare_models(load_model(folder), candidate, _eval_start(folder, tmp_path))
    assert stats["same_top1"] > 0.9 and 0 < stats["kld_mean"] < 0.01
