"""The GEDI objective in plain torch: the formulas of DESIGN.md, written once.

This module is the test oracle every kernel is checked against and the CPU runtime path. It works
in float64 when given float64 and in float32 otherwise (fp16/bf16 inputs are upcast first), and it
stays finite for every finite input: log-probabilities come from logsumexp, the prior's batch mean is
taken in the log domain, and Sinkhorn-Knopp runs on log-scaled matrices.
"""
from __future__ import annotations

import math

import numpy as np
import torch

TERM_NAMES = ("gen", "inv", "prior", "energy_reg")
ASSIGNMENTS = ("softmax", "sinkhorn")


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; every other floating dtype is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def scaled_log_softmax(z: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q, logsumexp) of s = z / temperature, row-wise."""
    s = z.to(compute_dtype(z)) / temperature
    lse = torch.logsumexp(s, dim=-1)
    return s - lse.unsqueeze(-1), lse


def energy(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """JEM's energy E(x) = -logsumexp_k z_k(x) / temperature, one value per row."""
    return -torch.logsumexp(z.to(compute_dtype(z)) / temperature, dim=-1)


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """SwAV's balanced assignments (B x K, rows sum to 1), computed in the log domain.

    SwAV: Q = exp(scores / eps)^T; Q /= Q.sum(); then `iters` times: each cluster (row of Q) is
    divided by its sum and by K, each sample (column) by its sum and by B; finally Q *= B. Here each
    division is the subtraction of a logsumexp, so no entry overflows or turns into 0/0. The first
    Q /= Q.sum() cancels in the first per-cluster normalisation and is left out.
    """
    log_q = scores.detach().to(compute_dtype(scores)) / eps
    batch, clusters = log_q.shape
    for _ in range(iters):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(clusters)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(batch)
    return torch.exp(log_q + math.log(batch))


def gedi_terms(
    z1: torch.Tensor,
    z2: torch.Tensor,
    zn: torch.Tensor | None,
    temperature: float,
    assignment: str = "softmax",
    sinkhorn_eps: float = 0.05,
    sinkhorn_iters: int = 3,
) -> dict[str, torch.Tensor]:
    """The unweighted GEDI terms and detached diagnostics for views z1, z2 (B x K), samples zn (M x K).

    Returns 0-dim tensors: "gen", "inv", "prior", "energy_reg" (differentiable) and "energy_data",
    "energy_neg" (NaN without samples), "cluster_entropy" (detached).
    """
    log_q1, lse1 = scaled_log_softmax(z1, temperature)
    log_q2, lse2 = scaled_log_softmax(z2, temperature)
    energy_views = -torch.cat([lse1, lse2])
    if zn is None:
        gen = energy_views.new_zeros(())
        energy_reg = energy_views.square().mean()
        energy_neg = energy_views.new_full((), math.nan)
    else:
        energy_samples = energy(zn, temperature)
        gen = energy_views.mean() - energy_samples.mean()
        energy_reg = energy_views.square().mean() + energy_samples.square().mean()
        energy_neg = energy_samples.mean().detach()

    if assignment == "softmax":
        t1, t2 = log_q1.exp(), log_q2.exp()
    elif assignment == "sinkhorn":
        t1 = sinkhorn_knopp(z1, sinkhorn_eps, sinkhorn_iters).to(log_q1.dtype)
        t2 = sinkhorn_knopp(z2, sinkhorn_eps, sinkhorn_iters).to(log_q2.dtype)
    else:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
    batch, clusters = z1.shape
    inv = -((t2 * log_q1).sum() + (t1 * log_q2).sum()) / (2 * batch)

    log_pbar = torch.logsumexp(torch.cat([log_q1, log_q2]), dim=0) - math.log(2 * batch)
    prior = -math.log(clusters) - log_pbar.mean()
    cluster_entropy = -(log_pbar.exp() * log_pbar).sum()

    return {
        "gen": gen,
        "inv": inv,
        "prior": prior,
        "energy_reg": energy_reg,
        "energy_data": energy_views.mean().detach(),
        "energy_neg": energy_neg,
        "cluster_entropy": cluster_entropy.detach(),
    }


