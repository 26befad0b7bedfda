"""JEM's persistent SGLD sampler on top of the fused ops: buffer draw with re-init, N steps, write-back."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from gedi_fast.ops.sgld import buffer_draw, sgld_step_
from gedi_fast.validation import require_int, require_real


@dataclass(frozen=True)
class SGLDConfig:
    """JEM's defaults: 20 steps of size 1.0 with noise 0.01, a 10000-sample buffer, 5% fresh U(-1, 1)."""

    steps: int = 20
    step_size: float = 1.0
    noise_std: float = 0.01
    buffer_size: int = 10_000
    reinit_prob: float = 0.05
    init_low: float = -1.0
    init_high: float = 1.0
    clamp: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        require_int(self.steps, "steps", minimum=0)
        require_real(self.step_size, "step_size", non_negative=True)
        require_real(self.noise_std, "noise_std", non_negative=True)
        require_int(self.buffer_size, "buffer_size", minimum=1)
        if not 0 <= require_real(self.reinit_prob, "reinit_prob") <= 1:
            raise ValueError(f"reinit_prob must lie in [0, 1], got {self.reinit_prob}")
        if require_real(self.init_low, "init_low") >= require_real(self.init_high, "init_high"):
            raise ValueError(f"init_low must be below init_high, got [{self.init_low}, {self.init_high})")


class SGLDSampler:
    """Draws negatives from the model's energy E(x) = -logsumexp(model(x) / temperature).

    The replay buffer lives on the training device; every random number comes from (seed, number of
    calls so far), so a run is reproducible and a restored state continues the same stream.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        config: SGLDConfig = SGLDConfig(),
        temperature: float = 1.0,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.config = config
        self.temperature = require_real(temperature, "temperature", positive=True)
        self.seed = require_int(seed, "seed", minimum=0, maximum=2**63 - 1)
        self.calls = 0
        generator = torch.Generator(device=device).manual_seed(self.seed)
        shape = (config.buffer_size, *input_shape)
        low, high = config.init_low, config.init_high
        self.buffer = torch.rand(shape, generator=generator, device=device, dtype=dtype) * (high - low) + low
        self.generator = generator

    def energy(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return -torch.logsumexp(model(x) / self.temperature, dim=1)

    def sample(self, model: nn.Module, batch_size: int) -> torch.Tensor:
        """batch_size samples after config.steps SGLD steps, written back to the buffer; model left as found."""
        batch_size = require_int(batch_size, "batch_size", minimum=1)
        config = self.config
        offset = self.calls * (config.steps + 1)
        self.calls += 1
        indices = torch.randint(0, config.buffer_size, (batch_size,), generator=self.generator, device=self.buffer.device)
        x, _ = buffer_draw(self.buffer, indices, config.reinit_prob, config.init_low, config.init_high,
                           seed=self.seed, offset=offset)
        was_training = model.training
        model.eval()
        try:
            for step in range(config.steps):
                x.requires_grad_(True)
                (grad,) = torch.autograd.grad(self.energy(model, x).sum(), x)
                sgld_step_(x, grad, config.step_size, config.noise_std, seed=self.seed, offset=offset + 1 + step,
                           clamp=config.clamp)
        finally:
            model.train(was_training)
        x = x.detach()
        self.buffer[indices] = x
        return x

    def state_dict(self) -> dict:
        return {"buffer": self.buffer, "calls": self.calls, "seed": self.seed, "generator": self.generator.get_state(),
                "config": asdict(self.config), "temperature": self.temperature}

    def load_state_dict(self, state: dict) -> None:
        if tuple(state["buffer"].shape) != tuple(self.buffer.shape):
            raise ValueError(f"state buffer has shape {tuple(state['buffer'].shape)}, expected {tuple(self.buffer.shape)}")
        self.buffer.copy_(state["buffer"])
        self.calls, self.seed = int(state["calls"]), int(state["seed"])
        self.generator.set_state(state["generator"])
