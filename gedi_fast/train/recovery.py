"""Divergence recovery for GEDITrainer: spot a state that must not be kept, restore the last good one
with a reseeded replay buffer, and give up after too many rollbacks without progress.

Checks run only where the training loop reads values anyway (log and checkpoint steps), so they add
one host sync there and none elsewhere. Under DDP the checked values are global and the parameters
equal on every rank, so every rank takes the same decision.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from gedi_fast.train.trainer import GEDITrainer


def divergence(trainer: GEDITrainer, values: dict[str, torch.Tensor]) -> str | None:
    """Why the state after this step must not be kept, or None: a non-finite loss or parameter, or
    |energy| beyond config.max_energy (the data's and, with SGLD, the samples'). One host sync.

    The loss and energies are global under DDP; parameter finiteness, the one rank-local value, is
    all-reduced, so a fault on one rank rolls every rank back alike."""
    finite = torch.stack([p.detach().isfinite().all() for p in trainer.model.parameters()]).all().double()
    if trainer.world_size > 1:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    energies = ("energy_data", "energy_neg") if trainer.sampler is not None else ("energy_data",)
    loss, parameters_ok, *energy = torch.stack(
        [values["loss"].double(), finite, *(values[name].double() for name in energies)]).tolist()
    if not math.isfinite(loss):
        return f"non-finite loss {loss}"
    if not parameters_ok:
        return "non-finite parameters"
    max_energy = trainer.config.max_energy
    for name, value in zip(energies, energy):
        if not abs(value) <= max_energy:
            return f"{name} {value:.4g} beyond max_energy {max_energy:g}"
    return None


def snapshot(trainer: GEDITrainer) -> dict:
    """An in-memory copy of what a rollback restores (tensors cloned on their device: no host sync)."""
    return copy.deepcopy({
        "step": trainer.step,
        "model": trainer.model.state_dict(),
        "optimiser": trainer.optimiser.state_dict(),
        "sampler": None if trainer.sampler is None else trainer.sampler.state_dict(),
        "queue": None if trainer.loss_fn.queue is None else trainer.loss_fn.queue.state_dict(),
        "generator": trainer.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
    })


def roll_back(trainer: GEDITrainer, good: dict, reason: str, retry: int) -> None:
    """Restore the snapshot `good`, reseed the replay buffer, record and announce the rollback."""
    diverged_at = trainer.step
    trainer.model.load_state_dict(good["model"])
    # Optimiser.load_state_dict may keep the given tensors: hand it copies so `good` stays intact.
    trainer.optimiser.load_state_dict(copy.deepcopy(good["optimiser"]))
    trainer.generator.set_state(good["generator"])
    torch.set_rng_state(good["torch_rng"])
    trainer.step = good["step"]
    trainer.rollbacks += 1
    if trainer.loss_fn.queue is not None:  # the queue may hold logits of the steps that diverged
        trainer.loss_fn.queue.load_state_dict(good["queue"])
    if trainer.sampler is not None:
        trainer.sampler.load_state_dict(good["sampler"])
        trainer.sampler.reseed(trainer.sampler_seed())
    trainer.history.append({"step": trainer.step, "event": "rollback", "reason": reason, "retry": retry,
                            "diverged_at": diverged_at})
    if trainer.rank == 0:
        warnings.warn(f"step {diverged_at}: {reason}; rolled back to step {trainer.step} with a reseeded replay "
                      f"buffer (retry {retry} of {trainer.config.max_retries})", RuntimeWarning, stacklevel=4)


class Recovery:
    """The rollback state of one train() call: the last good snapshot and the retries since the run
    last got past the step that diverged."""

    def __init__(self, trainer: GEDITrainer) -> None:
        self.trainer = trainer
        self.good = snapshot(trainer)
        self.retries = 0
        self.diverged_at = trainer.step

    def rolled_back(self, values: dict[str, torch.Tensor]) -> bool:
        """Check the state after this step; a bad one is rolled back (True), a good one counts as
        progress once past the step that diverged. FloatingPointError after config.max_retries rollbacks."""
        trainer = self.trainer
        reason = divergence(trainer, values)
        if reason is None:
            if trainer.step > self.diverged_at:
                self.retries = 0
            return False
        self.retries += 1
        if self.retries > trainer.config.max_retries:
            raise FloatingPointError(
                f"training diverged at step {trainer.step} ({reason}) and did not recover after "
                f"{trainer.config.max_retries} rollbacks to step {self.good['step']} (max_retries); try a lower "
                f"lr or sgld_step_size, or a larger energy_reg")
        self.diverged_at = max(self.diverged_at, trainer.step)
        roll_back(trainer, self.good, reason, self.retries)
        return True

    def keep(self) -> None:
        """Take the current state as the last good one."""
        self.good = snapshot(self.trainer)
