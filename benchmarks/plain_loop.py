"""The training step as a user would write it without gedi_fast: plain eager fp32 PyTorch, JEM-style.

Two augmented views, the replay-buffer draw and the SGLD chain by autograd (benchmarks/reference_sampler.py)
once gen_delay steps have passed, its fresh chains from uniform noise as JEM starts them (a fitted or
darkened start, sgld_start and sgld_darken, is a few more operations on 5% of the rows that only the
trainer does), the batch's own images for gen and E^2 under gen_positives "data", the
GEDI terms written out with torch ops, backward and Adam, on the trainer's network, settings and
views, in fp32 and torch's default (contiguous) layout. benchmarks/test_bench_plain_loop.py races it
against GEDITrainer.train_step; tests/test_plain_loop.py checks that its loss is GEDI's.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from benchmarks.reference_sampler import ReferenceSampler
from gedi_fast import SGLDSampler
from gedi_fast.train.augment import affine_images, augment_images
from gedi_fast.train.data import Dataset
from gedi_fast.train.models import build_model
from gedi_fast.train.trainer import TrainConfig

AUGMENTATIONS = {"affine": affine_images, "image": augment_images}


def plain_gedi_loss(z1: torch.Tensor, z2: torch.Tensor, zn: torch.Tensor | None, temperature: float,
                    gen_weight: float, inv_weight: float, prior_weight: float, energy_reg: float,
                    zp: torch.Tensor | None = None) -> torch.Tensor:
    """GEDI's weighted loss (softmax targets) in the torch ops a user would write from its formulas; gen
    and E^2 read zp as data where given (gen_positives "data"), else the views."""
    s1, s2 = z1 / temperature, z2 / temperature
    energy_views = -torch.logsumexp(torch.cat([s1, s2]) if zp is None else zp / temperature, dim=1)
    log_q1, log_q2 = s1.log_softmax(dim=1), s2.log_softmax(dim=1)
    q1, q2 = log_q1.exp(), log_q2.exp()
    inv = -((q2 * log_q1).sum(dim=1) + (q1 * log_q2).sum(dim=1)).mean() / 2
    mean_q = torch.cat([q1, q2]).mean(dim=0)
    prior = -mean_q.log().mean() - math.log(z1.shape[1])  # KL(uniform || mean_q)
    loss = inv_weight * inv + prior_weight * prior + energy_reg * energy_views.pow(2).mean()
    if zn is not None:
        energy_samples = -torch.logsumexp(zn / temperature, dim=1)
        loss = loss + gen_weight * (energy_views.mean() - energy_samples.mean())
        loss = loss + energy_reg * energy_samples.pow(2).mean()
    return loss


class PlainLoop:
    """config's training step (image data, softmax targets) in plain eager fp32 PyTorch; `step()` runs one."""

    def __init__(self, dataset: Dataset, config: TrainConfig) -> None:
        if config.assignment != "softmax" or dataset.kind != "image":
            raise ValueError("the plain loop writes out softmax targets on image data only")
        torch.manual_seed(config.seed)
        self.config = config
        self.model = build_model(dataset.input_shape, dataset.num_classes, config.hidden, config.width,
                                 config.stem_stride)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.train_x = dataset.train_x
        augment = AUGMENTATIONS[config.augmentation or dataset.augmentation]
        noise = dataset.view_noise if config.view_noise is None else config.view_noise
        self.augment = lambda x, strength=1.0: augment(x, None, noise=noise, strength=strength)
        self.steps = 0
        self.sampler = None
        if config.gen_weight != 0 or config.energy_reg != 0:
            sgld = dataclasses.replace(config.sgld_config(dataset.sgld), start="uniform", darken=0.0)
            like = SGLDSampler(dataset.input_shape, sgld, config.temperature, config.seed)
            self.sampler = ReferenceSampler(like)

    def step(self) -> torch.Tensor:
        config = self.config
        x = self.train_x[torch.randint(0, len(self.train_x), (config.batch_size,))]
        view1, view2 = self.augment(x), self.augment(x)
        chain = self.sampler is not None and self.steps >= config.gen_delay
        samples = [self.sampler.sample(self.model, config.sgld_samples)] if chain else []
        positives = [self.augment(x, 0.0)] if self.sampler is not None and config.gen_positives == "data" else []
        self.model.train()
        logits = self.model(torch.cat([view1, view2, *samples, *positives]))
        rows, drawn = config.batch_size, len(samples[0]) if samples else 0
        loss = plain_gedi_loss(logits[:rows], logits[rows:2 * rows],
                               logits[2 * rows:2 * rows + drawn] if samples else None, config.temperature,
                               config.gen_weight, config.inv_weight, config.prior_weight, config.energy_reg,
                               logits[2 * rows + drawn:] if positives else None)
        self.optimiser.zero_grad()
        loss.backward()
        self.optimiser.step()
        self.steps += 1
        return loss.detach()
