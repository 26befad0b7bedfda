"""One full training step: two augmented views, a 20-step SGLD chain from the replay buffer, the
GEDI loss on views and samples, backward and Adam, for the MLP on moons and the small CNN on 32x32 images.

ours: GEDITrainer.train_step as it ships, with the trainer's defaults (fused buffer_draw and
sgld_step_, on CUDA the chain replayed as a CUDA graph; GEDILoss backend "auto": the Triton kernels
on CUDA, the reference on CPU). eager: the same trainer (same defaults, TF32 included) with the
plain-torch sampler of benchmarks/reference_sampler.py and GEDILoss(backend="torch"). compile: eager
with the model, the loss and the plain-torch draw and update under torch.compile. The step is
compute-bound (the model's forward and backward), so no ideal bytes or bandwidth are given.
"""
from __future__ import annotations

import pathlib
import tempfile

import pytest
import torch

from benchmarks.harness import DEVICE, Case, params
from benchmarks.reference_sampler import ReferenceSampler
from benchmarks.sizes import train_steps
from gedi_fast import GEDILoss
from gedi_fast.train.data import Dataset, load_dataset
from gedi_fast.train.trainer import GEDITrainer, TrainConfig

IMAGE_CLASSES = 10
IMAGE_SAMPLES = 2048
OUT = pathlib.Path(tempfile.gettempdir(), "gedi_fast_bench")  # never written: a step does not checkpoint


def dataset(model: str) -> Dataset:
    """Moons for the MLP; random 3x32x32 images in [-1, 1] with the image loaders' views for the CNN
    (the step's cost does not depend on the pixels)."""
    if model == "mlp":
        return load_dataset("moons")
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(IMAGE_SAMPLES, 3, 32, 32, generator=generator) * 2 - 1
    y = torch.randint(0, IMAGE_CLASSES, (IMAGE_SAMPLES,), generator=generator)
    return Dataset("images32", "image", x, y, x[:256], y[:256], IMAGE_CLASSES, augmentation="image", view_noise=0.02)


def cases() -> list[Case]:
    return [Case("train_step", label, (step.batch, *step.input_shape)) for label, step in train_steps().items()]


def build(case: Case, impl: str):
    step = train_steps()[case.size]
    data = dataset(step.model)
    config = TrainConfig(dataset=data.name, batch_size=step.batch, sgld_samples=step.samples, device=DEVICE)
    trainer = GEDITrainer(config, OUT, data)
    if impl != "ours":
        loss_fn = GEDILoss(config.temperature, config.gen_weight, config.inv_weight, config.prior_weight,
                           config.assignment, energy_reg=config.energy_reg, backend="torch")
        trainer.sampler = ReferenceSampler(trainer.sampler, compiled=impl == "compile")
        trainer.loss_fn = torch.compile(loss_fn, dynamic=False) if impl == "compile" else loss_fn
        if impl == "compile":
            trainer.model = torch.compile(trainer.model, dynamic=False)
    return trainer.train_step


@pytest.mark.parametrize(("case", "impl"), params(cases()))
def test_train_step(bench, case, impl):
    bench(case, impl, build)
