"""The SGLD ops in plain torch and numpy: the update and the replay-buffer draw, on the Philox streams of
gedi_fast.rng (the numbers the C++ and CUDA kernels draw)."""
from __future__ import annotations

import numpy as np
import torch

from gedi_fast.rng import ROW_STREAM_BIT, element_words, philox_words, unit_uniform


def sgld_step(
    x: torch.Tensor,
    grad: torch.Tensor,
    step_size: float,
    noise_std: float,
    noise: torch.Tensor,
    clamp: tuple[float, float] | None = None,
    grad_clamp: float | None = None,
) -> torch.Tensor:
    """clamp(x - step_size * clamp(grad, -grad_clamp, grad_clamp) + noise_std * noise) in float32 (float64
    for float64 x), returned in x's dtype (not in place)."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    g = grad.to(compute)
    if grad_clamp is not None:
        g = g.clamp(-grad_clamp, grad_clamp)
    v = x.to(compute) - step_size * g
    v = v + noise_std * noise.to(compute)
    if clamp is not None:
        v = v.clamp(clamp[0], clamp[1])
    return v.to(x.dtype)


def buffer_draw(
    buffer: torch.Tensor,
    indices: torch.Tensor,
    reinit_prob: float,
    low: float,
    high: float,
    seed: int,
    offset: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows buffer[indices], each replaced with probability reinit_prob by U[low, high) noise.

    Row r is re-initialised when the uniform from word r % 4 of row-stream group r // 4 is below
    reinit_prob; its element e (flat index in the output) then takes word e % 4 of group e // 4.
    """
    rows = indices.shape[0]
    row_groups = np.arange((rows + 3) // 4, dtype=np.uint64) | np.uint64(ROW_STREAM_BIT)
    row_u = unit_uniform(philox_words(row_groups, seed, offset).reshape(-1)[:rows])
    reinit = torch.from_numpy(row_u < np.float32(reinit_prob))
    out = buffer[indices.cpu()].clone()
    u = unit_uniform(element_words(out.numel(), seed, offset))
    lo, hi = np.float32(low), np.float32(high)
    noise = lo + (hi - lo) * u
    noise = np.where(noise < hi, noise, lo)
    fresh = torch.from_numpy(noise).reshape(out.shape).to(out.dtype)
    out[reinit] = fresh[reinit]
    return out, reinit


def fit_gaussian_start(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, factor) of the Gaussian fitted to data's rows, in float64: factor @ factor.T is their
    covariance (the symmetric square root's eigenvector form, exact for a singular covariance).

    Informative chain starts: fresh chains that begin with the data's mean and pixel correlations
    instead of uniform noise (JEM++'s start, fitted here without labels)."""
    rows = data.reshape(data.shape[0], -1).to(torch.float64)
    mean = rows.mean(0)
    centred = rows - mean
    covariance = centred.T @ centred / max(rows.shape[0] - 1, 1)
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    return mean, vectors * eigenvalues.clamp_min(0).sqrt()


def gaussian_from_uniform(u: torch.Tensor, low: float, high: float, mean: torch.Tensor,
                          factor: torch.Tensor) -> torch.Tensor:
    """Rows of N(mean, factor factor^T) made from rows of U[low, high) noise, clamped to [low, high].

    Each uniform becomes a standard normal by the inverse CDF, z = sqrt(2) erfinv(2p - 1) with
    p = (u - low) / (high - low) kept within [2^-24, 1 - 2^-24] (so |z| < 5.4), and a row is
    mean + factor z. In float32 (float64 for float64 u), returned in u's dtype.
    """
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    flat = u.reshape(u.shape[0], -1).to(compute)
    p = ((flat - low) / (high - low)).clamp(2.0**-24, 1 - 2.0**-24)
    z = torch.erfinv(2 * p - 1) * 2**0.5
    rows = mean.to(compute) + z @ factor.to(compute).T
    return rows.clamp(low, high).reshape(u.shape).to(u.dtype)
