"""Fused GEDI terms: Triton kernels, host launchers, torch.library registration and autograd glue.

Forward: one launch reads each view row once (twice past SINGLE_CHUNK_MAX columns) and computes the
row logsumexp (energies), both cross-entropy directions of inv and, per program, the per-cluster
(max, sum-exp) of log q over its rows; a single-program finalize merges those partials into log pbar
(a column-parallel combine kernel does it first when there are many partials) and writes every term.
All reductions run in a fixed order: the same result every run, no atomics. The kernels save per-row
statistics (lse, cross terms) and log pbar; the backward re-reads the inputs with them and writes the
three gradients in one launch, reading upstream gradients from the device (no host sync).

Distributed (gedi_terms with `ranks`): the same forward launch on this rank's rows, then its per-cluster
(max, sum-exp) pairs and row sums are all-reduced and the terms of all ranks' rows are formed in torch
by the reference's formulas; the backward kernel takes the global column stats and row counts (from
device memory) and writes world size x the gradient of the global terms for this rank's rows.

Formulas: gedi_fast.reference.gedi_statistics / terms_from_statistics (the oracle the tests use).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import triton
import triton.language as tl

from gedi_fast import reference
from gedi_fast.distributed import Ranks
from gedi_fast.kernels.launching import LaunchPlan, direct, on_device, tile_warps
from gedi_fast.kernels.partials import merge_partials

SINGLE_CHUNK_MAX = 4096  # widest row (columns, padded to a power of 2) one tile holds
# Per view and tile, rows x columns held in registers at once, and how many of them one thread holds.
# The forward and backward partition rows independently (the backward reads only per-row and
# per-cluster statistics of the forward), so each has its own: the sizes with no spill on either
# triton 3.6 (ptxas 12.8) or 3.9 (ptxas 12.9), and registers below the cap (benchmarks/SM90.md).
FWD_TILE_ELEMENTS = 1024
FWD_ELEMENTS_PER_THREAD = 4
BWD_TILE_ELEMENTS = 2048
BWD_ELEMENTS_PER_THREAD = 4
CHUNK_COLUMNS = 256  # column chunk past SINGLE_CHUNK_MAX
CHUNK_ROWS = 8
COMBINE_IN_FINALIZE_MAX = 1 << 16  # partial entries the single finalize program merges itself
COMBINE_COLS, COMBINE_PARTS = 32, 64  # past it, a combine program's columns and the partials it merges per step
TARGET_PROGRAMS = 264  # enough programs to fill an H200 (132 SMs) twice over
N_TERMS = len(reference.TERM_VECTOR)
# Where the kernels write each value of the terms vector (and read its upstream gradient).
_LOSS_SLOT = tl.constexpr(reference.TERM_VECTOR.index("loss"))
_GEN_SLOT = tl.constexpr(reference.TERM_VECTOR.index("gen"))
_INV_SLOT = tl.constexpr(reference.TERM_VECTOR.index("inv"))
_PRIOR_SLOT = tl.constexpr(reference.TERM_VECTOR.index("prior"))
_ENERGY_REG_SLOT = tl.constexpr(reference.TERM_VECTOR.index("energy_reg"))
_ENERGY_DATA_SLOT = tl.constexpr(reference.TERM_VECTOR.index("energy_data"))
_ENERGY_NEG_SLOT = tl.constexpr(reference.TERM_VECTOR.index("energy_neg"))
_CLUSTER_ENTROPY_SLOT = tl.constexpr(reference.TERM_VECTOR.index("cluster_entropy"))
SIZE_ARGS = ["B", "M", "K", "n_parts", "n_view_programs", "rows_per_program", "author"]


# --- device helpers -----------------------------------------------------------------------------

@triton.jit
def _load_scaled(ptr, rows, cols, col_ok, stride, inv_tau):
    """A [rows x cols] tile of ptr (row stride `stride`) as float32 times inv_tau; padded columns -inf."""
    offsets = rows.to(tl.int64)[:, None] * stride + cols[None, :]
    mask = (rows >= 0)[:, None] & col_ok[None, :]
    return tl.load(ptr + offsets, mask=mask, other=float("-inf")).to(tl.float32) * inv_tau


@triton.jit
def _load_targets(ptr, rows, cols, col_ok, stride):
    offsets = rows.to(tl.int64)[:, None] * stride + cols[None, :]
    return tl.load(ptr + offsets, mask=(rows >= 0)[:, None] & col_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _load_view_tiles(z1, z2, t1, t2, rows, cols, col_ok, stride_z, stride_t, inv_tau, CONSTANT_TARGETS: tl.constexpr):
    """Both views' scaled logits and, given constant targets, those (else the logits stand in, unused)."""
    s1 = _load_scaled(z1, rows, cols, col_ok, stride_z, inv_tau)
    s2 = _load_scaled(z2, rows, cols, col_ok, stride_z, inv_tau)
    w1 = s1
    w2 = s2
    if CONSTANT_TARGETS:
        w1 = _load_targets(t1, rows, cols, col_ok, stride_t)
        w2 = _load_targets(t2, rows, cols, col_ok, stride_t)
    return s1, s2, w1, w2


@triton.jit
def _load_row_stats(stats, rows):
    base = stats + rows.to(tl.int64) * 4
    return tl.load(base + 0), tl.load(base + 1), tl.load(base + 2), tl.load(base + 3)


@triton.jit
def _load_columns(columns, K, cols, col_ok):
    return tl.load(columns + cols, mask=col_ok, other=0.0), tl.load(columns + K + cols, mask=col_ok, other=0.0)


@triton.jit
def _row_lse(s):
    m = tl.max(s, 1)
    return m + tl.log(tl.sum(tl.exp(s - m[:, None]), 1))


@triton.jit
def _online_lse(m, l, s):
    """One step of a running (max, sum-exp) over column chunks."""
    m_new = tl.maximum(m, tl.max(s, 1))
    return m_new, l * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), 1)


