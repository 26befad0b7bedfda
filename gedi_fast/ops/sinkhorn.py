"""Public Sinkhorn-Knopp: validates, then runs the fused Triton kernels where they can run, else the reference."""
from __future__ import annotations

import torch

from gedi_fast import reference
from gedi_fast.ops.backend import BACKENDS, use_triton
from gedi_fast.validation import check_logits, require_choice, require_int, require_real


def fused_sinkhorn_knopp(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """The Triton path: kernels launched directly in eager mode, the registered op under torch.compile."""
    from gedi_fast.kernels import sinkhorn

    if torch.compiler.is_compiling():
        return torch.ops.gedi_fast.sinkhorn_knopp_fused(scores, eps, iters)
    return sinkhorn.sinkhorn_knopp(scores, eps, iters)


def sinkhorn_knopp(scores: torch.Tensor, eps: float = 0.05, iters: int = 3, backend: str = "auto") -> torch.Tensor:
    """SwAV's balanced assignments of B samples to K clusters, without gradient.

    Returns a B x K float32 tensor (float64 for float64 scores) whose rows sum to 1. Equal to SwAV's
    loop wherever that loop is finite, and finite for every finite input (log-domain computation).
    backend: "auto" (fused kernels for CUDA tensors), "torch" (reference) or "triton".
    """
    scores = check_logits(scores, "scores")
    eps = require_real(eps, "eps", positive=True)
    iters = require_int(iters, "iters", minimum=1)
    if use_triton(require_choice(backend, "backend", BACKENDS), scores):
        return fused_sinkhorn_knopp(scores.detach(), eps, iters)
    return reference.sinkhorn_knopp(scores, eps, iters)
