"""The plain-loop baseline of benchmarks/test_bench_plain_loop.py is GEDI's step: its written-out loss
equals GEDILoss's (float64, odd K, B = 1, large logits, with and without samples), and it trains the
trainer's network on the trainer's settings."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from benchmarks.plain_loop import PlainLoop, plain_gedi_loss
from benchmarks.reference_sampler import ReferenceSampler
from gedi_fast import GEDILoss, SGLDConfig, SGLDSampler
from gedi_fast.train.presets import PRESETS
from gedi_fast.train.trainer import GEDITrainer, TrainConfig
from tests.test_fast_path import SMALL, tiny_images

WEIGHTS = dict(temperature=0.1, gen_weight=1.0, inv_weight=1.0, prior_weight=3.0, energy_reg=0.1)


@pytest.mark.parametrize(("batch", "clusters", "samples", "scale"), [(1, 7, 3, 1.0), (33, 13, None, 5.0),
                                                                      (16, 10, 8, 40.0)])
def test_plain_loss_and_gradients_equal_gedi_loss(batch, clusters, samples, scale):
    generator = torch.Generator().manual_seed(batch * clusters)
    make = lambda rows: (scale * torch.randn(rows, clusters, generator=generator, dtype=torch.float64)  # noqa: E731
                         ).requires_grad_(True)
    z1, z2 = make(batch), make(batch)
    zn = make(samples) if samples else None
    inputs = [t for t in (z1, z2, zn) if t is not None]
    reference = GEDILoss(**WEIGHTS, backend="torch")(z1, z2, zn)
    plain = plain_gedi_loss(z1, z2, zn, **WEIGHTS)
    torch.testing.assert_close(plain, reference, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(plain, inputs), torch.autograd.grad(reference, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("batch", "clusters", "samples", "scale"), [(1, 7, 3, 1.0), (33, 13, None, 5.0),
                                                                      (16, 10, 8, 40.0)])
def test_plain_loss_with_positives_equals_the_trainers_two_gedi_losses(batch, clusters, samples, scale):
    """gen_positives "data": clustering on the views, gen and E^2 on the positives (GEDITrainer.forward_loss)."""
    generator = torch.Generator().manual_seed(batch + clusters)
    make = lambda rows: (scale * torch.randn(rows, clusters, generator=generator, dtype=torch.float64)  # noqa: E731
                         ).requires_grad_(True)
    z1, z2, zp = make(batch), make(batch), make(batch)
    zn = make(samples) if samples else None
    inputs = [t for t in (z1, z2, zp, zn) if t is not None]
    clustering = GEDILoss(**WEIGHTS | dict(gen_weight=0.0, energy_reg=0.0), backend="torch")(z1, z2, None)
    generative = GEDILoss(**WEIGHTS | dict(inv_weight=0.0, prior_weight=0.0), backend="torch")(zp, zp, zn)
    plain = plain_gedi_loss(z1, z2, zn, **WEIGHTS, zp=zp)
    torch.testing.assert_close(plain, clustering + generative, rtol=1e-12, atol=1e-12)
    for a, b in zip(torch.autograd.grad(plain, inputs), torch.autograd.grad(clustering + generative, inputs)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("positives", ["views", "data"])
def test_plain_loop_starts_the_chain_after_gen_delay_and_forwards_the_positives(positives):
    """The training forward's rows per step: two views, then the samples once the chain runs, then the
    batch's own images under gen_positives "data"."""
    config = TrainConfig(**SMALL | dict(gen_delay=2, gen_positives=positives))
    loop = PlainLoop(tiny_images(), config)
    rows = []
    loop.model.register_forward_hook(lambda module, args, out: rows.append(len(args[0])) if module.training else None)
    for _ in range(3):
        assert torch.isfinite(loop.step())
    extra = config.batch_size if positives == "data" else 0
    views = 2 * config.batch_size + extra
    assert rows == [views, views, views + config.sgld_samples]


def test_plain_loop_trains_the_trainers_network_on_its_settings(tmp_path):
    config = TrainConfig(**SMALL)
    loop = PlainLoop(tiny_images(), config)
    trainer = GEDITrainer(config, tmp_path, tiny_images())
    assert [p.shape for p in loop.model.parameters()] == [p.shape for p in trainer.model.parameters()]
    assert loop.sampler.config == trainer.sampler.config and loop.sampler.temperature == trainer.sampler.temperature
    before = [p.detach().clone() for p in loop.model.parameters()]
    assert torch.isfinite(loop.step())
    assert all(not torch.equal(a, b) for a, b in zip(before, loop.model.parameters()))
    assert loop.sampler.buffer.dtype == torch.float32


def test_plain_loop_runs_the_cpu_images_preset():
    """The benchmark's baseline builds on the preset's settings (fitted, darkened chain starts included:
    the plain loop starts its chains from uniform noise) and keeps the preset's chain otherwise."""
    settings = PRESETS["cpu-images"] | dict(dataset="tiny-images", batch_size=6, width=8, sgld_samples=4,
                                            buffer_size=16)
    config, data = TrainConfig.from_settings(**settings), tiny_images()
    loop = PlainLoop(data, config)
    assert loop.sampler.config == dataclasses.replace(config.sgld_config(data.sgld), start="uniform", darken=0.0)
    assert torch.isfinite(loop.step())


def test_plain_loop_refuses_what_it_does_not_write_out():
    with pytest.raises(ValueError, match="softmax targets on image data"):
        PlainLoop(tiny_images(), TrainConfig(**SMALL, assignment="sinkhorn"))


def test_reference_chain_clamps_the_energy_gradient_as_the_sampler_does():
    """The plain loop's chain runs the preset's grad_clamp: each element moves by step_size * clamp(dE/dx)."""
    config = SGLDConfig(steps=1, step_size=0.5, noise_std=0.0, buffer_size=8, reinit_prob=0.0, grad_clamp=0.03)
    chain = ReferenceSampler(SGLDSampler((1, 3, 5), config, temperature=0.01, seed=3))
    generator = torch.Generator().manual_seed(5)
    start = torch.rand(1, 1, 3, 5, generator=generator) * 2 - 1
    chain.buffer.copy_(start.expand_as(chain.buffer))  # every draw starts here
    model = nn.Sequential(nn.Flatten(), nn.Linear(15, 7))
    x = start.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(-torch.logsumexp(model(x) / 0.01, dim=1).sum(), x)
    assert grad.abs().max() > 10 * config.grad_clamp  # the clamp binds
    moved = chain.sample(model, 5)
    torch.testing.assert_close(moved, (start - 0.5 * grad.clamp(-0.03, 0.03)).expand_as(moved))
