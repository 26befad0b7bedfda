"""Divergence recovery: a fault injected into training (a NaN loss, exploding weights) rolls back to
the last good state with a reseeded replay buffer and the run carries on; a persistent fault stops it
after max_retries rollbacks, and no checkpoint ever holds a diverged state."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from gedi_fast.train import checkpoint
from gedi_fast.train.plots import plot_run
from gedi_fast.train.seeds import RESEED_STRIDE
from gedi_fast.train.trainer import CHECKPOINT_NAME, GEDITrainer, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(steps=20, batch_size=32, hidden=32, sgld=dict(steps=2, buffer_size=100), log_every=5, checkpoint_every=10)


def inject(trainer: GEDITrainer, fault, at_steps) -> list[int]:
    """Run fault(trainer) right after the training step that reaches each of `at_steps`, the first time
    only unless a step is listed again by a persistent fault; returns the steps where it fired."""
    fired: list[int] = []
    step = trainer.train_step

    def faulty_step():
        values = step()
        if trainer.step in at_steps and (trainer.step not in fired or at_steps is ALWAYS):
            fired.append(trainer.step)
            fault(trainer, values)
        return values

    trainer.train_step = faulty_step
    return fired


class Always:
    """Every step from `start` on."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __contains__(self, step: int) -> bool:
        return step >= self.start


ALWAYS = Always(7)


def nan_loss(trainer, values):
    """What a NaN loss does: its NaN gradients reach the weights through the optimiser."""
    values["loss"] = values["loss"] * math.nan
    with torch.no_grad():
        next(trainer.model.parameters()).mul_(math.nan)


def exploding_head(trainer, values):
    with torch.no_grad():
        trainer.model.head.weight.mul_(1e6)


def finite(trainer) -> bool:
    return all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_nan_loss_rolls_back_reseeds_and_recovers(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL), tmp_path)
    inject(trainer, nan_loss, {7})
    with pytest.warns(RuntimeWarning, match=r"step 10: non-finite loss nan; rolled back to step 5 .*retry 1 of 3"):
        trainer.train()
    assert trainer.step == 20 and finite(trainer)
    events = [h for h in trainer.history if "event" in h]
    assert events == [{"step": 5, "event": "rollback", "reason": "non-finite loss nan", "retry": 1, "diverged_at": 10}]
    assert [h["step"] for h in trainer.history if "event" not in h] == [5, 10, 15, 20]
    assert all(math.isfinite(h["loss"]) for h in trainer.history if "event" not in h)
    assert trainer.rollbacks == 1 and trainer.sampler.seed == RESEED_STRIDE % 2**63  # seed 0 + one reseed
    saved = checkpoint.load(tmp_path / CHECKPOINT_NAME)
    assert saved["step"] == 20 and saved["rollbacks"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    assert "terms.png" in [p.name for p in plot_run(trainer)]  # the plots skip event records


def test_exploding_energies_roll_back(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL), tmp_path)
    inject(trainer, exploding_head, {12})
    with pytest.warns(RuntimeWarning, match="beyond max_energy 10000; rolled back to step 10"):
        trainer.train()
    (event,) = [h for h in trainer.history if "event" in h]
    assert event["diverged_at"] == 15 and event["reason"].startswith("energy_data")
    assert trainer.step == 20 and finite(trainer) and abs(trainer.history[-1]["energy_data"]) < 1e4


def test_a_persistent_fault_stops_after_max_retries_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL | dict(checkpoint_every=5, max_retries=2)), tmp_path)
    inject(trainer, nan_loss, ALWAYS)
    with pytest.warns(RuntimeWarning), pytest.raises(FloatingPointError,
                                                     match="diverged at step 10 .* after 2 rollbacks to step 5"):
        trainer.train()
    assert [h["retry"] for h in trainer.history if "event" in h] == [1, 2]
    saved = checkpoint.load(tmp_path / CHECKPOINT_NAME)
    assert saved["step"] == 5 and all(torch.isfinite(v).all() for v in saved["model"].values())


def test_energy_threshold_and_zero_retries(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL | dict(max_energy=1e-3, max_retries=0)), tmp_path)
    with pytest.raises(FloatingPointError, match=r"diverged at step 5 \(energy_data .* beyond max_energy 0.001\)"):
        trainer.train()
    assert trainer.step == 5 and not (tmp_path / CHECKPOINT_NAME).exists()


def test_resume_after_a_rollback_continues_exactly(tmp_path):
    straight = GEDITrainer(TrainConfig(**SMALL), tmp_path / "a")
    inject(straight, nan_loss, {7})
    broken = GEDITrainer(TrainConfig(**SMALL), tmp_path / "b")
    inject(broken, nan_loss, {7})
    with pytest.warns(RuntimeWarning):
        straight.train()
        broken.train(until=10)  # diverges at 10, rolls back to 5, passes 10 and saves there
    resumed = GEDITrainer.resume(tmp_path / "b")
    assert (resumed.step, resumed.rollbacks) == (10, 1)
    resumed.train()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(straight.sampler.buffer, resumed.sampler.buffer)


def same_state(a, b) -> bool:
    """Nested dicts, lists and tensors equal value for value."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_state(x, y) for x, y in zip(a, b))
    return a == b


def test_one_list_of_the_run_state_serves_rollback_and_checkpoint(tmp_path):
    """run_state() is the one list: load_run_state() brings a run back to it exactly (queue included),
    and a checkpoint holds every part of it (the sampler's and queue's per rank)."""
    trainer = GEDITrainer(TrainConfig(**SMALL, queue_size=64), tmp_path)
    trainer.train(until=5)
    kept = copy.deepcopy(trainer.run_state())
    assert set(kept) == {"step", "model", "optimiser", "sampler", "queue", "generator", "torch_rng"}
    trainer.train(until=10)
    assert not same_state(trainer.run_state(), kept)
    trainer.load_run_state(copy.deepcopy(kept))
    assert same_state(trainer.run_state(), kept)

    saved = trainer.state_dict()
    live = trainer.run_state()
    sampler, queue = live.pop("sampler"), live.pop("queue")
    assert same_state({k: saved[k] for k in live}, live)
    assert same_state(saved["samplers"], [sampler]) and same_state(saved["queues"], [queue])
