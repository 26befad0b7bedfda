"""Trainer: short runs, evaluation keys, atomic checkpoints, and resume equal to an unbroken run."""
from __future__ import annotations

import math

import pytest
import torch

from gedi_fast import checkpoint
from gedi_fast.augment import augment_images
from gedi_fast.trainer import CHECKPOINT_NAME, GEDITrainer, TrainConfig

SMALL = dict(steps=20, batch_size=32, hidden=32, sgld_steps=2, buffer_size=100, log_every=5, checkpoint_every=100)


def test_short_run_logs_terms_and_evaluates(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL), tmp_path)
    history = trainer.train()
    assert [h["step"] for h in history] == [5, 10, 15, 20]
    assert {"loss", "gen", "inv", "prior", "energy_reg", "energy_gap", "samples_per_s"} <= set(history[-1])
    scores = trainer.evaluate()
    assert scores["steps"] == 20 and 0 <= scores["nmi"] <= 1 and 0 <= scores["acc"] <= 1
    assert {"largest_cluster_share", "usage_entropy", "view_agreement", "feature_effective_rank"} <= set(scores)
    assert (tmp_path / CHECKPOINT_NAME).is_file()


def test_resume_gives_the_same_parameters_as_an_unbroken_run(tmp_path):
    straight = GEDITrainer(TrainConfig(**SMALL), tmp_path / "a")
    straight.train()
    broken = GEDITrainer(TrainConfig(**SMALL), tmp_path / "b")
    broken.train(until=9)
    broken.evaluate()  # evaluating mid-run must not change what training draws next
    broken.save()
    resumed = GEDITrainer.resume(tmp_path / "b")
    assert resumed.step == 9
    resumed.train()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(straight.sampler.buffer, resumed.sampler.buffer)


def test_training_without_generative_term_has_no_sampler(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL | dict(gen_weight=0.0, energy_reg=0.0, steps=5)), tmp_path)
    trainer.train()
    assert trainer.sampler is None and math.isnan(trainer.history[-1]["energy_gap"])


def test_checkpoints_are_atomic_and_corruption_is_detected(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save_atomic({"x": torch.arange(3)}, path)
    assert torch.equal(checkpoint.load(path)["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="unreadable or truncated"):
        checkpoint.load(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        checkpoint.load(tmp_path / "missing.pt")


def test_image_augmentations_are_reproducible_and_in_range():
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    a = augment_images(x, torch.Generator().manual_seed(0))
    b = augment_images(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, augment_images(x, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(steps=0), "steps must be >= 1"), (dict(lr=0.0), "lr must be > 0"), (dict(clusters=1), "clusters must be 0"),
     (dict(assignment="kmeans"), "assignment must be one of"), (dict(jitter=-1.0), "jitter must be >= 0")],
)
def test_bad_config_names_the_field(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**kwargs)
