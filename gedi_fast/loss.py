"""GEDILoss: the GEDI objective as a drop-in torch.nn.Module."""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from gedi_fast.distributed import check_distributed, resolve
from gedi_fast.ops.backend import BACKENDS
from gedi_fast.ops.gedi import ASSIGNMENTS, gedi_loss
from gedi_fast.queue import LogitQueue
from gedi_fast.reference import FORMS
from gedi_fast.validation import (
    check_gedi_inputs,
    require_bool,
    require_choice,
    require_finite,
    require_int,
    require_real,
)

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup


class GEDILoss(torch.nn.Module):
    """gen_weight*gen + inv_weight*inv + prior_weight*prior + energy_reg*energy_reg_term (docs/DESIGN.md).

    Call with the two views' logits z1, z2 (B x K) and optionally the SGLD samples' logits zn
    (M x K). Internals run in float32 (float64 for float64 logits), so fp16/bf16 logits give
    fp32-accurate terms; the loss is returned in that compute dtype.

    The default weights (gen 1, inv 1, prior 3) are the trainer's defaults, the ones docs/RESULTS.md
    measures on moons, circles and digits. backend="auto" runs the fused Triton kernels (gedi_fast.kernels) for CUDA logits
    and the plain-torch reference otherwise; "triton" insists on the kernels (CPU tensors only under
    TRITON_INTERPRET=1), "torch" on the reference.

    Under torch.distributed (DDP), distributed="auto" (or True) treats every rank's rows as one batch:
    the prior's pbar, the gen, inv and energy_reg means and Sinkhorn's cluster sums run over all ranks
    of `process_group` (default: the default group), by all-reduces of K-vectors and scalars in the
    forward, so every rank gets the same loss and terms, those of one process on all the rows. Each
    rank's gradient for its own logits is the world size times the single-process one, so DDP's
    averaged parameter gradients equal the single-process large-batch gradients. Batch sizes may
    differ between ranks; pass zn on every rank or on none. Every rank must call the loss (the same
    number of times, with the same settings). Without an initialised process group, or with one rank,
    it is the single-process loss; distributed=False keeps each rank to its own batch.

    Non-finite logits are not checked by default (a check costs a host sync): NaN or +inf anywhere in
    z1, z2 or zn makes the loss NaN on both backends (a -inf logit is a cluster of probability 0).
    check_finite=True raises a ValueError naming the input instead.

    queue_size=N > 0 keeps the last N rows of each view's logits (gedi_fast.queue, SwAV's queue): the
    Sinkhorn targets and the prior's column means cover the queued rows with the batch's, which
    small batches need (the prior's gradient keeps the batch's scale); the other terms stay the
    batch's own. The queue fills over the first calls and takes each call's rows after the loss is
    computed, in training mode only (`.eval()` reads it without adding). Under DDP each rank queues its
    own rows and the reductions cover every rank's queue, as they cover every rank's batch. Both
    backends take the queue.

    form="symmetric" (default) pools both views in inv (both directions, averaged) and in the prior
    (KL(uniform || pbar), pbar over both views). form="author" is the GEDI author's code: inv one-way,
    -(1/B) sum_i sum_k q2 log q1 with view 2 the target (keeping its gradient under softmax targets;
    Sinkhorn targets are constants either way), and the prior over view 1 alone, summed over the
    clusters: -sum_k log pbar1_k = K (KL(uniform || pbar1) + log K), still in the log domain. gen and
    energy_reg are the same in both forms (both views' rows; the author's generative-free code has
    neither). GEDILoss(temperature=0.1, form="author", gen_weight=0, inv_weight=beta / 2,
    prior_weight=0.5, energy_reg=0) on the raw head outputs is the author's loss (docs/DESIGN.md, "Two forms").
    """

    def __init__(
        self,
        temperature: float = 0.1,
        gen_weight: float = 1.0,
        inv_weight: float = 1.0,
        prior_weight: float = 3.0,
        assignment: str = "softmax",
        sinkhorn_eps: float = 0.05,
        sinkhorn_iters: int = 3,
        energy_reg: float = 0.0,
        backend: str = "auto",
        distributed: bool | str = "auto",
        process_group: ProcessGroup | None = None,
        check_finite: bool = False,
        queue_size: int = 0,
        form: str = "symmetric",
    ) -> None:
        super().__init__()
        self.temperature = require_real(temperature, "temperature", positive=True)
        self.weights = {
            "gen": require_real(gen_weight, "gen_weight"),
            "inv": require_real(inv_weight, "inv_weight"),
            "prior": require_real(prior_weight, "prior_weight"),
            "energy_reg": require_real(energy_reg, "energy_reg", non_negative=True),
        }
        self.assignment = require_choice(assignment, "assignment", ASSIGNMENTS)
        self.sinkhorn_eps = require_real(sinkhorn_eps, "sinkhorn_eps", positive=True)
        self.sinkhorn_iters = require_int(sinkhorn_iters, "sinkhorn_iters", minimum=1)
        self.backend = require_choice(backend, "backend", BACKENDS)
        self.distributed = check_distributed(distributed, process_group)
        self.process_group = process_group
        self.check_finite = require_bool(check_finite, "check_finite")
        require_int(queue_size, "queue_size", minimum=0)
        self.queue = LogitQueue(queue_size) if queue_size else None
        self.form = require_choice(form, "form", FORMS)

    def forward(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        zn: torch.Tensor | None = None,
        return_terms: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        check_gedi_inputs(z1, z2, zn)
        if self.check_finite:
            for name, z in (("z1", z1), ("z2", z2), ("zn", zn)):
                if z is not None:
                    require_finite(z, name)
        ranks = resolve(self.distributed, self.process_group)
        queued = None if self.queue is None else self.queue.rows(z1)
        loss, terms = gedi_loss(z1, z2, zn, self.temperature, self.weights, self.assignment, self.sinkhorn_eps,
                                self.sinkhorn_iters, self.backend, ranks, queued, self.form)
        if self.queue is not None and self.training:
            self.queue.push(z1.detach(), z2.detach())
        return (loss, terms) if return_terms else loss

    def get_extra_state(self) -> dict | None:
        """The queue travels in the module's state_dict (None without one)."""
        return None if self.queue is None else self.queue.state_dict()

    def set_extra_state(self, state: dict | None) -> None:
        if (state is None) != (self.queue is None):
            raise ValueError(f"queue_size: the state {'has no' if state is None else 'holds a'} queue, this loss "
                             f"{'has one' if self.queue is not None else 'has none'}")
        if state is not None:
            self.queue.load_state_dict(state)

    def extra_repr(self) -> str:
        # Named as the constructor's arguments: gen_weight, inv_weight, prior_weight, energy_reg.
        weights = ", ".join(f"{name if name == 'energy_reg' else name + '_weight'}={w:g}" for name, w in self.weights.items())
        return (f"temperature={self.temperature:g}, {weights}, assignment={self.assignment!r}, form={self.form!r}, "
                f"backend={self.backend!r}, distributed={self.distributed!r}"
                + (f", queue_size={self.queue.size}" if self.queue is not None else ""))
