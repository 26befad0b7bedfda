"""The GEDI objective in plain torch: the formulas of docs/DESIGN.md, written once.

This module is the test oracle every kernel is checked against and the CPU runtime path. It works
in float64 when given float64 and in float32 otherwise (fp16/bf16 inputs are upcast first), and it
stays finite for every finite input: log-probabilities come from logsumexp, the prior's batch mean is
taken in the log domain, and Sinkhorn-Knopp runs on log-scaled matrices. Given `ranks`
(gedi_fast.distributed), the batch is every rank's rows together: the same formulas over sums that
are all-reduced across ranks.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from gedi_fast.distributed import Ranks

TERM_NAMES = ("gen", "inv", "prior", "energy_reg")
DIAGNOSTIC_NAMES = ("energy_data", "energy_neg", "cluster_entropy")
# The fused kernels return every value in one vector, in this order.
TERM_VECTOR = ("loss", *TERM_NAMES, *DIAGNOSTIC_NAMES)
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


def energy_grad(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """dE/dz = -softmax(z / temperature) / temperature, in z's dtype: SGLD's gradient at the logits in
    closed form (one softmax where autograd would replay logsumexp's half a dozen ops and their backward)."""
    scaled = z.detach().to(compute_dtype(z)) / temperature
    return torch.softmax(scaled, dim=-1).mul_(-1.0 / temperature).to(z.dtype)


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, eps: float = 0.05, iters: int = 3, ranks: Ranks | None = None) -> torch.Tensor:
    """SwAV's balanced assignments (B x K, rows sum to 1), computed in the log domain.

    SwAV: Q = exp(scores / eps)^T; Q /= Q.sum(); then `iters` times: each cluster (row of Q) is
    divided by its sum and by K, each sample (column) by its sum and by B; finally Q *= B. Here each
    division is the subtraction of a logsumexp, so no entry overflows or turns into 0/0. The first
    Q /= Q.sum() cancels in the first per-cluster normalisation and is left out. With `ranks`, as in
    SwAV's distributed_sinkhorn, the cluster sums run over all ranks' samples and B is the global
    batch; each rank returns the rows of its own samples.
    """
    log_q = scores.detach().to(compute_dtype(scores)) / eps
    batch, clusters = log_q.shape
    log_batch = math.log(batch) if ranks is None else ranks.sum(log_q.new_full((), batch)).log()
    for _ in range(iters):
        log_q = log_q - _cluster_logsumexp(log_q, ranks) - math.log(clusters)
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - log_batch
    return torch.exp(log_q + log_batch)


def _cluster_logsumexp(log_q: torch.Tensor, ranks: Ranks | None) -> torch.Tensor:
    """logsumexp over the samples (rows) of each cluster, of all ranks' samples given `ranks`."""
    local = torch.logsumexp(log_q, dim=0, keepdim=True)
    return local if ranks is None else ranks.logsumexp(local)


def gedi_statistics(
    z1: torch.Tensor,
    z2: torch.Tensor,
    zn: torch.Tensor | None,
    temperature: float,
    targets: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor | None]:
    """The per-row and per-cluster quantities every GEDI term is built from (the fused kernels save these).

    "lse1", "lse2" (B), "lse_n" (M, or None): row logsumexp of z / temperature;
    "cross1" = sum_k t2 log q1, "cross2" = sum_k t1 log q2 (B), with t = q when targets is None;
    "log_columns" (K): log of the column sums sum_i q_ik over the 2B view rows, taken in the log
    domain (2B pbar: the prior's batch mean before the division).
    """
    log_q1, lse1 = scaled_log_softmax(z1, temperature)
    log_q2, lse2 = scaled_log_softmax(z2, temperature)
    t1, t2 = (log_q1.exp(), log_q2.exp()) if targets is None else (t.to(log_q1.dtype) for t in targets)
    return {
        "lse1": lse1,
        "lse2": lse2,
        "lse_n": None if zn is None else -energy(zn, temperature),
        "cross1": (t2 * log_q1).sum(1),
        "cross2": (t1 * log_q2).sum(1),
        "log_columns": torch.logsumexp(torch.cat([log_q1, log_q2]), dim=0),
    }


def batch_sums(stats: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | int | None]:
    """The row counts and sums over rows that every term is a ratio of.

    Added up over ranks ("log_columns" by logsumexp) they give the terms of all ranks' rows at once.
    "views" = 2B and "samples" = M are counts; "lse_n", "lse_n_sq" are None without samples.
    """
    views = torch.cat([stats["lse1"], stats["lse2"]])
    lse_n = stats["lse_n"]
    return {
        "views": views.shape[0],
        "lse": views.sum(),
        "lse_sq": views.square().sum(),
        "cross": stats["cross1"].sum() + stats["cross2"].sum(),
        "samples": 0 if lse_n is None else lse_n.shape[0],
        "lse_n": None if lse_n is None else lse_n.sum(),
        "lse_n_sq": None if lse_n is None else lse_n.square().sum(),
        "log_columns": stats["log_columns"],
    }


