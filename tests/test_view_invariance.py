"""The start-of-run view measurement (gedi_fast.experiments.view_invariance) on features whose answer is known."""
from __future__ import annotations

import math

import pytest
import torch

from gedi_fast.experiments.view_invariance import invariance_ratio, view_scores
from gedi_fast.train.trainer import GEDITrainer, TrainConfig


def test_invariance_ratio_is_one_plus_twice_the_image_over_the_view_variance():
    generator = torch.Generator().manual_seed(4)
    images = 3.0 * torch.randn(20000, 7, generator=generator, dtype=torch.float64)  # variance 9 between images
    views = [images + 0.5 * torch.randn(images.shape, generator=generator, dtype=torch.float64) for _ in range(2)]
    assert invariance_ratio(*views) == pytest.approx(1 + 2 * 9 / 0.25, rel=0.03)
    unrelated = torch.randn(20000, 7, generator=generator, dtype=torch.float64)
    assert invariance_ratio(unrelated, torch.randn(20000, 7, generator=generator, dtype=torch.float64)) == pytest.approx(1, rel=0.03)
    assert math.isinf(invariance_ratio(images, images))


def test_view_scores_see_the_views_drift_apart_as_the_strength_grows(tmp_path):
    config = TrainConfig.from_settings(dataset="moons", augmentation="rotation", view_noise=0.0, hidden=16, steps=1,
                                       tensorboard=False)
    trainer = GEDITrainer(config, tmp_path)
    none = view_scores(trainer, 0.0, rows=300)
    assert math.isinf(none["ratio"]) and none["same_cluster"] == 1.0  # strength 0, no noise: one view twice
    half, full = view_scores(trainer, 0.5, rows=300), view_scores(trainer, 1.0, rows=300)
    assert math.isfinite(half["ratio"]) and full["ratio"] < half["ratio"]
    assert full["same_cluster"] < 1.0
