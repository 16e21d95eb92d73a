"""The CUDA path gives the same bits as the CPU path (FP8 block, FP8 rows, MXFP4, INT4 RTN)."""

from __future__ import annotations

import pytest
import torch

from mv4deploy.formats import get_format

GPU_FORMATS = ["fp8-e4m3-block128", "fp8-e4m3-block128-ue8m0", "fp8-e4m3-block32-ue8m0", "fp8-rows-ue8m0",
               "mxfp4", "int4-g128", "int4-g32"]


@pytest.mark.gpu
@pytest.mark.parametrize("fmt_name", GPU_FORMATS)
@pytest.mark.parametrize("shape,dtype", [((512, 1024), torch.bfloat16), ((3, 130, 257), torch.float32)])
def test_cuda_quantize_is_bit_identical_to_cpu(fmt_name, shape, dtype):
    fmt = get_format(fmt_name)
    w = (torch.randn(*shape, generator=torch.Generator().manual_seed(7)) * 0.03).to(dtype)
    w.view(-1)[::97] *= 300  # outliers spread the scales
    cpu = fmt.quantize("x.weight", w)
    gpu = fmt.quantize("x.weight", w.cuda())
    for key in cpu:
        assert gpu[key].is_cuda
        assert torch.equal(cpu[key].view(-1).view(torch.uint8), gpu[key].cpu().view(-1).view(torch.uint8)), key
    back_gpu = fmt.dequantize("x.weight", gpu, torch.float32, shape=shape).cpu()
    assert torch.equal(fmt.dequantize("x.weight", cpu, torch.float32, shape=shape), back_gpu)


@pytest.mark.gpu
@pytest.mark.parametrize("recipe", ["fp8", "fp8-fp4-experts", "int4-experts"])
def test_pipeline_on_cuda_writes_the_same_bytes(tmp_path, recipe):
    from mv4deploy.quant.recipe import get_recipe
    from mv4deploy.quant.run import quantize_checkpoint
    from mv4deploy.core.fileio import sha256_file
    from quant_synth import make_checkpoint, preset_config
    src = make_checkpoint(tmp_path / "src", preset_config("tiny-deepseek-v4"), shards=2)
    quantize_checkpoint(src, tmp_path / "cpu", get_recipe(recipe), device="cpu")
    quantize_checkpoint(src, tmp_path / "cuda", get_recipe(recipe), device="cuda")
    for f in sorted((tmp_path / "cpu").glob("*.safetensors")):
        assert sha256_file(f) == sha256_file(tmp_path / "cuda" / f.name), f.name