def terms_from_sums(sums: dict[str, torch.Tensor | int | None]) -> dict[str, torch.Tensor]:
    """The unweighted terms and detached diagnostics of docs/DESIGN.md from batch_sums' output.

    Counts are ints on one process and tensors once all-reduced across ranks (never read back).
    """
    views = sums["views"]
    energy_data = -sums["lse"] / views
    energy_reg = sums["lse_sq"] / views
    if sums["lse_n"] is None:
        gen = energy_data.new_zeros(())
        energy_neg = energy_data.new_full((), math.nan)
    else:
        energy_neg = -sums["lse_n"] / sums["samples"]
        gen = energy_data - energy_neg
        energy_reg = energy_reg + sums["lse_n_sq"] / sums["samples"]
    log_columns = sums["log_columns"]
    log_pbar = log_columns - (views.log() if isinstance(views, torch.Tensor) else math.log(views))
    return {
        "gen": gen,
        "inv": -sums["cross"] / views,
        "prior": -math.log(log_pbar.shape[0]) - log_pbar.mean(),
        "energy_reg": energy_reg,
        "energy_data": energy_data.detach(),
        "energy_neg": energy_neg.detach(),
        "cluster_entropy": -(log_pbar.exp() * log_pbar).sum().detach(),
    }


def terms_from_statistics(stats: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
    """The unweighted terms and detached diagnostics of docs/DESIGN.md from gedi_statistics' output."""
    return terms_from_sums(batch_sums(stats))


def assignment_targets(
    z1: torch.Tensor, z2: torch.Tensor, assignment: str, sinkhorn_eps: float, sinkhorn_iters: int,
    ranks: Ranks | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The inv term's targets: None for "softmax" (t = q, with gradient), Sinkhorn-Knopp per view otherwise."""
    if assignment == "softmax":
        return None
    if assignment == "sinkhorn":
        return (sinkhorn_knopp(z1, sinkhorn_eps, sinkhorn_iters, ranks),
                sinkhorn_knopp(z2, sinkhorn_eps, sinkhorn_iters, ranks))
    raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")


def gedi_terms(
    z1: torch.Tensor,
    z2: torch.Tensor,
    zn: torch.Tensor | None,
    temperature: float,
    assignment: str = "softmax",
    sinkhorn_eps: float = 0.05,
    sinkhorn_iters: int = 3,
    ranks: Ranks | None = None,
) -> dict[str, torch.Tensor]:
    """The unweighted GEDI terms and detached diagnostics for views z1, z2 (B x K), samples zn (M x K).

    Returns 0-dim tensors: "gen", "inv", "prior", "energy_reg" (differentiable) and "energy_data",
    "energy_neg" (NaN without samples), "cluster_entropy" (detached). With `ranks`, the terms of all
    ranks' rows together, the same on every rank; each rank's gradient is for its own rows, times the
    world size (see gedi_fast.distributed).
    """
    targets = assignment_targets(z1, z2, assignment, sinkhorn_eps, sinkhorn_iters, ranks)
    sums = batch_sums(gedi_statistics(z1, z2, zn, temperature, targets))
    if ranks is not None:
        sums = {**ranks.sum_rows(sums), "log_columns": ranks.logsumexp(sums["log_columns"])}
    return terms_from_sums(sums)


def gedi_gradients(
    grad_vector: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    zn: torch.Tensor | None,
    temperature: float,
    weights: list[float],
    targets: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Analytic gradients of the TERM_VECTOR entries (loss weighted by `weights`) for upstream grad_vector.

    The formulas the fused backward kernel evaluates; tests check them against autograd. With
    N = 2B and g_t the upstream weight of term t, for view 1 (view 2 swaps 1 and 2):
    ds1 = q1 (2 g_ereg lse1 - g_gen) / N - g_prior (q1 c - q1 sum_k q1 c), c_k = 1 / (K N pbar_k),
          - g_inv / N [(q2 - q1) + q1 (log q2 - sum_k q1 log q2)]   (softmax targets)
          - g_inv / N [t2 - q1 sum_k t2]                             (Sinkhorn targets, constants);
    samples: ds = q (g_gen + 2 g_ereg lse) / M. Each dz = ds / temperature.
    """
    stats = gedi_statistics(z1, z2, zn, temperature, targets)
    g = grad_vector.to(stats["lse1"].dtype)
    g_gen, g_inv, g_prior, g_ereg = (g[0] * w + g[1 + i] for i, w in enumerate(weights))
    if zn is None:
        g_gen = torch.zeros_like(g_gen)
    log_q1, log_q2 = (scaled_log_softmax(z, temperature)[0] for z in (z1, z2))
    q1, q2 = log_q1.exp(), log_q2.exp()
    n_views = 2 * z1.shape[0]
    log_share = stats["log_columns"] + math.log(z1.shape[1])

    def view_grad(q, log_q, lse, q_other, log_q_other, cross_other, target_other):
        share = (log_q - log_share).exp()
        ds = q * ((2 * g_ereg * lse - g_gen) / n_views).unsqueeze(1)
        ds = ds - g_prior * (share - q * share.sum(1, keepdim=True))
        if target_other is None:
            inv = (q_other - q) + q * (log_q_other - cross_other.unsqueeze(1))
        else:
            inv = target_other - q * target_other.sum(1, keepdim=True)
        return ds - g_inv / n_views * inv

    t1, t2 = (None, None) if targets is None else (t.to(q1.dtype) for t in targets)
    ds1 = view_grad(q1, log_q1, stats["lse1"], q2, log_q2, stats["cross2"], t2)
    ds2 = view_grad(q2, log_q2, stats["lse2"], q1, log_q1, stats["cross1"], t1)
    dzn = None
    if zn is not None:
        lse_n = stats["lse_n"]
        qn = (zn.to(lse_n.dtype) / temperature - lse_n.unsqueeze(1)).exp()
        dzn = (qn * ((g_gen + 2 * g_ereg * lse_n) / zn.shape[0]).unsqueeze(1) / temperature).to(zn.dtype)
    return (ds1 / temperature).to(z1.dtype), (ds2 / temperature).to(z2.dtype), dzn


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
