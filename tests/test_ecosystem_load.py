"""What `mv4deploy quantize` writes is what the ecosystem reads: plain transformers
(``AutoModelForCausalLM.from_pretrained``, in a subprocess that never imports mv4deploy) loads each
output of the trained fixtures and gives the logits of mv4deploy's own loader, and config.json carries
the ecosystem's quantization_config (checked against the library's own config classes and, for V4,
against the shipped FP8/FP4 layout of the tiny-v4-fp8fp4 fixture).

On CPU transformers' fine-grained FP8 path dequantizes at load ("requires a GPU or XPU, we will default to
dequantizing the model to bf16"): e4m3 x UE8M0 is exact, so its logits equal ours bit for bit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mv4deploy.model.quant_config import OURS_KEY
from mv4deploy.quant.recipe import get_recipe
from mv4deploy.quant.run import quantize_checkpoint

FIXTURES = Path(__file__).parent / "fixtures" / "models"
PLAIN = Path(__file__).parent / "_support" / "plain_hf_logits.py"
# (fixture, recipe) -> mean KLD against the BF16 reference the recipe stays within on 128 held-out tokens
# (measured: fp8 3.3e-4 / 4.1e-4, nf4 4.0e-3, int4 RTN 6.7e-3, nvfp4 4.8e-3; docs/quantization.md)
CASES = {("tiny-qwen2", "fp8"): 1e-3, ("tiny-qwen2", "nf4"): 1e-2, ("tiny-qwen2", "int4"): 1.5e-2,
         ("tiny-qwen2", "nvfp4"): 1e-2, ("tiny-v4", "fp8"): 1e-3, ("tiny-v4", "fp8-fp4-experts"): 1e-3}
# transformers 5.25 + compressed-tensors 0.20 cannot run an NVFP4 checkpoint in float32 on CPU (decompressed
# weights stay bf16: "self and mat2 must have the same dtype"); a bare from_pretrained loads it in its own
# bf16, which is what a user gets. Values are exact in bf16; the bf16 compute costs ~6e-5 of KLD.
DTYPE = {("tiny-qwen2", "nvfp4"): "auto"}


def _kld(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.fixture(scope="module")
def tokens():
    from mv4deploy.model.tokenizer import load_tokenizer
    text = (Path(__file__).parent / "fixtures" / "eval.txt").read_text()[:4000]
    return torch.tensor([load_tokenizer(FIXTURES / "tiny-qwen2").encode(text)[:128]])


def _plain_logits(folder: Path, tokens: torch.Tensor, tmp: Path, dtype: str = "float32") -> torch.Tensor:
    torch.save(tokens, tmp / "tokens.pt")
    proc = subprocess.run([sys.executable, str(PLAIN), str(folder), str(tmp / "tokens.pt"), str(tmp / "out.pt"), dtype],
                          capture_output=True, text=True, cwd=tmp, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return torch.load(tmp / "out.pt")


def _ours(folder: Path, tokens: torch.Tensor) -> torch.Tensor:
    from mv4deploy.runtime import load_model
    with torch.no_grad():
        return torch.log_softmax(load_model(folder)(tokens).logits.float(), -1)


@pytest.mark.parametrize("model,recipe", list(CASES))
def test_plain_transformers_loads_what_quantize_writes(tmp_path, tokens, model, recipe):
    out = tmp_path / "out"
    quantize_checkpoint(FIXTURES / model, out, get_recipe(recipe), workers=1)
    ours, ref = _ours(out, tokens), _ours(FIXTURES / model, tokens)
    plain = _plain_logits(out, tokens, tmp_path, DTYPE.get((model, recipe), "float32"))
    assert _kld(ours, plain) < 1e-4
    assert 1e-6 < _kld(ref, plain) < CASES[(model, recipe)]   # quantized (not a copy), within the recipe's KLD
    config = json.loads((out / "config.json").read_text())
    assert config[OURS_KEY]["recipe"] == recipe and config[OURS_KEY]["rules"]


def test_v4_fp8_fp4_config_is_the_shipped_one(tmp_path):
    out = tmp_path / "out"
    quantize_checkpoint(FIXTURES / "tiny-v4", out, get_recipe("fp8-fp4-experts"), workers=1)
    shipped = json.loads((FIXTURES / "tiny-v4-fp8fp4" / "config.json").read_text())["quantization_config"]
    assert json.loads((out / "config.json").read_text())["quantization_config"] == shipped
    ours = json.loads((out / "model.safetensors.index.json").read_text())["weight_map"]
    theirs = json.loads((FIXTURES / "tiny-v4-fp8fp4" / "model.safetensors.index.json").read_text())["weight_map"]
    assert sorted(ours) == sorted(theirs)


def test_configs_are_the_libraries_own(tmp_path):
    """compressed-tensors parses our INT4 config into W4A16 g128 with lm_head ignored; transformers'
    BitsAndBytesConfig reads our NF4 config back unchanged; FP8 on a dense model names what stays BF16."""
    from compressed_tensors.quantization import QuantizationConfig
    from transformers import BitsAndBytesConfig
    configs = {}
    for recipe in ("int4", "nf4", "fp8"):
        quantize_checkpoint(FIXTURES / "tiny-qwen2", tmp_path / recipe, get_recipe(recipe), workers=1)
        configs[recipe] = json.loads((tmp_path / recipe / "config.json").read_text())["quantization_config"]
    ct = QuantizationConfig.model_validate(configs["int4"])
    weights = ct.config_groups["group_0"].weights
    assert (ct.format, weights.num_bits, weights.group_size, weights.symmetric, ct.ignore) == \
        ("pack-quantized", 4, 128, True, ["lm_head"])
    bnb = BitsAndBytesConfig.from_dict(dict(configs["nf4"]))
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and not bnb.bnb_4bit_use_double_quant
    assert bnb.llm_int8_skip_modules == ["lm_head"]
    assert configs["fp8"] == {"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e4m3",
                              "weight_block_size": [128, 128], "modules_to_not_convert": ["lm_head"]}


def test_an_experts_recipe_on_a_dense_model_exits_2_naming_the_rule(cli, tmp_path):
    result = cli("quantize", str(FIXTURES / "tiny-qwen2"), str(tmp_path / "out"), "--recipe", "int4-experts")
    assert result.code == 2 and not (tmp_path / "out").exists()
    line = result.stderr.strip().splitlines()[-1]
    assert "int4-experts" in line and "'slot': 'expert'" in line and "applies to no weight" in line


def test_int4_experts_on_v4_is_refused_by_transformers_not_loaded_at_random(tmp_path, tokens):
    """FP8 linears + INT4 experts: DeepSeek's FP8 config with expert_dtype "int4". transformers stops with
    a clear error (it used to load random weights silently), and quantize says so."""
    summary = quantize_checkpoint(FIXTURES / "tiny-v4", tmp_path / "out", get_recipe("int4-experts"), workers=1)
    assert "expert_dtype 'int4'" in summary["portability"]
    torch.save(tokens, tmp_path / "tokens.pt")
    proc = subprocess.run([sys.executable, str(PLAIN), str(tmp_path / "out"), str(tmp_path / "tokens.pt"),
                           str(tmp_path / "o.pt")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 3 and "expert_dtype must be 'fp8' or 'fp4'" in proc.stderr
    assert quantize_checkpoint(FIXTURES / "tiny-v4", tmp_path / "fp8", get_recipe("fp8"), workers=1)["portability"] is None


def test_int4_output_has_the_tensors_and_config_llm_compressor_writes(tmp_path):
    """Against a checkpoint llm-compressor itself wrote for the same model and scheme (W4A16 g128,
    tests/data/reference_checkpoints): the same tensor names and shapes, the same packed dtypes, and the
    same layout-defining quantization_config keys. Float tensors (scales included) follow the model's dtype:
    F32 there, calibrated in float32; BF16 here, the source's, as in BF16 releases."""
    ref = json.loads((Path(__file__).parent / "data/reference_checkpoints/llmcompressor-w4a16-g128-tiny-qwen2.json")
                     .read_text())
    quantize_checkpoint(FIXTURES / "tiny-qwen2", tmp_path / "out", get_recipe("int4"), workers=1)
    ours = {}
    for name, file in json.loads((tmp_path / "out/model.safetensors.index.json").read_text())["weight_map"].items():
        from safetensors import safe_open
        with safe_open(str(tmp_path / "out" / file), "pt") as handle:
            t = handle.get_slice(name)
            ours[name] = [t.get_dtype(), list(t.get_shape())]
    assert sorted(ours) == sorted(ref["tensors"])
    for name, (dtype, shape) in ref["tensors"].items():
        assert ours[name][1] == shape, name
        assert ours[name][0] == {"F32": "BF16"}.get(dtype, dtype), name   # float tensors: the model's dtype
    config = json.loads((tmp_path / "out/config.json").read_text())["quantization_config"]
    layout = ("num_bits", "type", "symmetric", "strategy", "group_size", "dynamic")
    ref_q = ref["quantization_config"]
    assert [config["config_groups"]["group_0"]["weights"][k] for k in layout] == \
        [ref_q["config_groups"]["group_0"]["weights"][k] for k in layout]
    for key in ("quant_method", "format", "ignore", "quantization_status"):
        assert config[key] == ref_q[key], key
    assert config["config_groups"]["group_0"]["targets"] == ref_q["config_groups"]["group_0"]["targets"]