def weighted_loss(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """sum over TERM_NAMES of weights[name] * terms[name]."""
    return sum(weights[name] * terms[name] for name in TERM_NAMES)  # type: ignore[return-value]


# --- SGLD ---------------------------------------------------------------------------------------

def sgld_step(
    x: torch.Tensor,
    grad: torch.Tensor,
    step_size: float,
    noise_std: float,
    noise: torch.Tensor,
    clamp: tuple[float, float] | None = None,
) -> torch.Tensor:
    """clamp(x - step_size * grad + noise_std * noise) in float32, returned in x's dtype (not in place)."""
    v = x.float() - step_size * grad.float()
    v = v + noise_std * noise.float()
    if clamp is not None:
        v = v.clamp(clamp[0], clamp[1])
    return v.to(x.dtype)


# Philox4x32-10 (Salmon et al. 2011) and the counter layout of csrc/philox.h, in numpy.
_PHILOX_MUL = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_PHILOX_WEYL = (0x9E3779B9, 0xBB67AE85)
_LOW32 = np.uint64(0xFFFFFFFF)
ROW_STREAM_BIT = 1 << 63


def philox4x32_10(counters: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 of an (N, 4) uint32 counter array under a 2-word key; returns (N, 4) uint32."""
    c = [counters[:, j].astype(np.uint64) for j in range(4)]
    k0, k1 = key
    for _ in range(10):
        p0 = _PHILOX_MUL[0] * c[0]
        p1 = _PHILOX_MUL[1] * c[2]
        c = [
            (p1 >> np.uint64(32)) ^ c[1] ^ np.uint64(k0),
            p1 & _LOW32,
            (p0 >> np.uint64(32)) ^ c[3] ^ np.uint64(k1),
            p0 & _LOW32,
        ]
        k0 = (k0 + _PHILOX_WEYL[0]) & 0xFFFFFFFF
        k1 = (k1 + _PHILOX_WEYL[1]) & 0xFFFFFFFF
    return np.stack(c, axis=1).astype(np.uint32)


def philox_words(groups: np.ndarray, seed: int, offset: int) -> np.ndarray:
    """The four Philox words of each 64-bit counter group under (seed, offset), as (N, 4) uint32."""
    groups = groups.astype(np.uint64)
    seed, offset = seed % 2**64, offset % 2**64
    counters = np.stack(
        [
            groups & _LOW32,
            groups >> np.uint64(32),
            np.full_like(groups, offset & 0xFFFFFFFF),
            np.full_like(groups, offset >> 32),
        ],
        axis=1,
    ).astype(np.uint32)
    return philox4x32_10(counters, (seed & 0xFFFFFFFF, seed >> 32))


def element_words(numel: int, seed: int, offset: int) -> np.ndarray:
    """One 32-bit word per element: element e takes word e % 4 of group e // 4."""
    groups = np.arange((numel + 3) // 4, dtype=np.uint64)
    return philox_words(groups, seed, offset).reshape(-1)[:numel]


def philox_normal(numel: int, seed: int, offset: int) -> torch.Tensor:
    """The standard normals sgld_step_ draws for (seed, offset), by float64 Box-Muller."""
    words = element_words(4 * ((numel + 3) // 4), seed, offset).reshape(-1, 4)
    u_radius = ((words[:, 0::2] >> 8).astype(np.float64) + 1.0) * 2.0**-24
    u_angle = (words[:, 1::2] >> 8).astype(np.float64) * 2.0**-24
    radius = np.sqrt(-2.0 * np.log(u_radius))
    angle = 2.0 * np.pi * u_angle
    normals = np.stack(
        [radius[:, 0] * np.cos(angle[:, 0]), radius[:, 0] * np.sin(angle[:, 0]),
         radius[:, 1] * np.cos(angle[:, 1]), radius[:, 1] * np.sin(angle[:, 1])],
        axis=1,
    )
    return torch.from_numpy(normals.reshape(-1)[:numel].copy())


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
    row_u = _unit_uniform(philox_words(row_groups, seed, offset).reshape(-1)[:rows])
    reinit = torch.from_numpy(row_u < np.float32(reinit_prob))
    out = buffer[indices.cpu()].clone()
    u = _unit_uniform(element_words(out.numel(), seed, offset))
    lo, hi = np.float32(low), np.float32(high)
    noise = lo + (hi - lo) * u
    noise = np.where(noise < hi, noise, lo)
    fresh = torch.from_numpy(noise).reshape(out.shape).to(out.dtype)
    out[reinit] = fresh[reinit]
    return out, reinit


def _unit_uniform(words: np.ndarray) -> np.ndarray:
    """Uniform in [0, 1) on a 2^-24 grid, as float32."""
    return (words >> 8).astype(np.float32) * np.float32(2.0**-24)
