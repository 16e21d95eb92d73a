"""The fast 4-bit kernels (tables, bit tricks, strips) against slow references written differently
(``tests/_support/kernels_ref.py``), on random values, ties at every rounding midpoint, zeros, -0,
subnormals and values past the grid; and every lossy format against digests of the kernels as they were
before the speed-up (commit 4050523), so a faster kernel can only ever give the same bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from mv4deploy.formats import get_format
from mv4deploy.formats.base import FORMATS
from tests._support.kernels_ref import e2m1_codes_ref, int4_pack_ref, nf4_ref, pack_low_first_ref

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DIGESTS = Path(__file__).parent / "golden" / "kernel_digests.json"
TIES = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


def battery() -> dict[str, torch.Tensor]:
    """Small inputs that reach every branch: random bf16 with odd shapes, float32 over 60 decades, every
    finite bf16 value (shuffled into blocks), exact e2m1 ties and their neighbours, zeros, -0, subnormals,
    values near the bf16 / float32 maximum."""
    g = torch.Generator().manual_seed(7)
    every = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    every = every[torch.isfinite(every)]
    every = torch.cat([every, torch.zeros(256 * 256 - every.numel(), dtype=torch.bfloat16)])
    edges = torch.zeros(128, 256, dtype=torch.bfloat16)
    edges[5, 3], edges[7, 100], edges[9, 200], edges[13] = 1e-40, -3.0e38, 3.3e38, 1e-39
    edges[11, :32] = torch.tensor([6.0, *TIES] * 4) * torch.tensor([1.0, -1.0] * 16)
    edges[12, :64] = torch.linspace(-1, 1, 64)
    edges[14, :16] = -0.0
    t = torch.tensor([*TIES, 6.0])
    near = torch.cat([t, -t, torch.nextafter(t, torch.zeros(8)), torch.nextafter(t, torch.full((8,), 9.0))])
    return {"random": (torch.randn(300, 520, generator=g) * 0.02).to(torch.bfloat16),
            "decades": torch.randn(130, 264, generator=g) * torch.logspace(-30, 30, 264),
            "every_bf16": every[torch.randperm(every.numel(), generator=g)].reshape(256, 256),
            "edges": edges, "ties": near.repeat(64, 8), "random_3d": torch.randn(3, 64, 96, generator=g)}


def digest(fmt_name: str) -> str:
    h = hashlib.sha256()
    for name, x in battery().items():
        for key, value in get_format(fmt_name).quantize("w.weight", x).items():
            h.update(key.encode() + name.encode())
            h.update(value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("fmt_name", sorted(n for n, f in FORMATS.items() if not f.lossless))
def test_every_lossy_format_gives_the_bytes_of_the_kernels_before_the_speed_up(fmt_name):
    recorded = json.loads(DIGESTS.read_text())
    assert fmt_name in recorded, f"{fmt_name}: no recorded digest (a new format: add it with its first kernel)"
    assert digest(fmt_name) == recorded[fmt_name]


@pytest.mark.parametrize("name", ["random", "every_bf16", "edges", "decades"])
def test_nf4_equals_the_midpoint_count_reference(name):
    from mv4deploy.formats.kernels_int import nf4_quant
    w = battery()[name].to(torch.bfloat16).reshape(-1)
    w = w[: w.numel() - w.numel() % 64]          # whole blocks (the partial one is bitsandbytes' own code)
    packed, absmax, _, _ = nf4_quant(w, 64, b"{}")
    ref_packed, ref_absmax = nf4_ref(w, 64)
    assert torch.equal(packed.reshape(-1), ref_packed) and torch.equal(absmax, ref_absmax)


@pytest.mark.parametrize("name", ["random", "edges", "ties", "every_bf16", "random_3d"])
def test_mxfp4_codes_equal_the_nearest_value_reference(name):
    """Codes of x * 2**-e with the stored exponents (their choice is tested in test_formats_roundtrip)."""
    x = battery()[name]
    stored = list(get_format("mxfp4").quantize("w.weight", x).values())
    e = stored[1].view(torch.uint8).double() - 127
    v = (x.double() * torch.exp2(-e).repeat_interleave(32, dim=-1)[..., : x.shape[-1]]).float()
    assert torch.equal(stored[0].view(torch.uint8), pack_low_first_ref(e2m1_codes_ref(v)))


@pytest.mark.parametrize("name", ["random", "edges", "ties", "decades"])
def test_nvfp4_codes_equal_the_nearest_value_reference(name):
    """v = w / (scale / global scale) in float32 (compressed-tensors' rule), nearest e2m1, exact -0 as +0."""
    x = battery()[name]
    packed, scale, gs = get_format("nvfp4").quantize("w.weight", x).values()
    s_eff = (scale.float() / gs).repeat_interleave(16, dim=-1)[..., : x.shape[-1]]
    v = x.float() / s_eff
    codes = torch.where(v == 0, torch.zeros_like(v), v)   # exact zeros (-0 too) code as +0
    assert torch.equal(packed, pack_low_first_ref(e2m1_codes_ref(codes)))


@pytest.mark.parametrize("cols", [256, 260, 7])
def test_int4_pack_equals_the_arithmetic_reference(cols):
    from mv4deploy.formats.kernels_int import int4_pack
    q = torch.randint(-8, 8, (33, cols), generator=torch.Generator().manual_seed(cols), dtype=torch.int8)
    assert torch.equal(int4_pack(q), int4_pack_ref(q))


@pytest.mark.parametrize("grid_name", ["E4M3", "E2M1"])
def test_above_half_is_where_rounding_passes_half_the_grid_maximum(grid_name):
    """``block_exponent`` lowers a block when its largest value rounds to <= qmax / 2; it tests that as
    value < ``above_half`` instead of rounding. Both must agree on every float32 near the boundary."""
    from mv4deploy.formats import kernels
    grid = getattr(kernels, grid_name)
    edge = torch.tensor(grid.above_half)
    near = [edge]
    for _ in range(64):
        near += [torch.nextafter(near[-1], torch.tensor(0.0))]
    up = [edge]
    for _ in range(64):
        up += [torch.nextafter(up[-1], torch.tensor(1e9))]
    t = torch.cat([torch.stack(near + up), torch.linspace(0, grid.qmax, 10001)])
    assert torch.equal(grid.round(t) <= grid.qmax / 2, t < grid.above_half)
