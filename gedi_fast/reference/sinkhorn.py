"""Sinkhorn-Knopp in plain torch: SwAV's balanced assignments, in the log domain (docs/DESIGN.md)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from gedi_fast.reference.logits import compute_dtype

if TYPE_CHECKING:
    from gedi_fast.distributed import Ranks


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, eps: float = 0.05, iters: int = 3, ranks: Ranks | None = None) -> torch.Tensor:
    """SwAV's balanced assignments (B x K, rows sum to 1), computed in the log domain.

    SwAV: Q = exp(scores / eps)^T; Q /= Q.sum(); then `iters` times: each cluster (row of Q) is
    divided by its sum and by K, each sample (column) by its sum and by B; finally Q *= B. Here each
    division is the subtraction of a logsumexp, so no entry overflows or turns into 0/0. The first
    Q /= Q.sum() cancels in the first per-cluster normalisation and is left out. A cluster whose scores
    are -inf in every row gets 0 everywhere and the other clusters share the rows. With `ranks`, as in
    SwAV's distributed_sinkhorn, the cluster sums run over all ranks' samples and B is the global
    batch; each rank returns the rows of its own samples.
    """
    log_q = scores.detach().to(compute_dtype(scores)) / eps
    batch, clusters = log_q.shape
    log_batch = math.log(batch) if ranks is None else ranks.sum(log_q.new_full((), batch)).log()
    for _ in range(iters):
        log_q = log_q - _empty_as_zero(_cluster_logsumexp(log_q, ranks)) - math.log(clusters)
        log_q = log_q - _empty_as_zero(torch.logsumexp(log_q, dim=1, keepdim=True)) - log_batch
    return torch.exp(log_q + log_batch)


def _empty_as_zero(lse: torch.Tensor) -> torch.Tensor:
    """A line of Q that is all -inf (a cluster masked in every row, a sample with every cluster masked)
    has nothing to normalise: it stays 0 instead of turning into -inf - (-inf) = NaN."""
    return torch.where(lse == -math.inf, torch.zeros_like(lse), lse)


def _cluster_logsumexp(log_q: torch.Tensor, ranks: Ranks | None) -> torch.Tensor:
    """logsumexp over the samples (rows) of each cluster, of all ranks' samples given `ranks`."""
    local = torch.logsumexp(log_q, dim=0, keepdim=True)
    return local if ranks is None else ranks.logsumexp(local)
