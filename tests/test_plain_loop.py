"""The plain-loop baseline of benchmarks/test_bench_plain_loop.py is GEDI's step: its written-out loss
equals GEDILoss's (float64, odd K, B = 1, large logits, with and without samples), and it trains the
trainer's network on the trainer's settings."""
from __future__ import annotations

import pytest
import torch

from benchmarks.plain_loop import PlainLoop, plain_gedi_loss
from gedi_fast import GEDILoss
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


def test_plain_loop_refuses_what_it_does_not_write_out():
    with pytest.raises(ValueError, match="softmax targets on image data"):
        PlainLoop(tiny_images(), TrainConfig(**SMALL, assignment="sinkhorn"))
