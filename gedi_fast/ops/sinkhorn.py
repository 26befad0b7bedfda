"""Public Sinkhorn-Knopp: validates, then runs the fused Triton kernels where they can run, else the reference."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from gedi_fast import reference
from gedi_fast.distributed import Ranks, check_distributed, resolve
from gedi_fast.ops.backend import BACKENDS, use_triton
from gedi_fast.validation import check_logits, require_bool, require_choice, require_finite, require_int, require_real

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


def fused_sinkhorn_knopp(scores: torch.Tensor, eps: float, iters: int, ranks: Ranks | None = None) -> torch.Tensor:
    """The Triton path: kernels launched directly in eager mode, the registered op under torch.compile.

    With `ranks` the kernels' per-cluster sums are all-reduced after each cluster step (their
    reduce_columns hook); the registered op has no such hook, so that path always runs eagerly.
    """
    from gedi_fast.kernels import sinkhorn

    if ranks is not None:
        return sinkhorn.sinkhorn_knopp(scores, eps, iters, reduce_columns=ranks.max_sum)
    if torch.compiler.is_compiling():
        return torch.ops.gedi_fast.sinkhorn_knopp_fused(scores, eps, iters)
    return sinkhorn.sinkhorn_knopp(scores, eps, iters)


def sinkhorn_knopp(
    scores: torch.Tensor,
    eps: float = 0.05,
    iters: int = 3,
    backend: str = "auto",
    distributed: bool | str = "auto",
    process_group: ProcessGroup | None = None,
    check_finite: bool = False,
) -> torch.Tensor:
    """SwAV's balanced assignments of B samples to K clusters, without gradient.

    Returns a B x K float32 tensor (float64 for float64 scores) whose rows sum to 1. Equal to SwAV's
    loop wherever that loop is finite, and finite for every finite input (log-domain computation).
    backend: "auto" (fused kernels for CUDA tensors), "torch" (reference) or "triton".
    Under torch.distributed, distributed="auto" (or True) balances all ranks' samples together, as
    SwAV's distributed_sinkhorn does: the per-cluster sums are all-reduced over `process_group`
    (default: the default group) at each iteration and each rank gets its own samples' rows, those
    of one process on the concatenated batch. Every rank must call it. Without an initialised process
    group, or with one rank, it is the single-process result; False keeps each rank to its own batch.
    Scores are not checked for NaN or +inf by default: they give NaN assignments (every row on the
    reference, at least the affected entries on the Triton kernels, whose rows then need not sum to 1);
    a -inf score is a weight of 0. check_finite=True raises a ValueError instead (one host sync).
    """
    scores = check_logits(scores, "scores")
    if require_bool(check_finite, "check_finite"):
        require_finite(scores, "scores")
    eps = require_real(eps, "eps", positive=True)
    iters = require_int(iters, "iters", minimum=1)
    backend = require_choice(backend, "backend", BACKENDS)
    ranks = resolve(check_distributed(distributed, process_group), process_group)
    if use_triton(backend, scores):
        return fused_sinkhorn_knopp(scores.detach(), eps, iters, ranks)
    return reference.sinkhorn_knopp(scores, eps, iters, ranks)
