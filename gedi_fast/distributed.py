"""Cross-rank reductions for the loss and Sinkhorn-Knopp under torch.distributed (DDP).

Only K-vectors and a handful of scalars cross ranks: the row counts and row sums every term is a
ratio of, the per-cluster column sums of the prior, and Sinkhorn's per-cluster sums (SwAV's scheme).
Every collective runs in the forward, in the same order on every rank; nothing is read back to the
host.

Gradients: DDP averages parameter gradients over the W ranks, so for its average to be the
single-process gradient of the loss on all ranks' rows, rank r must hold W times that gradient with
respect to its own rows. Every rank computes the same loss and backpropagates the same upstream
gradient, so the backward of a cross-rank sum is that gradient times W (what an all-reduce of the
upstream gradients would give) without a collective in the backward to interleave with DDP's own.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

# Entries of reference.batch_sums that add up across ranks (None entries count as 0).
SUMMED = ("views", "inv_rows", "lse", "lse_sq", "cross", "samples", "lse_n", "lse_n_sq", "queue_rows")


@dataclass(frozen=True)
class Ranks:
    """Two or more ranks to reduce over: `group` (None: the default group) of `world_size` ranks."""

    group: ProcessGroup | None
    world_size: int

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of t over the ranks; its gradient is the upstream gradient times world_size."""
        return _SumOverRanks.apply(t, self)

    def logsumexp(self, a: torch.Tensor) -> torch.Tensor:
        """log sum_r exp(a_r) elementwise over the ranks' a; gradient world_size * g * exp(a - result)."""
        return _LogSumExpOverRanks.apply(a, self)

    def max_sum(self, m: torch.Tensor, l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Merge each rank's (max, sum of exp(x - max)) pairs into the pair over all ranks (no gradient).

        The reduce_columns hook of gedi_fast.kernels.sinkhorn: M = all-reduce MAX of m, then
        L = all-reduce SUM of l * exp(m - M).
        """
        top = m.clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=self.group)
        total = l * torch.exp(m - top)
        dist.all_reduce(total, group=self.group)
        return top, total

    def sum_rows(self, sums: dict[str, torch.Tensor | int | None]) -> dict[str, torch.Tensor | None]:
        """reference.batch_sums over all ranks' rows: counts and sums in one all-reduce.

        "log_columns" passes through: callers reduce it themselves (by logsumexp or as max-sum pairs).
        A rank without samples adds zeros and keeps "lse_n" None, so its gen term stays 0; without a
        queue "queue_rows" is None.
        """
        like = sums["lse"]
        local = [value if isinstance(value, torch.Tensor) else like.new_full((), float(value or 0))
                 for value in (sums.get(name) for name in SUMMED)]
        total = dict(zip(SUMMED, self.sum(torch.stack(local)).unbind()))
        reduced = {name: None if sums.get(name) is None else total[name] for name in SUMMED}
        return {**reduced, "log_columns": sums["log_columns"]}


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: torch.Tensor, ranks: Ranks) -> torch.Tensor:
        ctx.world_size = ranks.world_size
        total = t.clone()
        dist.all_reduce(total, group=ranks.group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.world_size, None


class _LogSumExpOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: torch.Tensor, ranks: Ranks) -> torch.Tensor:
        top, total = ranks.max_sum(a, torch.ones_like(a))
        out = top + total.log()
        ctx.world_size = ranks.world_size
        ctx.save_for_backward(a, out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        a, out = ctx.saved_tensors
        return grad * ctx.world_size * torch.exp(a - out), None


def check_distributed(distributed: object, process_group: object) -> bool | str:
    """Validate the `distributed` / `process_group` pair of the public API; returns `distributed`."""
    if not (isinstance(distributed, bool) or distributed == "auto"):
        raise ValueError(f"distributed must be 'auto', True or False, got {distributed!r}")
    if process_group is not None:
        if not dist.is_available() or not isinstance(process_group, dist.ProcessGroup):
            kind = type(process_group).__name__
            raise TypeError(f"process_group must be a torch.distributed.ProcessGroup, got {kind}")
        if distributed is False:
            raise ValueError("process_group was given but distributed=False; pass distributed='auto' or True")
    return distributed  # type: ignore[return-value]


def resolve(distributed: bool | str, process_group: ProcessGroup | None = None) -> Ranks | None:
    """The ranks to reduce over, or None for single-process behaviour.

    "auto" and True reduce over process_group (default: the default group) whenever torch.distributed
    is initialised; without an initialised group, or with a group of one rank, both behave as one
    process (never an error). False never reduces: each rank keeps to its own batch. Checked at each
    call, so a loss built before init_process_group still reduces.
    """
    if distributed is False or not dist.is_available() or not dist.is_initialized():
        return None
    world_size = dist.get_world_size(process_group)
    return Ranks(process_group, world_size) if world_size > 1 else None
