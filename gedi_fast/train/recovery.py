"""Divergence recovery for a training loop: spot a state that must not be kept, go back to the last
good one with a reseeded replay buffer, and give up after too many rollbacks without progress.

Checks run only where the training loop reads values anyway (log and checkpoint steps), so they add
one host sync there and none elsewhere. Under DDP the checked values are global and the parameters
equal on every rank, so every rank takes the same decision.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from typing import Protocol

import torch
import torch.distributed as dist


class Recoverable(Protocol):
    """What Recovery needs of a trainer: its live state as one dict, and a way back to such a dict."""

    step: int

    def run_state(self) -> dict: ...

    def roll_back_to(self, state: dict, reason: str, retry: int) -> None: ...


def divergence(values: dict[str, torch.Tensor], parameters: Iterable[torch.Tensor], max_energy: float,
               world_size: int, sampled: bool) -> str | None:
    """Why the state after this step must not be kept, or None: a non-finite loss or parameter, or
    |energy| beyond max_energy (the data's and, when `sampled`, the SGLD samples'). One host sync.

    The loss and energies are global under DDP; parameter finiteness, the one rank-local value, is
    all-reduced, so a fault on one rank rolls every rank back alike."""
    finite = torch.stack([p.detach().isfinite().all() for p in parameters]).all().double()
    if world_size > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    energies = ("energy_data", "energy_neg") if sampled else ("energy_data",)
    loss, parameters_ok, *energy = torch.stack(
        [values["loss"].double(), finite, *(values[name].double() for name in energies)]).tolist()
    if not math.isfinite(loss):
        return f"non-finite loss {loss}"
    if not parameters_ok:
        return "non-finite parameters"
    for name, value in zip(energies, energy):
        if not abs(value) <= max_energy:
            return f"{name} {value:.4g} beyond max_energy {max_energy:g}"
    return None


class Recovery:
    """The rollback state of one training call: an in-memory copy of the last good run state (tensors
    cloned on their device: no host sync) and the retries since the run last got past the step that
    diverged."""

    def __init__(self, trainer: Recoverable, max_retries: int) -> None:
        self.trainer = trainer
        self.max_retries = max_retries
        self.good = copy.deepcopy(trainer.run_state())
        self.retries = 0
        self.diverged_at = trainer.step

    def rolled_back(self, reason: str | None) -> bool:
        """Given why the state after this step must not be kept (None: it may), roll a bad one back
        (True); a good one counts as progress once past the step that diverged. FloatingPointError
        after max_retries rollbacks."""
        trainer = self.trainer
        if reason is None:
            if trainer.step > self.diverged_at:
                self.retries = 0
            return False
        self.retries += 1
        if self.retries > self.max_retries:
            raise FloatingPointError(
                f"training diverged at step {trainer.step} ({reason}) and did not recover after "
                f"{self.max_retries} rollbacks to step {self.good['step']} (max_retries); try a lower "
                f"lr or sgld_step_size, or a larger energy_reg")
        self.diverged_at = max(self.diverged_at, trainer.step)
        # A copy: restoring may keep the given tensors (Optimizer.load_state_dict does), and `good` must stay intact.
        trainer.roll_back_to(copy.deepcopy(self.good), reason, self.retries)
        return True

    def keep(self) -> None:
        """Take the current state as the last good one."""
        self.good = copy.deepcopy(self.trainer.run_state())