@triton.jit
def _merge_max_sum(m_a, s_a, m_b, s_b):
    """Merge two (max, sum of exp(x - max)) summaries; an all -inf side contributes nothing."""
    m = tl.maximum(m_a, m_b)
    safe = tl.where(m == float("-inf"), 0.0, m)
    return m, s_a * tl.exp(m_a - safe) + s_b * tl.exp(m_b - safe)


@triton.jit
def _weights_fp32(w_gen, w_inv, w_prior, w_ereg):
    """The term weights in fp32: under torch.compile on a GPU, Inductor passes Python floats as fp64."""
    f32 = tl.float32
    return tl.cast(w_gen, f32), tl.cast(w_inv, f32), tl.cast(w_prior, f32), tl.cast(w_ereg, f32)


@triton.jit
def _weighted(weight, term):
    """weight * term, and 0 for weight 0 even when the term overflowed (as reference.weighted_loss)."""
    return tl.where(weight != 0, weight * term, 0.0)


@triton.jit
def _views_tile(s1, s2, lse1, lse2, w1, w2, row_ok, col_ok, view2_columns, CONSTANT_TARGETS: tl.constexpr):
    """A tile's contribution to cross1 = sum t2 log q1, cross2 = sum t1 log q2, and its column summaries
    (over both views; view 1 alone where view2_columns is false, the author's form)."""
    lq1 = s1 - lse1[:, None]
    lq2 = s2 - lse2[:, None]
    if not CONSTANT_TARGETS:
        w1 = tl.exp(lq1)
        w2 = tl.exp(lq2)
    valid = row_ok[:, None] & col_ok[None, :]
    cross1 = tl.sum(tl.where(valid, w2 * tl.where(w2 > 0, lq1, 0.0), 0.0), 1)  # 0 log 0 = 0: a -inf cluster
    cross2 = tl.sum(tl.where(valid, w1 * tl.where(w1 > 0, lq2, 0.0), 0.0), 1)
    lq1 = tl.where(valid, lq1, float("-inf"))
    # A runtime switch, not a compile-time one: both forms share the forward's builds (a compile-time
    # branch gave ptxas a schedule that spilled 8-16 B at the one-row tiles).
    lq2 = tl.where(valid & view2_columns, lq2, float("-inf"))
    col_max = tl.maximum(tl.max(lq1, 0), tl.max(lq2, 0))
    safe = tl.where(col_max == float("-inf"), 0.0, col_max)
    col_sum = tl.sum(tl.exp(lq1 - safe[None, :]), 0) + tl.sum(tl.exp(lq2 - safe[None, :]), 0)
    return cross1, cross2, col_max, col_sum


@triton.jit
def _store_stats(stats, rows, row_ok, lse1, lse2, cross1, cross2):
    base = stats + rows.to(tl.int64) * 4
    tl.store(base + 0, lse1, mask=row_ok)
    tl.store(base + 1, lse2, mask=row_ok)
    tl.store(base + 2, cross1, mask=row_ok)
    tl.store(base + 3, cross2, mask=row_ok)


@triton.jit
def _combine_columns(part_max, part_sum, n_parts, cols, col_ok, K, BLOCK_P: tl.constexpr):
    """(max_i log q_ik, log sum_i exp(log q_ik - max)) over all rows, from the programs' partials."""
    m, s = merge_partials(part_max, part_sum, n_parts, K, cols, col_ok, BLOCK_P)
    return m, tl.log(s)


# --- forward ------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=SIZE_ARGS)
def _fwd_rows_kernel(
    z1, z2, zn, t1, t2, stats, lse_n, part_max, part_sum,
    B, M, K, stride_z, stride_n, stride_t, inv_tau, n_view_programs, rows_per_program, author,
    CONSTANT_TARGETS: tl.constexpr, SINGLE_CHUNK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
):
    inv_tau = tl.cast(inv_tau, tl.float32)  # Inductor passes Python floats as fp64 (torch.compile on a GPU)
    pid = tl.program_id(0)
    view2_columns = author == 0
    r = tl.arange(0, BLOCK_B)
    c = tl.arange(0, BLOCK_K)
    if pid < n_view_programs:
        row0 = pid.to(tl.int64) * rows_per_program
        if SINGLE_CHUNK:
            col_ok = c < K
            acc_max = tl.full([BLOCK_K], float("-inf"), tl.float32)
            acc_sum = tl.zeros([BLOCK_K], tl.float32)
            for sub in range(0, rows_per_program, BLOCK_B):
                rows = row0 + sub + r
                row_ok = rows < B
                safe_rows = tl.minimum(rows, B - 1)
                s1, s2, w1, w2 = _load_view_tiles(z1, z2, t1, t2, safe_rows, c, col_ok, stride_z, stride_t, inv_tau,
                                                  CONSTANT_TARGETS)
                lse1 = _row_lse(s1)
                lse2 = _row_lse(s2)
                cross1, cross2, col_max, col_sum = _views_tile(s1, s2, lse1, lse2, w1, w2, row_ok, col_ok,
                                                                     view2_columns, CONSTANT_TARGETS)
                acc_max, acc_sum = _merge_max_sum(acc_max, acc_sum, col_max, col_sum)
                _store_stats(stats, rows, row_ok, lse1, lse2, cross1, cross2)
            tl.store(part_max + pid.to(tl.int64) * K + c, acc_max, mask=col_ok)
            tl.store(part_sum + pid.to(tl.int64) * K + c, acc_sum, mask=col_ok)
        else:
            rows = row0 + r
            row_ok = rows < B
            safe_rows = tl.minimum(rows, B - 1)
            m1 = tl.full([BLOCK_B], float("-inf"), tl.float32)
            l1 = tl.zeros([BLOCK_B], tl.float32)
            m2 = tl.full([BLOCK_B], float("-inf"), tl.float32)
            l2 = tl.zeros([BLOCK_B], tl.float32)
            for start in range(0, K, BLOCK_K):
                col_ok = start + c < K
                m1, l1 = _online_lse(m1, l1, _load_scaled(z1 + start, safe_rows, c, col_ok, stride_z, inv_tau))
                m2, l2 = _online_lse(m2, l2, _load_scaled(z2 + start, safe_rows, c, col_ok, stride_z, inv_tau))
            lse1 = m1 + tl.log(l1)
            lse2 = m2 + tl.log(l2)
            cross1 = tl.zeros([BLOCK_B], tl.float32)
            cross2 = tl.zeros([BLOCK_B], tl.float32)
            for start in range(0, K, BLOCK_K):
                col_ok = start + c < K
                s1, s2, w1, w2 = _load_view_tiles(z1 + start, z2 + start, t1 + start, t2 + start, safe_rows, c, col_ok,
                                                  stride_z, stride_t, inv_tau, CONSTANT_TARGETS)
                d1, d2, col_max, col_sum = _views_tile(s1, s2, lse1, lse2, w1, w2, row_ok, col_ok,
                                                                     view2_columns, CONSTANT_TARGETS)
                cross1 += d1
                cross2 += d2
                tl.store(part_max + pid.to(tl.int64) * K + start + c, col_max, mask=col_ok)
                tl.store(part_sum + pid.to(tl.int64) * K + start + c, col_sum, mask=col_ok)
            _store_stats(stats, rows, row_ok, lse1, lse2, cross1, cross2)
    else:
        row0 = (pid - n_view_programs).to(tl.int64) * rows_per_program
        for sub in range(0, rows_per_program, BLOCK_B):
            rows = row0 + sub + r
            safe_rows = tl.minimum(rows, M - 1)
            m = tl.full([BLOCK_B], float("-inf"), tl.float32)
            l = tl.zeros([BLOCK_B], tl.float32)
            for start in range(0, K, BLOCK_K):
                m, l = _online_lse(m, l, _load_scaled(zn + start, safe_rows, c, start + c < K, stride_n, inv_tau))
            tl.store(lse_n + rows, m + tl.log(l), mask=rows < M)


