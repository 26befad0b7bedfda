"""LogitQueue: the last `size` rows of each view's logits, for balanced targets and the prior on small batches.

With a per-rank batch of 32, Sinkhorn-Knopp balances 32 rows over K clusters and the prior's column
means average 64 rows: both are noisy. As SwAV does with its queue of past embeddings, GEDILoss can
compute both over the queued rows and the batch together (docs/DESIGN.md, "The queue"). Queued rows
are constants: logits of past steps, detached, in the compute dtype.
"""
from __future__ import annotations

import torch

from gedi_fast.reference.logits import compute_dtype
from gedi_fast.validation import require_int


class LogitQueue:
    """A ring buffer of the two views' past logits: rows in insertion order, oldest first.

    It fills over the first steps (`rows()` gives only what has been pushed) and then keeps the
    newest `size` rows per view. The storage is made at the first push, from the logits' K, dtype and
    device; `state_dict` / `load_state_dict` carry it through checkpoints.
    """

    def __init__(self, size: int) -> None:
        self.size = require_int(size, "queue_size", minimum=1)
        self.logits: torch.Tensor | None = None  # 2 x size x K
        self.filled = 0
        self.position = 0  # where the next row goes

    def rows(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(view-1 rows, view-2 rows), each filled x K, oldest first; 0 x K (K, device of `like`) while empty.

        Empty rather than None, so that under DDP a rank whose queue is empty (one that resumed with
        more ranks than were saved) runs the same collectives as the others.
        """
        if self.filled == 0:
            empty = like.new_zeros((0, like.shape[1]), dtype=compute_dtype(like))
            return empty, empty
        order = torch.arange(self.position - self.filled, self.position, device=self.logits.device) % self.size
        return self.logits[0, order], self.logits[1, order]

    @torch.no_grad()
    def push(self, z1: torch.Tensor, z2: torch.Tensor) -> None:
        """Append this step's rows (the newest `size` if the batch is larger), dropping the oldest."""
        rows, clusters = z1.shape
        if self.logits is None:
            self.logits = z1.new_zeros((2, self.size, clusters), dtype=compute_dtype(z1))
        elif self.logits.shape[2] != clusters:
            raise ValueError(f"queue_size: the queue holds logits of {self.logits.shape[2]} clusters; "
                             f"got {clusters}")
        keep = min(rows, self.size)
        slots = torch.arange(self.position, self.position + keep, device=self.logits.device) % self.size
        self.logits[:, slots] = torch.stack([z1[-keep:], z2[-keep:]]).to(self.logits.dtype)
        self.position = (self.position + keep) % self.size
        self.filled = min(self.filled + keep, self.size)

    def state_dict(self) -> dict:
        return {"size": self.size, "logits": self.logits, "filled": self.filled, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if state["size"] != self.size:
            raise ValueError(f"queue_size: the saved queue holds {state['size']} rows, this one {self.size}")
        logits = state["logits"]
        self.logits = None if logits is None else logits.clone()
        self.filled, self.position = state["filled"], state["position"]

    def to(self, device: torch.device) -> LogitQueue:
        if self.logits is not None:
            self.logits = self.logits.to(device)
        return self
