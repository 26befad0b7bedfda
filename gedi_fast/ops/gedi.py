"""The GEDI terms: the assignment modes and the dispatch between the fused Triton kernels and the reference.

reference.ASSIGNMENTS is the one list of assignment modes, beside their formula
(`reference.assignment_targets`); ASSIGNMENT_TARGETS gives each its targets on the fused path (a test
checks that it covers every mode). A new mode adds its name and formula to the reference, its entry
here and whatever its targets need in the kernels.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

from gedi_fast import reference
from gedi_fast.distributed import Ranks
from gedi_fast.ops.backend import use_triton
from gedi_fast.ops.sinkhorn import fused_sinkhorn_knopp

Targets = Optional[tuple[torch.Tensor, torch.Tensor]]
Queued = Optional[tuple[torch.Tensor, torch.Tensor]]
TargetsFn = Callable[[torch.Tensor, torch.Tensor, float, int, Optional[Ranks], Queued], Targets]


def _softmax_targets(z1: torch.Tensor, z2: torch.Tensor, eps: float, iters: int, ranks: Ranks | None,
                     queue: Queued) -> Targets:
    """None: the kernels take t = q from the logits themselves, with gradient through both sides."""
    return None


def _sinkhorn_targets(z1: torch.Tensor, z2: torch.Tensor, eps: float, iters: int, ranks: Ranks | None,
                      queue: Queued) -> Targets:
    """Each view's Sinkhorn-Knopp assignments from the fused kernels: constants, no gradient. With a
    queue, each view is balanced together with its queued rows and keeps its own rows' targets."""
    if queue is None:
        return tuple(fused_sinkhorn_knopp(z.detach(), eps, iters, ranks) for z in (z1, z2))
    return tuple(fused_sinkhorn_knopp(torch.cat([queued.to(z.dtype), z.detach()]), eps, iters, ranks)[len(queued):]
                 for z, queued in zip((z1, z2), queue))


# Each mode's inv targets on the fused path (reference.assignment_targets is the formula they match).
ASSIGNMENT_TARGETS: dict[str, TargetsFn] = {
    "softmax": _softmax_targets,
    "sinkhorn": _sinkhorn_targets,
}
ASSIGNMENTS = reference.ASSIGNMENTS


def fused_gedi_terms(
    z1: torch.Tensor, z2: torch.Tensor, zn: torch.Tensor | None, temperature: float, weights: dict[str, float],
    assignment: str, sinkhorn_eps: float, sinkhorn_iters: int, ranks: Ranks | None = None, queue: Queued = None,
    form: str = "symmetric",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The Triton path: the weighted loss and the terms, both from the kernels' one terms vector."""
    from gedi_fast.kernels import gedi_terms

    targets = ASSIGNMENT_TARGETS[assignment](z1, z2, sinkhorn_eps, sinkhorn_iters, ranks, queue)
    queued_columns, queued_rows = (None, 0) if queue is None else reference.queue_columns(queue, temperature, form)
    vector = gedi_terms.gedi_terms(z1, z2, zn, targets, temperature, [weights[name] for name in reference.TERM_NAMES],
                                   ranks, form, queued_columns, queued_rows)
    values = dict(zip(reference.TERM_VECTOR, vector.unbind()))
    terms = {name: values[name] for name in reference.TERM_NAMES}
    terms.update({name: values[name].detach() for name in reference.DIAGNOSTIC_NAMES})
    return values["loss"], terms


def gedi_loss(
    z1: torch.Tensor, z2: torch.Tensor, zn: torch.Tensor | None, temperature: float, weights: dict[str, float],
    assignment: str, sinkhorn_eps: float, sinkhorn_iters: int, backend: str, ranks: Ranks | None = None,
    queue: Queued = None, form: str = "symmetric",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted loss, terms and diagnostics) on the backend's face; arguments are checked by GEDILoss.

    `weights` maps each of reference.TERM_NAMES to its weight; `ranks` (gedi_fast.distributed) makes
    the terms those of all ranks' rows; `queue` (gedi_fast.queue) adds past rows to the prior's columns
    and the Sinkhorn targets; `form` is reference.FORMS' choice of how inv and the prior read the views.
    """
    if use_triton(backend, z1):
        return fused_gedi_terms(z1, z2, zn, temperature, weights, assignment, sinkhorn_eps, sinkhorn_iters, ranks,
                                queue, form)
    terms = reference.gedi_terms(z1, z2, zn, temperature, assignment, sinkhorn_eps, sinkhorn_iters, ranks, queue,
                                 form)
    return reference.weighted_loss(terms, weights), terms
