"""Python face of the fused SGLD ops (csrc/): argument checks, fake kernels, convenient signatures.

`sgld_step_` and `buffer_draw` draw their noise from Philox4x32-10 keyed by (seed, offset) and the
element index, so the CPU and CUDA kernels agree and every (seed, offset) pair is a separate stream.
`offset` may be a one-element int64 tensor on the data's device: the kernel then reads it at run
time, which is how a captured CUDA graph draws fresh noise on each replay (advance it in the graph).
"""
from __future__ import annotations

from numbers import Real

import torch

from gedi_fast import _extension  # noqa: F401  (registers torch.ops.gedi_fast)
from gedi_fast.validation import (
    SAMPLE_DTYPES,
    require_bool,
    require_disjoint,
    require_dtype,
    require_finite,
    require_fraction,
    require_int,
    require_no_overlap,
    require_real,
    require_same_device,
    require_tensor,
)

_UINT64 = 2**64


@torch.library.register_fake("gedi_fast::sgld_step_")
def _sgld_step_fake(x, grad, step_size, noise_std, seed, offset, device_offset=None, clamp_min=None, clamp_max=None):
    return None


@torch.library.register_fake("gedi_fast::buffer_draw")
def _buffer_draw_fake(buffer, indices, reinit_prob, low, high, seed, offset, device_offset=None):
    samples = buffer.new_empty((indices.shape[0], *buffer.shape[1:]))
    return samples, indices.new_empty(indices.shape, dtype=torch.bool)


def _as_int64(value: int) -> int:
    """A uint64 key word in the schema's signed int64."""
    return value - _UINT64 if value >= 2**63 else value


def _counter_args(seed: object, offset: object, data: torch.Tensor, data_name: str) -> tuple[int, int, torch.Tensor | None]:
    seed = require_int(seed, "seed", minimum=0, maximum=_UINT64 - 1)
    if isinstance(offset, torch.Tensor):
        if offset.dtype != torch.int64 or offset.numel() != 1:
            raise ValueError(f"offset tensor must be a one-element int64 tensor, got {offset.dtype} with {offset.numel()} elements")
        require_same_device(offset, "offset", data, data_name)
        return _as_int64(seed), 0, offset.reshape(())
    offset = require_int(offset, "offset", minimum=0, maximum=_UINT64 - 1)
    return _as_int64(seed), _as_int64(offset), None


def _clamp_bounds(clamp: object) -> tuple[float | None, float | None]:
    if clamp is None:
        return None, None
    if isinstance(clamp, Real):
        bound = require_real(clamp, "clamp", positive=True)
        return -bound, bound
    if isinstance(clamp, (tuple, list)) and len(clamp) == 2:
        lo = require_real(clamp[0], "clamp[0]")
        hi = require_real(clamp[1], "clamp[1]")
        if lo >= hi:
            raise ValueError(f"clamp must be (low, high) with low < high, got {tuple(clamp)}")
        return lo, hi
    raise ValueError(f"clamp must be None, a positive number c (meaning [-c, c]) or a (low, high) pair, got {clamp!r}")


def sgld_step_(
    x: torch.Tensor,
    grad: torch.Tensor,
    step_size: float,
    noise_std: float,
    seed: int = 0,
    offset: int | torch.Tensor = 0,
    clamp: float | tuple[float, float] | None = None,
    check_finite: bool = False,
) -> torch.Tensor:
    """In place: x <- clamp(x - step_size * grad + noise_std * xi), xi ~ N(0, 1) from (seed, offset).

    One pass over memory, math in float32 for float32/float16/bfloat16 x. Runs without autograd
    (like an optimiser step), so x may be a leaf that requires grad. Returns x. Non-contiguous x and
    grad are fine (x is updated through its view); an expanded x is refused (its elements share memory).
    NaN and inf propagate (clamping keeps NaN); check_finite=True raises on them instead (a host sync).
    """
    x = require_tensor(x, "x")
    grad = require_tensor(grad, "grad")
    require_dtype(x, "x", SAMPLE_DTYPES)
    if grad.dtype != x.dtype:
        raise TypeError(f"grad must have x's dtype {x.dtype}, got {grad.dtype}")
    if grad.shape != x.shape:
        raise ValueError(f"grad must have x's shape {tuple(x.shape)}, got {tuple(grad.shape)}")
    require_same_device(grad, "grad", x, "x")
    require_no_overlap(x, "x")
    require_disjoint(grad, "grad", x, "x")
    if require_bool(check_finite, "check_finite"):
        require_finite(x, "x")
        require_finite(grad, "grad")
    step_size = require_real(step_size, "step_size")
    noise_std = require_real(noise_std, "noise_std", non_negative=True)
    seed, offset, device_offset = _counter_args(seed, offset, x, "x")
    clamp_min, clamp_max = _clamp_bounds(clamp)
    with torch.no_grad():
        target = x if x.is_contiguous() else x.contiguous()
        torch.ops.gedi_fast.sgld_step_(
            target, grad.contiguous(), step_size, noise_std, seed, offset, device_offset, clamp_min, clamp_max
        )
        if target is not x:
            x.copy_(target)
    return x


