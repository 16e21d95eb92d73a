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

from mv4deploy.formats.kernels_int import INT4_QMAX, int4_scale

BLOCK = 128          # columns updated lazily together (the paper's block size)
DAMP = 0.01          # fraction of mean(diag(H)) added to the diagonal
ACTORDER = True      # see gptq_quantize; measured in docs/quantization.md section 5
DIVISOR = 7.5        # group scale = amax / 7.5 before the search (compressed-tensors' symmetric minmax)


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
                  block: int = BLOCK, actorder: bool = ACTORDER, divisor: float = DIVISOR) -> GPTQResult:
    """weight [rows, cols] (cols = K), hessian [cols, cols]. Columns no calibration token reached
    (zero diagonal) carry no information: their weights are quantized as they are, error not spread.

    ``actorder``: columns in order of decreasing H diagonal (the inputs that carry the most energy
    first), with every group's scale fixed beforehand from the weight as given, amax / ``divisor``
    ("static" activation order: the stored layout stays plain groups along K). Without it: columns left
    to right, each group's scale from its columns after the earlier updates (amax / ``divisor``)."""
    w = weight.detach().to(torch.float64).clone()
    h = hessian.detach().to(torch.float64).clone()
    rows, cols = w.shape
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    n_groups = -(-cols // group)
    scales = torch.zeros(rows, n_groups, dtype=torch.bfloat16, device=w.device)
    perm = torch.arange(cols, device=w.device)
    if actorder:
        scales = group_scales(w, torch.diag(h), group, divisor)
        perm = torch.argsort(torch.diag(h), descending=True, stable=True)
        w, h = w[:, perm], h[perm][:, perm]
    hinv = _inverse_cholesky(h, damp)
    codes = torch.zeros(rows, cols, dtype=torch.int8, device=w.device)
    group_of = perm // group                    # [cols]: the stored group of each processed column
    for start in range(0, cols, block):
        stop = min(cols, start + block)
        w1, err = w[:, start:stop].clone(), torch.zeros(rows, stop - start, dtype=w.dtype, device=w.device)
        for i in range(stop - start):
            col = start + i
            if not actorder and col % group == 0:  # a new group: its scale from its (updated) columns
                g_stop = min(cols, col + group)
                ahead = torch.cat([w1[:, i:], w[:, stop:g_stop]], dim=1)[:, : g_stop - col]
                scales[:, col // group] = int4_scale(ahead.abs().amax(dim=1) * (INT4_QMAX / divisor))
            s = scales[:, group_of[col]].double()
            q = torch.round(w1[:, i] / s).clamp_(-8, 7)
            codes[:, col] = q.to(torch.int8)
            e = (w1[:, i] - q * s) / hinv[col, col]
            w1[:, i:] -= e[:, None] * hinv[col, col:stop][None, :]
            err[:, i] = e
        w[:, stop:] -= err @ hinv[start:stop, stop:]
    codes = codes[:, torch.argsort(perm)]
    deq = codes.double() * scales.double().repeat_interleave(group, dim=1)[:, :cols]
    diff = weight.double() - deq
    return GPTQResult(codes, scales, float(torch.einsum("ri,ij,rj->", diff, hessian.double(), diff)))


def pad_groups(w: torch.Tensor, group: int) -> torch.Tensor:
    """[rows, cols] -> [rows, ceil(cols / group), group], the last group zero-padded."""
    pad = -w.shape[-1] % group
    return torch.nn.functional.pad(w, (0, pad)).unflatten(-1, (-1, group))


SHRINK = (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.79)   # candidate fractions of amax / divisor


def group_scales(w: torch.Tensor, h_diag: torch.Tensor, group: int, divisor: float) -> torch.Tensor:
    """Each group's bf16 scale: of amax / divisor times each ``SHRINK`` factor, the one whose rounding
    error weighted by the input energy (H's diagonal) is least: clipping a few outliers buys a finer
    grid for the rest."""
    wg = pad_groups(w, group)                                  # [rows, groups, group]
    hg = pad_groups(h_diag[None, :], group)                    # [1, groups, group]
    amax = wg.abs().amax(-1)
    best, best_err = None, None
    for f in SHRINK:
        s = int4_scale(amax * (INT4_QMAX / divisor) * f)
        sd = s.double()[..., None]
        err = (((wg / sd).round().clamp(-8, 7) * sd - wg) ** 2 * hg).sum(-1)
        if best is None:
            best, best_err = s, err
        else:
            better = err < best_err
            best, best_err = torch.where(better, s, best), torch.where(better, err, best_err)
    return best