def test_v4_int4_loads_in_plain_transformers_with_its_head_and_compressor_kept_bf16(tmp_path, tokens):
    """compressed-tensors targets every Linear transformers builds, so ``ignore`` must name V4's BF16 head and
    compressor in transformers' module names (its deepseek_v4 renaming table); without that they were left
    uninitialized (NaN logits, no error). Group 32: tiny-v4's expert down_proj has K = 64, which
    compressed-tensors refuses to split into groups of 128 (V4-Flash's K of 2048 divides)."""
    import dataclasses
    base = get_recipe("int4")
    recipe = dataclasses.replace(base, name="int4-g32", rules=tuple(
        dataclasses.replace(r, format="int4-g32") if r.format == "int4-g128" else r for r in base.rules))
    out = tmp_path / "out"
    quantize_checkpoint(FIXTURES / "tiny-v4", out, recipe, workers=1)
    ignore = json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert "lm_head" in ignore and "model.layers.1.self_attn.compressor.kv_proj" in ignore
    ours, ref = _ours(out, tokens), _ours(FIXTURES / "tiny-v4", tokens)
    plain = _plain_logits(out, tokens, tmp_path)
    assert _kld(ours, plain) < 1e-4
    assert 1e-6 < _kld(ref, plain) < 1.5e-2


def test_v4_nvfp4_experts_are_reported_as_not_portable(tmp_path):
    """transformers 5.25 drops the experts' global scale when it dequantizes NVFP4 fused experts (measured:
    mean KLD 2.3 against our loader on tiny-v4), so quantize says so instead of claiming portability."""
    summary = quantize_checkpoint(FIXTURES / "tiny-v4", tmp_path / "out", get_recipe("nvfp4"), workers=1)
    assert "weight_global_scale" in summary["portability"]
