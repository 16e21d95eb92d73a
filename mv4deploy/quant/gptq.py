"""GPTQ for symmetric group INT4 (Frantar et al., 2022): quantize columns left to right, pushing each
column's rounding error onto the columns not yet quantized through the inverse Hessian of the layer
input, H = sum over calibration tokens of x x^T. A pure function of (weight, H, group size), so it
is tested against round-to-nearest on synthetic data; ``calibrate.py`` collects the Hessians.

Output is the same layout as ``int4-g128`` / ``int4-g32`` RTN: codes in [-8, 7] and one bf16 scale per
group along K. Each group's scale is computed (as RTN does, bf16(amax / 7)) from the group's columns
*after* the error updates from earlier groups, when the group is reached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mv4deploy.formats.kernels_int import int4_scale

BLOCK = 128          # columns updated lazily together (the paper's block size)
DAMP = 0.01          # fraction of mean(diag(H)) added to the diagonal


@dataclass(frozen=True)
class GPTQResult:
    codes: torch.Tensor       # int8 [rows, cols] in [-8, 7]
    scales: torch.Tensor      # bf16 [rows, ceil(cols / group)]
    hessian_error: float      # tr((W - Wq) H (W - Wq)^T): the layer-output error GPTQ minimises


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of H^-1 after damping (retried with more damping if H is singular)."""
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    mean_diag = float(torch.diag(h).mean()) or 1.0
    for attempt in range(6):
        try:
            l = torch.linalg.cholesky(h + eye * damp * (10 ** attempt) * mean_diag)
            return torch.linalg.cholesky(torch.cholesky_inverse(l), upper=True)
        except torch.linalg.LinAlgError:
            continue
    raise ValueError("Hessian is not positive definite even with strong damping")


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, group: int, damp: float = DAMP,
                  block: int = BLOCK) -> GPTQResult:
    """weight [rows, cols] (cols = K), hessian [cols, cols]. Columns no calibration token reached
    (zero diagonal) carry no information: their weights are quantized as they are, error not spread."""
    w = weight.detach().to(torch.float64).clone()
    h = hessian.detach().to(torch.float64).clone()
    rows, cols = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    hinv = _inverse_cholesky(h, damp)
    codes = torch.zeros(rows, cols, dtype=torch.int8, device=w.device)
    scales = torch.zeros(rows, -(-cols // group), dtype=torch.bfloat16, device=w.device)
    for start in range(0, cols, block):
        stop = min(cols, start + block)
        w1, err = w[:, start:stop].clone(), torch.zeros(rows, stop - start, dtype=w.dtype, device=w.device)
        for i in range(stop - start):
            col = start + i
            if col % group == 0:  # a new group: its scale from its (already updated) columns
                g_stop = min(cols, col + group)
                ahead = torch.cat([w1[:, i:], w[:, stop:g_stop]], dim=1)[:, : g_stop - col]
                scales[:, col // group] = int4_scale(ahead.abs().amax(dim=1))
            s = scales[:, col // group].double()
            q = torch.round(w1[:, i] / s).clamp_(-8, 7)
            codes[:, col] = q.to(torch.int8)
            e = (w1[:, i] - q * s) / hinv[col, col]
            w1[:, i:] -= e[:, None] * hinv[col, col:stop][None, :]
            err[:, i] = e
        w[:, stop:] -= err @ hinv[start:stop, stop:]
    deq = codes.double() * scales.double().repeat_interleave(group, dim=1)[:, :cols]
    diff = weight.double() - deq
    return GPTQResult(codes, scales, float(torch.einsum("ri,ij,rj->", diff, hessian.double(), diff)))
