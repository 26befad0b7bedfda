"""The persistent SGLD sampler: lowers energy, reproducible, restores state, leaves the model as found."""
from __future__ import annotations

import pytest
import torch

from gedi_fast import SGLDConfig, SGLDSampler
from gedi_fast.models import MLPClusterer

CENTRES = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])


class Mixture(torch.nn.Module):
    """Logits whose energy is a two-Gaussian mixture (minimum energy at the centres)."""

    def forward(self, x):
        return -0.5 * torch.cdist(x, CENTRES).square()


def test_samples_move_to_low_energy():
    sampler = SGLDSampler((2,), SGLDConfig(steps=100, step_size=0.05, noise_std=0.01, buffer_size=500,
                                           init_low=-4, init_high=4), seed=1)
    model = Mixture()
    before = sampler.energy(model, sampler.buffer[:256]).mean()
    x = sampler.sample(model, 256)
    assert x.shape == (256, 2) and not x.requires_grad
    assert sampler.energy(model, x).mean() < before - 1.0
    assert (torch.cdist(x, CENTRES).min(1).values < 0.5).float().mean() > 0.9


def test_reproducible_and_resumable():
    model = MLPClusterer(2, 3, hidden=16)
    config = SGLDConfig(steps=5, buffer_size=64)
    a, b = SGLDSampler((2,), config, seed=7), SGLDSampler((2,), config, seed=7)
    assert torch.equal(a.sample(model, 16), b.sample(model, 16))
    state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in a.state_dict().items()}
    expected = a.sample(model, 16)
    resumed = SGLDSampler((2,), config, seed=0)
    resumed.load_state_dict(state)
    assert torch.equal(resumed.sample(model, 16), expected)
    assert not torch.equal(SGLDSampler((2,), config, seed=8).sample(model, 16), b.sample(model, 16))


def test_buffer_is_written_back_and_model_mode_restored():
    model = MLPClusterer(2, 3, hidden=16).train()
    sampler = SGLDSampler((2,), SGLDConfig(steps=2, buffer_size=8, reinit_prob=0.0), seed=2)
    before = sampler.buffer.clone()
    sampler.sample(model, 8)
    assert model.training and not torch.equal(sampler.buffer, before)
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(steps=-1), "steps must be >= 0"), (dict(buffer_size=0), "buffer_size must be >= 1"),
     (dict(reinit_prob=2.0), "reinit_prob must lie in"), (dict(init_low=1.0, init_high=0.0), "init_low must be below"),
     (dict(noise_std=-0.1), "noise_std must be >= 0")],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGLDConfig(**kwargs)
