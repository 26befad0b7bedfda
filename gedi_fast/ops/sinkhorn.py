"""Public Sinkhorn-Knopp: validates, then runs the reference (the fused kernel comes with kernels/)."""
from __future__ import annotations

import torch

from gedi_fast import reference
from gedi_fast.validation import check_logits, require_int, require_real


def sinkhorn_knopp(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """SwAV's balanced assignments of B samples to K clusters, without gradient.

    Returns a B x K float32 tensor (float64 for float64 scores) whose rows sum to 1. Equal to SwAV's
    loop wherever that loop is finite, and finite for every finite input (log-domain computation).
    """
    scores = check_logits(scores, "scores")
    eps = require_real(eps, "eps", positive=True)
    iters = require_int(iters, "iters", minimum=1)
    return reference.sinkhorn_knopp(scores, eps, iters)