@triton.jit(do_not_specialize=SIZE_ARGS)
def _combine_kernel(part_max, part_sum, columns, n_parts, K, BLOCK: tl.constexpr, BLOCK_P: tl.constexpr):
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    col_ok = cols < K
    col_max, col_logsum = _combine_columns(part_max, part_sum, n_parts, cols, col_ok, K, BLOCK_P)
    tl.store(columns + cols, col_max, mask=col_ok)
    tl.store(columns + K + cols, col_logsum, mask=col_ok)


@triton.jit(do_not_specialize=SIZE_ARGS)
def _finalize_kernel(
    stats, lse_n, part_max, part_sum, columns, terms, B, M, K, n_parts, log_rows,
    w_gen, w_inv, w_prior, w_ereg, COMBINE: tl.constexpr, BLOCK: tl.constexpr, AUTHOR: tl.constexpr,
):
    log_rows = tl.cast(log_rows, tl.float32)  # Inductor passes Python floats as fp64 (torch.compile on a GPU)
    w_gen, w_inv, w_prior, w_ereg = _weights_fp32(w_gen, w_inv, w_prior, w_ereg)
    i = tl.arange(0, BLOCK)
    lse_sum = tl.zeros([BLOCK], tl.float32)
    lse_sq = tl.zeros([BLOCK], tl.float32)
    cross = tl.zeros([BLOCK], tl.float32)
    for start in range(0, B, BLOCK):
        base = stats + (start + i).to(tl.int64) * 4
        ok = start + i < B
        lse1 = tl.load(base + 0, mask=ok, other=0.0)
        lse2 = tl.load(base + 1, mask=ok, other=0.0)
        lse_sum += lse1 + lse2
        lse_sq += lse1 * lse1 + lse2 * lse2
        cross += tl.load(base + 2, mask=ok, other=0.0)
        if not AUTHOR:
            cross += tl.load(base + 3, mask=ok, other=0.0)
    n_sum = tl.zeros([BLOCK], tl.float32)
    n_sq = tl.zeros([BLOCK], tl.float32)
    for start in range(0, M, BLOCK):
        lse = tl.load(lse_n + start + i, mask=start + i < M, other=0.0)
        n_sum += lse
        n_sq += lse * lse
    log_sum = tl.zeros([BLOCK], tl.float32)
    entropy = tl.zeros([BLOCK], tl.float32)
    for start in range(0, K, BLOCK):
        cols = start + i
        col_ok = cols < K
        if COMBINE:
            col_max, col_logsum = _combine_columns(part_max, part_sum, n_parts, cols, col_ok, K, 4096 // BLOCK)
            tl.store(columns + cols, col_max, mask=col_ok)
            tl.store(columns + K + cols, col_logsum, mask=col_ok)
        else:
            col_max, col_logsum = _load_columns(columns, K, cols, col_ok)
        lp = col_max + col_logsum - log_rows
        log_sum += tl.where(col_ok, lp, 0.0)
        entropy -= tl.where(col_ok & (lp > float("-inf")), tl.exp(lp) * lp, 0.0)
    n_views = 2.0 * B
    energy_data = -tl.sum(lse_sum, 0) / n_views
    has_samples = M > 0
    samples = tl.maximum(M, 1) * 1.0
    energy_neg = tl.where(has_samples, -tl.sum(n_sum, 0) / samples, float("nan"))
    gen = tl.where(has_samples, energy_data - energy_neg, 0.0)
    energy_reg = tl.sum(lse_sq, 0) / n_views + tl.sum(n_sq, 0) / samples
    if AUTHOR:
        inv = -tl.sum(cross, 0) / B
        prior = -tl.sum(log_sum, 0)
    else:
        inv = -tl.sum(cross, 0) / n_views
        prior = -tl.log((K * 1.0)) - tl.sum(log_sum, 0) / K
    tl.store(terms + _LOSS_SLOT, _weighted(w_gen, gen) + _weighted(w_inv, inv) + _weighted(w_prior, prior)
             + _weighted(w_ereg, energy_reg))
    tl.store(terms + _GEN_SLOT, gen)
    tl.store(terms + _INV_SLOT, inv)
    tl.store(terms + _PRIOR_SLOT, prior)
    tl.store(terms + _ENERGY_REG_SLOT, energy_reg)
    tl.store(terms + _ENERGY_DATA_SLOT, energy_data)
    tl.store(terms + _ENERGY_NEG_SLOT, energy_neg)
    tl.store(terms + _CLUSTER_ENTROPY_SLOT, tl.sum(entropy, 0))


# --- backward -----------------------------------------------------------------------------------

@triton.jit
def _prior_share(lq, col_max, col_logsum, log_k):
    """q_k / (K N pbar_k), as exp((log q - column max) - column log-sum - log K).

    Subtracting the column max first keeps this exact when log q is huge and negative; a saved
    log pbar would have rounded away the difference.
    """
    return tl.exp((lq - col_max[None, :]) - col_logsum[None, :] - log_k)


@triton.jit
def _bwd_row_sums(s1, s2, w1, w2, lse1, lse2, col_max, col_logsum, log_k, col_ok, CONSTANT_TARGETS: tl.constexpr):
    """Per-row sum_k q_k c_k (c_k = 1 / (K N pbar_k)) for both views and, given constant targets, sum_k t_k."""
    valid = col_ok[None, :]
    p1 = tl.sum(tl.where(valid, _prior_share(s1 - lse1[:, None], col_max, col_logsum, log_k), 0.0), 1)
    p2 = tl.sum(tl.where(valid, _prior_share(s2 - lse2[:, None], col_max, col_logsum, log_k), 0.0), 1)
    t1_sum = p1
    t2_sum = p2
    if CONSTANT_TARGETS:
        t1_sum = tl.sum(w1, 1)
        t2_sum = tl.sum(w2, 1)
    return p1, p2, t1_sum, t2_sum


@triton.jit
def _bwd_views_tile(
    s1, s2, w1, w2, lse1, lse2, cross1, cross2, p1, p2, t1_sum, t2_sum, col_max, col_logsum, log_k, n_views,
    n_inv, g_gen, g_inv, g_prior, g_ereg, CONSTANT_TARGETS: tl.constexpr, AUTHOR: tl.constexpr,
):
    """d loss / d s for a tile of both views (reference.gedi_gradients: the formulas, both forms)."""
    lq1 = s1 - lse1[:, None]
    lq2 = s2 - lse2[:, None]
    q1 = tl.exp(lq1)
    q2 = tl.exp(lq2)
    energy1 = (2.0 * g_ereg * lse1 - g_gen) / n_views
    energy2 = (2.0 * g_ereg * lse2 - g_gen) / n_views
    ds1 = q1 * energy1[:, None] - g_prior * (_prior_share(lq1, col_max, col_logsum, log_k) - q1 * p1[:, None])
    inv_scale = -g_inv / n_inv
    if AUTHOR:  # view 1 the prediction and the prior's rows, view 2 the target
        ds2 = q2 * energy2[:, None]
        if CONSTANT_TARGETS:
            ds1 += inv_scale * (w2 - q1 * t2_sum[:, None])
        else:
            ds1 += inv_scale * (q2 - q1)
            ds2 += inv_scale * (q2 * tl.where(q2 > 0, lq1 - cross1[:, None], 0.0))
    else:
        ds2 = q2 * energy2[:, None] - g_prior * (_prior_share(lq2, col_max, col_logsum, log_k) - q2 * p2[:, None])
        if CONSTANT_TARGETS:
            ds1 += inv_scale * (w2 - q1 * t2_sum[:, None])
            ds2 += inv_scale * (w1 - q2 * t1_sum[:, None])
        else:
            ds1 += inv_scale * ((q2 - q1) + q1 * tl.where(q1 > 0, lq2 - cross2[:, None], 0.0))
            ds2 += inv_scale * ((q1 - q2) + q2 * tl.where(q2 > 0, lq1 - cross1[:, None], 0.0))
    return ds1, ds2


@triton.jit
def _store_tile(ptr, rows, row_ok, cols, col_ok, stride, value):
    offsets = rows.to(tl.int64)[:, None] * stride + cols[None, :]
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit(do_not_specialize=SIZE_ARGS)
def _bwd_rows_kernel(
    z1, z2, zn, t1, t2, stats, lse_n, columns, grad_terms, counts, dz1, dz2, dzn,
    B, M, K, stride_z, stride_n, stride_t, inv_tau, n_view_programs, rows_per_program,
    w_gen, w_inv, w_prior, w_ereg, log_share,
    CONSTANT_TARGETS: tl.constexpr, SINGLE_CHUNK: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
    GLOBAL_COUNTS: tl.constexpr, AUTHOR: tl.constexpr,
):
    inv_tau = tl.cast(inv_tau, tl.float32)  # Inductor passes Python floats as fp64 (torch.compile on a GPU)
    log_share = tl.cast(log_share, tl.float32)
    w_gen, w_inv, w_prior, w_ereg = _weights_fp32(w_gen, w_inv, w_prior, w_ereg)
    pid = tl.program_id(0)
    r = tl.arange(0, BLOCK_B)
    c = tl.arange(0, BLOCK_K)
    g_loss = tl.load(grad_terms + _LOSS_SLOT)
    g_gen = tl.where(M > 0, g_loss * w_gen + tl.load(grad_terms + _GEN_SLOT), 0.0)  # gen is 0 without samples
    g_inv = g_loss * w_inv + tl.load(grad_terms + _INV_SLOT)
    g_prior = g_loss * w_prior + tl.load(grad_terms + _PRIOR_SLOT)
    g_ereg = g_loss * w_ereg + tl.load(grad_terms + _ENERGY_REG_SLOT)
    # log_k: c_k = exp(-log_k) / column sum_k is the prior's weight of cluster k (reference.gedi_gradients):
    # log K, or 0 in the author's form, plus log(inv rows / prior rows) where a queue adds prior rows.
    if GLOBAL_COUNTS:  # all ranks' view, sample, inv and prior rows, on the device (no host sync)
        n_views = tl.load(counts + 0)
        samples = tl.load(counts + 1)
        n_inv = tl.load(counts + 2)
        log_k = tl.log(n_inv) - tl.log(tl.load(counts + 3))
        if not AUTHOR:
            log_k += tl.log(K * 1.0)
    else:
        n_views = 2.0 * B
        samples = tl.maximum(M, 1) * 1.0
        n_inv = n_views
        if AUTHOR:
            n_inv = B * 1.0
        log_k = log_share
    if pid < n_view_programs:
        row0 = pid.to(tl.int64) * rows_per_program
        if SINGLE_CHUNK:
            col_ok = c < K
            col_max, col_logsum = _load_columns(columns, K, c, col_ok)
            for sub in range(0, rows_per_program, BLOCK_B):
                rows = row0 + sub + r
                row_ok = rows < B
                safe_rows = tl.minimum(rows, B - 1)
                lse1, lse2, cross1, cross2 = _load_row_stats(stats, safe_rows)
                s1, s2, w1, w2 = _load_view_tiles(z1, z2, t1, t2, safe_rows, c, col_ok, stride_z, stride_t, inv_tau,
                                                  CONSTANT_TARGETS)
                p1, p2, t1_sum, t2_sum = _bwd_row_sums(s1, s2, w1, w2, lse1, lse2, col_max, col_logsum, log_k, col_ok,
                                                       CONSTANT_TARGETS)
                ds1, ds2 = _bwd_views_tile(s1, s2, w1, w2, lse1, lse2, cross1, cross2, p1, p2, t1_sum, t2_sum,
                                           col_max, col_logsum, log_k, n_views, n_inv, g_gen, g_inv, g_prior, g_ereg,
                                           CONSTANT_TARGETS, AUTHOR)
                _store_tile(dz1, rows, row_ok, c, col_ok, stride_z, ds1 * inv_tau)
                _store_tile(dz2, rows, row_ok, c, col_ok, stride_z, ds2 * inv_tau)
        else:
            rows = row0 + r
            row_ok = rows < B
            safe_rows = tl.minimum(rows, B - 1)
            lse1, lse2, cross1, cross2 = _load_row_stats(stats, safe_rows)
            p1 = tl.zeros([BLOCK_B], tl.float32)
            p2 = tl.zeros([BLOCK_B], tl.float32)
            t1_sum = tl.zeros([BLOCK_B], tl.float32)
            t2_sum = tl.zeros([BLOCK_B], tl.float32)
            for start in range(0, K, BLOCK_K):
                col_ok = start + c < K
                col_max, col_logsum = _load_columns(columns, K, start + c, col_ok)
                s1, s2, w1, w2 = _load_view_tiles(z1 + start, z2 + start, t1 + start, t2 + start, safe_rows, c, col_ok,
                                                  stride_z, stride_t, inv_tau, CONSTANT_TARGETS)
                d1, d2, e1, e2 = _bwd_row_sums(s1, s2, w1, w2, lse1, lse2, col_max, col_logsum, log_k, col_ok, CONSTANT_TARGETS)
                p1 += d1
                p2 += d2
                t1_sum += e1
                t2_sum += e2
            for start in range(0, K, BLOCK_K):
                col_ok = start + c < K
                col_max, col_logsum = _load_columns(columns, K, start + c, col_ok)
                s1, s2, w1, w2 = _load_view_tiles(z1 + start, z2 + start, t1 + start, t2 + start, safe_rows, c, col_ok,
                                                  stride_z, stride_t, inv_tau, CONSTANT_TARGETS)
                ds1, ds2 = _bwd_views_tile(s1, s2, w1, w2, lse1, lse2, cross1, cross2, p1, p2, t1_sum, t2_sum,
                                           col_max, col_logsum, log_k, n_views, n_inv, g_gen, g_inv, g_prior, g_ereg,
                                           CONSTANT_TARGETS, AUTHOR)
                _store_tile(dz1 + start, rows, row_ok, c, col_ok, stride_z, ds1 * inv_tau)
                _store_tile(dz2 + start, rows, row_ok, c, col_ok, stride_z, ds2 * inv_tau)
    else:
        row0 = (pid - n_view_programs).to(tl.int64) * rows_per_program
        for sub in range(0, rows_per_program, BLOCK_B):
            rows = row0 + sub + r
            row_ok = rows < M
            safe_rows = tl.minimum(rows, M - 1)
            lse = tl.load(lse_n + safe_rows)
            coef = (g_gen + 2.0 * g_ereg * lse) / samples * inv_tau
            for start in range(0, K, BLOCK_K):
                col_ok = start + c < K
                s = _load_scaled(zn + start, safe_rows, c, col_ok, stride_n, inv_tau)
                _store_tile(dzn + start, rows, row_ok, c, col_ok, stride_n, tl.exp(s - lse[:, None]) * coef[:, None])


# --- host side ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class TermsPlan(LaunchPlan):
    """One GEDI-terms kernel's pass over a B x K problem with M samples: whole rows in one tile or
    column chunks, and how many programs take the view rows and the sample rows."""

    single_chunk: bool
    view_programs: int
    sample_programs: int

    @staticmethod
    def make(batch: int, samples: int, clusters: int, tile_elements: int, elements_per_thread: int,
             max_warps: int) -> "TermsPlan":
        width = triton.next_power_of_2(clusters)
        if width <= SINGLE_CHUNK_MAX:
            block_k = width
            block_b = max(1, min(64, tile_elements // block_k))
            wanted_rows = max(block_b, -(-max(batch, samples) // TARGET_PROGRAMS))
            rows_per_program = block_b * -(-wanted_rows // block_b)
            single = True
        else:
            block_k, block_b, rows_per_program, single = CHUNK_COLUMNS, CHUNK_ROWS, CHUNK_ROWS, False
        return TermsPlan(
            block_b=block_b,
            block_k=block_k,
            rows_per_program=rows_per_program,
            num_warps=tile_warps(block_b, block_k, elements_per_thread, max_warps),
            single_chunk=single,
            view_programs=triton.cdiv(batch, rows_per_program),
            sample_programs=triton.cdiv(samples, rows_per_program),
        )


def forward_plan(batch: int, samples: int, clusters: int) -> TermsPlan:
    return TermsPlan.make(batch, samples, clusters, FWD_TILE_ELEMENTS, FWD_ELEMENTS_PER_THREAD, 16)


def backward_plan(batch: int, samples: int, clusters: int) -> TermsPlan:
    """The backward keeps about ten tiles live: twice the forward's tile over up to 32 warps."""
    return TermsPlan.make(batch, samples, clusters, BWD_TILE_ELEMENTS, BWD_ELEMENTS_PER_THREAD, 32)


def _contiguous(t: torch.Tensor) -> torch.Tensor:
    """Fully contiguous, not only unit column stride: the kernels read z1 and z2 with one row stride
    (z1's) and write the gradients, allocated contiguous, with it too; a row slice of a wider matrix
    or an expanded tensor would be read wrongly and its gradient written out of bounds."""
    return t.contiguous()


def _unused(like: torch.Tensor) -> torch.Tensor:
    """An empty stand-in for a pointer argument the launch's branch never touches.

    Every tensor argument of a launch gets memory of its own: under torch.compile each argument a
    kernel writes is functionalized into its own copy, so two arguments sharing one tensor would
    leave the result to whichever copy is written back last.
    """
    return like.new_empty(0, *like.shape[1:])


def _log_share(form: str, clusters: int, inv_rows: int, queued_rows: int) -> float:
    """The backward's log_k on one process: log K (0 in the author's form) + log(inv rows / prior rows)."""
    return (0.0 if form == "author" else math.log(clusters)) + math.log(inv_rows / (inv_rows + queued_rows))


def _forward(
    z1: torch.Tensor, z2: torch.Tensor, zn: Optional[torch.Tensor], t1: Optional[torch.Tensor],
    t2: Optional[torch.Tensor], temperature: float, weights: list[float], form: str,
    queued_columns: Optional[torch.Tensor], queued_rows: int, wrap: Callable = direct,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(terms vector in reference.TERM_VECTOR order, per-row stats [B, 4], sample lse [M], columns [2, K]).

    columns holds, per cluster, the max over the prior's rows of log q and the log-sum of exp(log q - max):
    the 2B view rows (view 1's B in the author's form) and, given queued_columns (the log column sums
    of `queued_rows` queued rows, reference.queue_columns), those as one more partial.
    """
    z1, z2 = _contiguous(z1), _contiguous(z2)
    batch, clusters = z1.shape
    samples = 0 if zn is None else zn.shape[0]
    constant_targets = t1 is not None
    author = form == "author"
    queued = queued_columns is not None
    plan = forward_plan(batch, samples, clusters)
    f32 = dict(device=z1.device, dtype=torch.float32)
    stats = torch.empty(batch, 4, **f32)
    lse_n = torch.empty(samples, **f32)
    n_parts = plan.view_programs + int(queued)  # a bool added to a SymInt breaks symbolic tracing (torch 2.11)
    part_max = torch.empty(n_parts, clusters, **f32)
    part_sum = torch.empty(n_parts, clusters, **f32)
    if queued:  # a partial of its own: (log column sum, 1)
        part_max[-1] = queued_columns.to(torch.float32)
        part_sum[-1] = 1.0
    columns = torch.empty(2, clusters, **f32)
    terms = torch.empty(N_TERMS, **f32)
    zn = _unused(z1) if zn is None else _contiguous(zn)
    t1 = _contiguous(t1) if constant_targets else _unused(z1)
    t2 = _contiguous(t2) if constant_targets else _unused(z1)
    combine_here = n_parts * clusters <= COMBINE_IN_FINALIZE_MAX
    inv_rows = batch if author else 2 * batch
    with on_device(z1):
        wrap(_fwd_rows_kernel)[(plan.view_programs + plan.sample_programs,)](
            z1, z2, zn, t1, t2, stats, lse_n, part_max, part_sum,
            batch, samples, clusters, z1.stride(0), zn.stride(0), t1.stride(0), 1.0 / temperature,
            plan.view_programs, plan.rows_per_program, int(author),
            CONSTANT_TARGETS=constant_targets, SINGLE_CHUNK=plan.single_chunk,
            BLOCK_B=plan.block_b, BLOCK_K=plan.block_k,
            num_warps=plan.num_warps,
        )
        if not combine_here:
            wrap(_combine_kernel)[(triton.cdiv(clusters, COMBINE_COLS),)](
                part_max, part_sum, columns, n_parts, clusters, BLOCK=COMBINE_COLS, BLOCK_P=COMBINE_PARTS, num_warps=4
            )
        wrap(_finalize_kernel)[(1,)](
            stats, lse_n, part_max, part_sum, columns, terms, batch, samples, clusters, n_parts,
            math.log(inv_rows + queued_rows), *weights, COMBINE=combine_here, BLOCK=1024, AUTHOR=author, num_warps=8,
        )
    return terms, stats, lse_n, columns


def _backward(
    grad_terms: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, zn: Optional[torch.Tensor],
    t1: Optional[torch.Tensor], t2: Optional[torch.Tensor], stats: torch.Tensor, lse_n: torch.Tensor,
    columns: torch.Tensor, temperature: float, weights: list[float], form: str, queued_rows: int,
    wrap: Callable = direct, counts: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dz1, dz2, dzn) in the inputs' dtypes; dzn is empty (0 x K) without samples.

    counts: float32 [view rows, max(sample rows, 1), inv rows, prior rows] over all ranks, with
    `columns` over all ranks; None for this batch alone (with `queued_rows` queued prior rows).
    """
    z1, z2 = _contiguous(z1), _contiguous(z2)
    batch, clusters = z1.shape
    samples = 0 if zn is None else zn.shape[0]
    constant_targets = t1 is not None
    author = form == "author"
    plan = backward_plan(batch, samples, clusters)
    dz1, dz2 = torch.empty_like(z1), torch.empty_like(z2)
    zn = _unused(z1) if zn is None else _contiguous(zn)
    dzn = torch.empty_like(zn)
    t1 = _contiguous(t1) if constant_targets else _unused(z1)
    t2 = _contiguous(t2) if constant_targets else _unused(z1)
    global_counts = counts is not None
    counts = counts if global_counts else _unused(stats)
    log_share = _log_share(form, clusters, batch if author else 2 * batch, queued_rows)
    with on_device(z1):
        wrap(_bwd_rows_kernel)[(plan.view_programs + plan.sample_programs,)](
            z1, z2, zn, t1, t2, stats, lse_n, columns, grad_terms.contiguous(), counts, dz1, dz2, dzn,
            batch, samples, clusters, z1.stride(0), zn.stride(0), t1.stride(0), 1.0 / temperature,
            plan.view_programs, plan.rows_per_program, *weights, log_share,
            CONSTANT_TARGETS=constant_targets, SINGLE_CHUNK=plan.single_chunk,
            BLOCK_B=plan.block_b, BLOCK_K=plan.block_k,
            GLOBAL_COUNTS=global_counts, AUTHOR=author, num_warps=plan.num_warps,
        )
    return dz1, dz2, dzn


# --- registration and autograd ------------------------------------------------------------------

# Each op's body is also its fake kernel and its decomposition under AOT tracing, so off CUDA it
# traces the reference instead of launching Triton kernels on CPU (or fake CPU) tensors.
@torch.library.triton_op("gedi_fast::gedi_terms_fwd", mutates_args=())
def gedi_terms_fwd(
    z1: torch.Tensor, z2: torch.Tensor, zn: Optional[torch.Tensor], t1: Optional[torch.Tensor],
    t2: Optional[torch.Tensor], temperature: float, weights: list[float], form: str,
    queued_columns: Optional[torch.Tensor], queued_rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if z1.device.type != "cuda":
        return _gedi_terms_fwd_cpu(z1, z2, zn, t1, t2, temperature, weights, form, queued_columns, queued_rows)
    return _forward(z1, z2, zn, t1, t2, temperature, weights, form, queued_columns, queued_rows,
                    torch.library.wrap_triton)


@torch.library.triton_op("gedi_fast::gedi_terms_bwd", mutates_args=())
def gedi_terms_bwd(
    grad_terms: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor, zn: Optional[torch.Tensor],
    t1: Optional[torch.Tensor], t2: Optional[torch.Tensor], stats: torch.Tensor, lse_n: torch.Tensor,
    columns: torch.Tensor, temperature: float, weights: list[float], form: str,
    queued_columns: Optional[torch.Tensor], queued_rows: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if z1.device.type != "cuda":
        return _gedi_terms_bwd_cpu(grad_terms, z1, z2, zn, t1, t2, stats, lse_n, columns, temperature, weights, form,
                                   queued_columns, queued_rows)
    return _backward(grad_terms, z1, z2, zn, t1, t2, stats, lse_n, columns, temperature, weights, form, queued_rows,
                     torch.library.wrap_triton)


def _reference_vector(z1, z2, zn, t1, t2, temperature, weights, form, queued_columns, queued_rows):
    stats = reference.gedi_statistics(z1, z2, zn, temperature, None if t1 is None else (t1, t2), form)
    sums = reference.batch_sums(stats, form)
    if queued_columns is not None:
        sums = reference.with_queue(sums, queued_columns, queued_rows)
    terms = reference.terms_from_sums(sums, form)
    terms["loss"] = reference.weighted_loss(terms, dict(zip(reference.TERM_NAMES, weights)))
    return torch.stack([terms[name].float() for name in reference.TERM_VECTOR]), stats, sums["log_columns"]


@gedi_terms_fwd.register_kernel("cpu")
def _gedi_terms_fwd_cpu(z1, z2, zn, t1, t2, temperature, weights, form, queued_columns, queued_rows):
    vector, stats, log_columns = _reference_vector(z1, z2, zn, t1, t2, temperature, weights, form, queued_columns,
                                                   queued_rows)
    rows = torch.stack([stats[k] for k in ("lse1", "lse2", "cross1", "cross2")], 1).float()
    lse_n = stats["lse_n"].float() if zn is not None else rows.new_empty(0)
    # Any split of log(N pbar) into (max, log-sum) is valid; the reference keeps it whole.
    log_columns = log_columns.float()
    return vector, rows, lse_n, torch.stack([log_columns, torch.zeros_like(log_columns)])


@gedi_terms_bwd.register_kernel("cpu")
def _gedi_terms_bwd_cpu(grad_terms, z1, z2, zn, t1, t2, stats, lse_n, columns, temperature, weights, form,
                        queued_columns, queued_rows):
    targets = None if t1 is None else (t1, t2)
    queued = None if queued_columns is None else (queued_columns, queued_rows)
    dz1, dz2, dzn = reference.gedi_gradients(grad_terms, z1, z2, zn, temperature, weights, targets, form, queued)
    return dz1, dz2, z1.new_empty(0, z1.shape[1]) if dzn is None else dzn


def _setup_context(ctx, inputs, output) -> None:
    z1, z2, zn, t1, t2, temperature, weights, form, queued_columns, queued_rows = inputs
    _, stats, lse_n, columns = output
    ctx.save_for_backward(z1, z2, zn, t1, t2, stats, lse_n, columns, queued_columns)
    ctx.temperature, ctx.weights, ctx.has_samples = temperature, weights, zn is not None
    ctx.form, ctx.queued_rows = form, queued_rows


def _gradients(ctx, grad_terms, backward) -> tuple:
    z1, z2, zn, t1, t2, stats, lse_n, columns, queued_columns = ctx.saved_tensors
    dz1, dz2, dzn = backward(grad_terms, z1, z2, zn, t1, t2, stats, lse_n, columns, ctx.temperature, ctx.weights,
                             ctx.form, queued_columns, ctx.queued_rows)
    return dz1, dz2, dzn if ctx.has_samples else None, None, None, None, None, None, None, None


def _op_backward(ctx, grad_terms, *unused_grads):
    return _gradients(ctx, grad_terms, torch.ops.gedi_fast.gedi_terms_bwd)


gedi_terms_fwd.register_autograd(_op_backward, setup_context=_setup_context)


def _eager_backward(grad_terms, z1, z2, zn, t1, t2, stats, lse_n, columns, temperature, weights, form,
                    queued_columns, queued_rows, counts=None):
    """_backward with the registered op's arguments (the queued columns are in `columns` already)."""
    return _backward(grad_terms, z1, z2, zn, t1, t2, stats, lse_n, columns, temperature, weights, form, queued_rows,
                     counts=counts)


class _EagerGEDITerms(torch.autograd.Function):
    """The same forward and backward as the registered op, launched without the dispatcher."""

    @staticmethod
    def forward(ctx, z1, z2, zn, t1, t2, temperature, weights, form, queued_columns, queued_rows):
        output = _forward(z1, z2, zn, t1, t2, temperature, weights, form, queued_columns, queued_rows)
        _setup_context(ctx, (z1, z2, zn, t1, t2, temperature, weights, form, queued_columns, queued_rows), output)
        ctx.mark_non_differentiable(*output[1:])
        return output

    @staticmethod
    def backward(ctx, grad_terms, *unused_grads):
        return _gradients(ctx, grad_terms, _eager_backward)


class _DistributedGEDITerms(torch.autograd.Function):
    """The terms of all ranks' rows: this rank's forward launch, all-reduced column pairs and row sums,
    the reference's formulas in torch; the backward launch with the global columns and counts."""

    @staticmethod
    def forward(ctx, z1, z2, zn, t1, t2, temperature, weights, form, queued_columns, queued_rows, ranks: Ranks):
        inputs = (z1, z2, zn, t1, t2, temperature, weights, form, queued_columns, queued_rows)
        _, rows, lse_n, columns = _forward(*inputs)
        top, total = ranks.max_sum(columns[0], columns[1].exp())
        columns = torch.stack([top, total.log()])
        stats = {"lse1": rows[:, 0], "lse2": rows[:, 1], "cross1": rows[:, 2], "cross2": rows[:, 3],
                 "lse_n": None if zn is None else lse_n, "log_columns": columns.sum(0)}
        local = reference.batch_sums(stats, form)
        if queued_columns is not None:  # columns hold the queue already; the count joins the others
            local["queue_rows"] = queued_rows
        sums = ranks.sum_rows(local)
        terms = reference.terms_from_sums(sums, form)
        terms["loss"] = reference.weighted_loss(terms, dict(zip(reference.TERM_NAMES, weights)))
        prior_rows = sums["inv_rows"] if sums["queue_rows"] is None else sums["inv_rows"] + sums["queue_rows"]
        counts = torch.stack([sums["views"], sums["samples"].clamp(min=1), sums["inv_rows"], prior_rows])
        _setup_context(ctx, inputs, (None, rows, lse_n, columns))
        ctx.counts, ctx.world_size = counts, ranks.world_size
        return torch.stack([terms[name] for name in reference.TERM_VECTOR])

    @staticmethod
    def backward(ctx, grad_terms):
        def backward(grad, *args):
            return _eager_backward(grad * ctx.world_size, *args, counts=ctx.counts)

        return *_gradients(ctx, grad_terms, backward), None


def gedi_terms(
    z1: torch.Tensor, z2: torch.Tensor, zn: Optional[torch.Tensor],
    targets: Optional[tuple[torch.Tensor, torch.Tensor]], temperature: float, weights: list[float],
    ranks: Optional[Ranks] = None, form: str = "symmetric", queued_columns: Optional[torch.Tensor] = None,
    queued_rows: int = 0,
) -> torch.Tensor:
    """The terms vector (reference.TERM_VECTOR order), differentiable in z1, z2, zn.

    `targets` are Sinkhorn assignments (constants) or None for softmax targets. `weights` are
    (gen, inv, prior, energy_reg) for entry 0, the weighted loss. `form` is one of reference.FORMS.
    `queued_columns`, `queued_rows`: a queue's rows in the prior (reference.queue_columns), or None.
    Eager calls launch the kernels directly; under torch.compile the registered op is traced instead.
    With `ranks`, the terms of all ranks' rows (the same on every rank) and world size x their
    gradient for this rank's rows.
    """
    t1, t2 = (None, None) if targets is None else targets
    inputs = (z1, z2, zn, t1, t2, temperature, weights, form, queued_columns, queued_rows)
    if ranks is not None:
        return _DistributedGEDITerms.apply(*inputs, ranks)
    if torch.compiler.is_compiling():
        return torch.ops.gedi_fast.gedi_terms_fwd(*inputs)[0]
    return _EagerGEDITerms.apply(*inputs)[0]
