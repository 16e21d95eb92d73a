"""Test support: the GPTQ objective of round-to-nearest INT4, what GPTQ must beat."""

from __future__ import annotations

import torch


def rtn_hessian_error(weight: torch.Tensor, hessian: torch.Tensor, group: int) -> float:
    """The same objective for round-to-nearest INT4 (what GPTQ must beat)."""
    from mv4deploy.formats.kernels_int import int4_quant
    q, s = int4_quant(weight.float(), group)
    deq = q.double() * s.double().repeat_interleave(group, dim=1)[:, : weight.shape[1]]
    diff = weight.double() - deq
    return float(torch.einsum("ri,ij,rj->", diff, hessian.double(), diff))
