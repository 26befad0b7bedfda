"""The plain-torch path the fused SGLD ops are measured against: JEM's replay-buffer draw and SGLD
update written with torch ops, and a sampler on them that stands in for gedi_fast.SGLDSampler in the
reference training step (same config, same interface, the same work per call)."""
from __future__ import annotations

import torch
from torch import nn

from gedi_fast import SGLDSampler


def plain_sgld_step_(
    x: torch.Tensor, grad: torch.Tensor, step_size: float, noise_std: float,
    clamp: tuple[float, float] | None = None,
) -> torch.Tensor:
    """In place: x <- clamp(x - step_size * grad + noise_std * randn), in the fewest torch ops."""
    x.add_(grad, alpha=-step_size).add_(torch.randn_like(x), alpha=noise_std)
    return x if clamp is None else x.clamp_(clamp[0], clamp[1])


def plain_buffer_draw(
    buffer: torch.Tensor, indices: torch.Tensor, reinit_prob: float, low: float, high: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """JEM's draw: rows buffer[indices], each replaced with probability reinit_prob by U(low, high) noise."""
    samples = buffer[indices]
    reinit = torch.rand(indices.shape[0], device=buffer.device) < reinit_prob
    fresh = torch.rand_like(samples) * (high - low) + low
    return torch.where(reinit.view(-1, *[1] * (samples.dim() - 1)), fresh, samples), reinit


class ReferenceSampler:
    """SGLDSampler's draw, chain (with its gradient clamp) and write-back on plain torch ops; compiled=True
    runs those under torch.compile."""

    def __init__(self, like: SGLDSampler, compiled: bool = False) -> None:
        self.config, self.temperature = like.config, like.temperature
        self.buffer = like.buffer.clone()
        self.generator = torch.Generator(device=self.buffer.device).manual_seed(like.seed)
        self.draw = torch.compile(plain_buffer_draw, dynamic=False) if compiled else plain_buffer_draw
        self.update = torch.compile(plain_sgld_step_, dynamic=False) if compiled else plain_sgld_step_

    def sample(self, model: nn.Module, batch_size: int) -> torch.Tensor:
        config = self.config
        indices = torch.randint(0, config.buffer_size, (batch_size,), generator=self.generator,
                                device=self.buffer.device)
        x, _ = self.draw(self.buffer, indices, config.reinit_prob, config.init_low, config.init_high)
        was_training = model.training
        model.eval()
        try:
            for _ in range(config.steps):
                x.requires_grad_(True)
                energy = -torch.logsumexp(model(x) / self.temperature, dim=1)
                (grad,) = torch.autograd.grad(energy.sum(), x)
                if config.grad_clamp is not None:
                    grad = grad.clamp(-config.grad_clamp, config.grad_clamp)
                x = self.update(x.detach(), grad, config.step_size, config.noise_std, config.clamp)
        finally:
            model.train(was_training)
        self.buffer[indices] = x
        return x