class SGLDChainStep:
    """sgld_step_ for a loop that checked its arguments once: the sampler's chain.

    The first call goes through sgld_step_'s checks; later calls go straight to the op with the
    arguments resolved then, which saves ~30 us of Python per step on the CPU (the MLP chain's
    steps take about as long as that on their own).
    """

    def __init__(self, step_size: float, noise_std: float, seed: int, clamp: object = None) -> None:
        self.step_size = require_real(step_size, "step_size")
        self.noise_std = require_real(noise_std, "noise_std", non_negative=True)
        self.seed = require_int(seed, "seed", minimum=0, maximum=_UINT64 - 1)
        self.clamp_min, self.clamp_max = _clamp_bounds(clamp)
        self.checked = False

    def __call__(self, x: torch.Tensor, grad: torch.Tensor, offset: torch.Tensor) -> None:
        """x (contiguous, as buffer_draw returns it) stepped with noise from the one-element int64 `offset`."""
        if not self.checked:
            clamp = None if self.clamp_min is None else (self.clamp_min, self.clamp_max)
            sgld_step_(x, grad, self.step_size, self.noise_std, seed=self.seed, offset=offset, clamp=clamp)
            self.checked = x.is_contiguous()
            return
        with torch.no_grad():
            torch.ops.gedi_fast.sgld_step_(x, grad.contiguous(), self.step_size, self.noise_std, _as_int64(self.seed), 0,
                                           offset.reshape(()), self.clamp_min, self.clamp_max)


def buffer_draw(
    buffer: torch.Tensor,
    indices: torch.Tensor,
    reinit_prob: float = 0.05,
    low: float = -1.0,
    high: float = 1.0,
    seed: int = 0,
    offset: int | torch.Tensor = 0,
    check_finite: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """JEM's replay-buffer draw in one pass: (rows buffer[indices], bool mask of re-initialised rows).

    Each drawn row is replaced, with probability reinit_prob, by uniform noise in [low, high).
    Indices must lie in [0, len(buffer)); on CUDA an out-of-range index is a device-side assert.
    Rows are copied as they are, NaN and inf included; check_finite=True raises on a non-finite
    buffer instead (a host sync).
    """
    buffer = require_tensor(buffer, "buffer")
    indices = require_tensor(indices, "indices")
    require_dtype(buffer, "buffer", SAMPLE_DTYPES)
    if buffer.dim() < 1 or buffer.numel() == 0:
        raise ValueError(f"buffer must have at least one non-empty row, got shape {tuple(buffer.shape)}")
    if indices.dtype != torch.int64 or indices.dim() != 1:
        raise TypeError(f"indices must be a 1-D int64 tensor, got {indices.dtype} of shape {tuple(indices.shape)}")
    require_same_device(indices, "indices", buffer, "buffer")
    if require_bool(check_finite, "check_finite"):
        require_finite(buffer, "buffer")
    reinit_prob = require_fraction(reinit_prob, "reinit_prob")
    low, high = require_real(low, "low"), require_real(high, "high")
    if low >= high:
        raise ValueError(f"low must be below high, got low={low}, high={high}")
    seed, offset, device_offset = _counter_args(seed, offset, buffer, "buffer")
    return torch.ops.gedi_fast.buffer_draw(
        buffer.contiguous(), indices.contiguous(), reinit_prob, low, high, seed, offset, device_offset
    )
