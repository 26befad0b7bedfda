"""Sinkhorn-Knopp (SwAV's balanced assignments) as Triton kernels, in the log domain.

With x = S / eps, the iterate is log Q_ik = x_ik + a_i + b_k (scaling vectors kept as logs); the
constant factors of SwAV's loop (1/K, 1/B, the initial 1/sum) cancel, so from a = 0, `iters` times:
the cluster step b_k = -logsumexp_i(x_ik + a_i), then the sample step a_i = -logsumexp_k(x_ik + b_k);
the output is t_ik = exp(x_ik + b_k + a_i), the row softmax of x + b. Q itself is never written;
every pass only reads S, and only the final pass writes the B x K output.

Accuracy: with scores of 1e4 and eps 0.01, x is ~1e6, and adding a small a or b to it in fp32
loses ~0.06 of the exponent. So the iterate is kept near 0, as the plain-torch reference keeps its
materialised matrix normalised: by the first cluster step's column max c_k (a per-cluster shift,
which cancels exactly) and by the first sample step's result a_i, stored as the row shift r_i. Later
passes work on y = (x - c) + r, whose relevant entries are small and exact (Sterbenz), so later
scaling vectors are small corrections and the rounding error is that of the fp32 reference.

Two schedules, one result:
- single launch (small problems): one program keeps the K-vectors (c, column stats) in registers and
  loops over row blocks and iterations itself, re-reading S from L2 (r in a B-float scratch buffer);
- multi-pass: a row pass computes each row group's sample step and, in the same sweep, its
  per-column (max, sum-exp) partials of the iterate; a combine kernel merges the partials of all row
  groups in a fixed order (deterministic, no atomics) into the cluster stats (m_k, l_k), from which
  the next pass takes b_k = -(m_k + log l_k). Column pass, combine, (row pass, combine) x (iters - 1),
  output pass: iters + 1 reads of S (2 * iters + 1 when K is wider than one block, as a row's a_i
  is needed before its column partials), one write, 2 * iters + 1 launches.
Exponentials use exp2 of log2(e)-scaled differences; every max is guarded so that masked rows and
columns (all -inf) give no NaN.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gedi_fast import reference
from gedi_fast.kernels.launching import LaunchPlan, direct, on_device, tile_warps
from gedi_fast.kernels.partials import merge_partials

_LOG2E = tl.constexpr(1.4426950408889634)
_LN2 = tl.constexpr(0.6931471805599453)

# Pass stages: the first cluster step (stats of x), the first sample step (shift by c, store r),
# every later sample step (on y = (x - c) + r).
_COLUMN = tl.constexpr(0)
_FIRST_ROW = tl.constexpr(1)
_ROW = tl.constexpr(2)

# Launch heuristics (pinned, no autotune): widest K kept whole in registers, largest B*K solved by
# one program, elements per register tile, column chunk for wider K, row groups per row pass.
_WHOLE_ROW_MAX_COLS = 4096
_SINGLE_LAUNCH_MAX_NUMEL = 1 << 18  # 1024 x 100 and 64 x 3000 stay single-launch
_TILE_NUMEL = 4096
_ELEMENTS_PER_THREAD = 8  # of one tile (benchmarks/SM90.md: registers well below the cap, no spills)
_CHUNK_COLS = 512
_CHUNK_ROWS = 16
_TARGET_GROUPS = 256
_MAX_GROUP_ROWS = 64
_COMBINE_COLS, _COMBINE_PARTS = 32, 64  # a combine program's columns, and the partials it merges per step


@triton.jit
def _load_x(s_ptr, rows, cols, n_rows, n_cols, stride, inv_eps):
    """S / eps of a tile in fp32; -inf outside rows < n_rows, cols < n_cols."""
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    ptrs = s_ptr + rows.to(tl.int64)[:, None] * stride + cols[None, :]
    return tl.load(ptrs, mask=mask, other=float("-inf")).to(tl.float32) * inv_eps


@triton.jit
def _finite_or_zero(m):
    return tl.where(m == float("-inf"), 0.0, m)


@triton.jit
def _lse_parts(z, AXIS: tl.constexpr):
    """(max, sum exp(z - max)) along AXIS; an all -inf line gives (-inf, 0)."""
    m = tl.max(z, AXIS)
    shift = tl.expand_dims(_finite_or_zero(m), AXIS)
    return m, tl.sum(tl.exp2((z - shift) * _LOG2E), AXIS)


@triton.jit
def _softmax_tile(z, row_m, row_l):
    """exp(z - row lse) from the rows' (max, sum-exp); masked rows (l == 0) give 0."""
    inv_l = 1.0 / tl.where(row_l > 0, row_l, 1.0)
    return tl.exp2((z - _finite_or_zero(row_m)[:, None]) * _LOG2E) * inv_l[:, None]


@triton.jit
def _lse_accumulate(m, l, z, AXIS: tl.constexpr):
    """Fold z's lines along AXIS into the running (max, sum-exp) pair: one rescale exp per lane."""
    m_new = tl.maximum(m, tl.max(z, AXIS))
    shift = _finite_or_zero(m_new)
    l = l * tl.exp2((m - shift) * _LOG2E) + tl.sum(tl.exp2((z - tl.expand_dims(shift, AXIS)) * _LOG2E), AXIS)
    return m_new, l


@triton.jit
def _neg_lse(m, l):
    """-(m + log l), or 0 for an empty line (l == 0), so masked lanes stay finite."""
    ok = l > 0
    return tl.where(ok, -(tl.where(ok, m, 0.0) + tl.log2(tl.where(ok, l, 1.0)) * _LN2), 0.0)


@triton.jit
def _load_cluster_step(c_ptr, m_ptr, l_ptr, cols, n_cols, STAGE: tl.constexpr):
    """(c_k, b_k) from stored stats: after the first cluster step m is c itself, so b = -log l."""
    mask = cols < n_cols
    l = tl.load(l_ptr + cols, mask=mask, other=0.0)
    if STAGE == _ROW:
        m = tl.load(m_ptr + cols, mask=mask, other=0.0)
    else:
        m = tl.zeros_like(l)
    return tl.load(c_ptr + cols, mask=mask, other=0.0), _neg_lse(m, l)


@triton.jit
def _row_shift(r_ptr, rows, row_hi, STAGE: tl.constexpr, BLOCK_B: tl.constexpr):
    """The stored r of the rows once there is one, else 0."""
    if STAGE == _ROW:
        r = tl.load(r_ptr + rows, mask=rows < row_hi, other=0.0)
    else:
        r = tl.zeros([BLOCK_B], tl.float32)
    return r


@triton.jit
def _col_stats(s_ptr, r_ptr, row_lo, row_hi, n_cols, stride, inv_eps, c, b,
               STAGE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-column (max, sum-exp) of the iterate after the sample step of rows [row_lo, row_hi),
    all K columns in one tile: x itself at _COLUMN, x - c + r after storing r = a at _FIRST_ROW,
    y + a with y = x - c + r at _ROW.
    """
    cols = tl.arange(0, BLOCK_K)
    m = tl.full([BLOCK_K], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_K], tl.float32)
    for r0 in range(row_lo, row_hi, BLOCK_B):
        rows = r0 + tl.arange(0, BLOCK_B)
        y = _load_x(s_ptr, rows, cols, row_hi, n_cols, stride, inv_eps)
        if STAGE != _COLUMN:
            y = (y - c[None, :]) + _row_shift(r_ptr, rows, row_hi, STAGE, BLOCK_B)[:, None]
            row_m, row_l = _lse_parts(y + b[None, :], 1)
            a = _neg_lse(row_m, row_l)
            if STAGE == _FIRST_ROW:
                tl.store(r_ptr + rows, a, mask=rows < row_hi)
            y = y + a[:, None]
        m, l = _lse_accumulate(m, l, y, 0)
    return m, l


@triton.jit
def _softmax_rows(s_ptr, r_ptr, out_ptr, row_lo, row_hi, n_cols, stride, inv_eps, c, b,
                  STAGE: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """out = row softmax of (x - c + r) + b over rows [row_lo, row_hi), all K columns in one tile."""
    cols = tl.arange(0, BLOCK_K)
    for r0 in range(row_lo, row_hi, BLOCK_B):
        rows = r0 + tl.arange(0, BLOCK_B)
        y = _load_x(s_ptr, rows, cols, row_hi, n_cols, stride, inv_eps) - c[None, :]
        z = (y + _row_shift(r_ptr, rows, row_hi, STAGE, BLOCK_B)[:, None]) + b[None, :]
        row_m, row_l = _lse_parts(z, 1)
        t = _softmax_tile(z, row_m, row_l)
        mask = (rows < row_hi)[:, None] & (cols < n_cols)[None, :]
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * n_cols + cols[None, :], t, mask=mask)


@triton.jit
def _single_launch_kernel(s_ptr, r_ptr, out_ptr, n_rows, n_cols, stride, inv_eps, iters,
                          BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """The whole algorithm in one program (grid of 1): the K-vectors live in registers."""
    inv_eps = tl.cast(inv_eps, tl.float32)  # Inductor passes Python floats as fp64 (torch.compile on a GPU)
    zero = tl.zeros([BLOCK_K], tl.float32)
    c, l = _col_stats(s_ptr, r_ptr, 0, n_rows, n_cols, stride, inv_eps, zero, zero, _COLUMN, BLOCK_B, BLOCK_K)
    c = _finite_or_zero(c)
    b = _neg_lse(zero, l)
    if iters > 1:
        m, l = _col_stats(s_ptr, r_ptr, 0, n_rows, n_cols, stride, inv_eps, c, b, _FIRST_ROW, BLOCK_B, BLOCK_K)
        tl.debug_barrier()  # r is re-read by other threads of this program
        for _ in range(2, iters):
            m, l = _col_stats(s_ptr, r_ptr, 0, n_rows, n_cols, stride, inv_eps, c, _neg_lse(m, l), _ROW,
                              BLOCK_B, BLOCK_K)
        _softmax_rows(s_ptr, r_ptr, out_ptr, 0, n_rows, n_cols, stride, inv_eps, c, _neg_lse(m, l), _ROW,
                      BLOCK_B, BLOCK_K)
    else:
        _softmax_rows(s_ptr, r_ptr, out_ptr, 0, n_rows, n_cols, stride, inv_eps, c, b, _FIRST_ROW,
                      BLOCK_B, BLOCK_K)


@triton.jit
def _row_pass_kernel(s_ptr, c_ptr, r_ptr, m_ptr, l_ptr, part_m_ptr, part_l_ptr, out_ptr,
                     n_rows, n_cols, stride, inv_eps,
                     STAGE: tl.constexpr, WRITE_OUT: tl.constexpr, CHUNKED: tl.constexpr,
                     GROUP_ROWS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
    """One pass over a group of GROUP_ROWS rows: the sample step under the stored cluster step (none
    at _COLUMN), then either the output rows (WRITE_OUT) or the group's per-column partials.

    Unchunked (K <= BLOCK_K): rows go BLOCK_B at a time, the group's partials accumulate in
    registers. Chunked (GROUP_ROWS == BLOCK_B): an online row logsumexp over column chunks gives a,
    then a second sweep over the chunks writes partials or outputs.
    """
    inv_eps = tl.cast(inv_eps, tl.float32)  # Inductor passes Python floats as fp64 (torch.compile on a GPU)
    pid = tl.program_id(0)
    row_lo = pid * GROUP_ROWS
    row_hi = tl.minimum(row_lo + GROUP_ROWS, n_rows)
    part_m_ptr += pid.to(tl.int64) * n_cols
    part_l_ptr += pid.to(tl.int64) * n_cols
    if not CHUNKED:
        cols = tl.arange(0, BLOCK_K)
        if STAGE == _COLUMN:
            c = tl.zeros([BLOCK_K], tl.float32)
            b = c
        else:
            c, b = _load_cluster_step(c_ptr, m_ptr, l_ptr, cols, n_cols, STAGE)
        if WRITE_OUT:
            _softmax_rows(s_ptr, r_ptr, out_ptr, row_lo, row_hi, n_cols, stride, inv_eps, c, b, STAGE,
                          BLOCK_B, BLOCK_K)
        else:
            m, l = _col_stats(s_ptr, r_ptr, row_lo, row_hi, n_cols, stride, inv_eps, c, b, STAGE,
                              BLOCK_B, BLOCK_K)
            tl.store(part_m_ptr + cols, m, mask=cols < n_cols)
            tl.store(part_l_ptr + cols, l, mask=cols < n_cols)
    else:
        rows = row_lo + tl.arange(0, BLOCK_B)
        r = _row_shift(r_ptr, rows, row_hi, STAGE, BLOCK_B)
        row_m = tl.full([BLOCK_B], float("-inf"), tl.float32)
        row_l = tl.zeros([BLOCK_B], tl.float32)
        if STAGE != _COLUMN:
            for c0 in range(0, n_cols, BLOCK_K):
                cols = c0 + tl.arange(0, BLOCK_K)
                c, b = _load_cluster_step(c_ptr, m_ptr, l_ptr, cols, n_cols, STAGE)
                y = (_load_x(s_ptr, rows, cols, row_hi, n_cols, stride, inv_eps) - c[None, :]) + r[:, None]
                row_m, row_l = _lse_accumulate(row_m, row_l, y + b[None, :], 1)
        a = _neg_lse(row_m, row_l)
        if STAGE == _FIRST_ROW and not WRITE_OUT:
            tl.store(r_ptr + rows, a, mask=rows < row_hi)
        for c0 in range(0, n_cols, BLOCK_K):
            cols = c0 + tl.arange(0, BLOCK_K)
            y = _load_x(s_ptr, rows, cols, row_hi, n_cols, stride, inv_eps)
            if STAGE != _COLUMN:
                c, b = _load_cluster_step(c_ptr, m_ptr, l_ptr, cols, n_cols, STAGE)
                y = (y - c[None, :]) + r[:, None]
            if WRITE_OUT:
                t = _softmax_tile(y + b[None, :], row_m, row_l)
                mask = (rows < row_hi)[:, None] & (cols < n_cols)[None, :]
                tl.store(out_ptr + rows.to(tl.int64)[:, None] * n_cols + cols[None, :], t, mask=mask)
            else:
                part_m, part_l = _lse_parts(y + a[:, None], 0)
                tl.store(part_m_ptr + cols, part_m, mask=cols < n_cols)
                tl.store(part_l_ptr + cols, part_l, mask=cols < n_cols)


@triton.jit
def _combine_kernel(part_m_ptr, part_l_ptr, m_ptr, l_ptr, n_parts, n_cols, BLOCK: tl.constexpr,
                    BLOCK_P: tl.constexpr):
    """Cluster stats (m_k, l_k) from the row passes' partials."""
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    m, l = merge_partials(part_m_ptr, part_l_ptr, n_parts, n_cols, cols, mask, BLOCK_P)
    tl.store(m_ptr + cols, m, mask=mask)
    tl.store(l_ptr + cols, l, mask=mask)


@dataclass(frozen=True)
class SinkhornPlan(LaunchPlan):
    """Sinkhorn-Knopp's schedule: one program for the whole algorithm, or the multi-pass schedule
    with row groups of rows_per_program rows."""

    single_launch: bool


def launch_plan(n_rows: int, n_cols: int, multi_pass: bool) -> SinkhornPlan:
    """Tiles of about _TILE_NUMEL elements: whole rows when K fits, else column chunks."""
    if n_cols <= _WHOLE_ROW_MAX_COLS:
        block_k = triton.next_power_of_2(n_cols)
        block_b = min(triton.next_power_of_2(n_rows), max(1, _TILE_NUMEL // block_k))
        single = not multi_pass and n_rows * n_cols <= _SINGLE_LAUNCH_MAX_NUMEL
        group = max(block_b, min(_MAX_GROUP_ROWS, triton.next_power_of_2(triton.cdiv(n_rows, _TARGET_GROUPS))))
    else:
        block_k, block_b, single = _CHUNK_COLS, min(_CHUNK_ROWS, triton.next_power_of_2(n_rows)), False
        group = block_b
    return SinkhornPlan(block_b=block_b, block_k=block_k, rows_per_program=group,
                        num_warps=tile_warps(block_b, block_k, _ELEMENTS_PER_THREAD, 16), single_launch=single)


def _run(scores: torch.Tensor, eps: float, iters: int,
         reduce_columns: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None,
         wrap: Callable, plan: SinkhornPlan | None = None) -> torch.Tensor:
    """The launch sequence shared by the eager function (wrap = direct) and the op (wrap_triton)."""
    with on_device(scores):
        return _launch(scores, eps, iters, reduce_columns, wrap, plan)


def _launch(scores: torch.Tensor, eps: float, iters: int,
            reduce_columns: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None,
            wrap: Callable, plan: SinkhornPlan | None) -> torch.Tensor:
    assert scores.dim() == 2 and scores.dtype in (torch.float32, torch.float16, torch.bfloat16)
    assert eps > 0 and iters >= 1
    if scores.stride(1) != 1:
        scores = scores.contiguous()
    n_rows, n_cols = scores.shape
    plan = plan or launch_plan(n_rows, n_cols, multi_pass=reduce_columns is not None)
    device = scores.device
    out = torch.empty((n_rows, n_cols), dtype=torch.float32, device=device)
    row_shift = torch.empty(n_rows, dtype=torch.float32, device=device)
    inv_eps = 1.0 / eps
    if plan.single_launch:
        assert reduce_columns is None and plan.block_k >= n_cols
        wrap(_single_launch_kernel)[(1,)](
            scores, row_shift, out, n_rows, n_cols, scores.stride(0), inv_eps, iters,
            BLOCK_B=plan.block_b, BLOCK_K=plan.block_k, num_warps=plan.num_warps)
        return out

    chunked = plan.block_k < n_cols
    assert plan.rows_per_program % plan.block_b == 0 and (not chunked or plan.rows_per_program == plan.block_b)
    n_groups = triton.cdiv(n_rows, plan.rows_per_program)
    part_m = torch.empty((n_groups, n_cols), dtype=torch.float32, device=device)
    part_l = torch.empty_like(part_m)
    stats = torch.empty((4, n_cols), dtype=torch.float32, device=device)

    def row_pass(c: torch.Tensor, m: torch.Tensor, l: torch.Tensor, stage: int, write_out: bool) -> None:
        wrap(_row_pass_kernel)[(n_groups,)](
            scores, c, row_shift, m, l, part_m, part_l, out, n_rows, n_cols, scores.stride(0), inv_eps,
            STAGE=stage, WRITE_OUT=write_out, CHUNKED=chunked, GROUP_ROWS=plan.rows_per_program,
            BLOCK_B=plan.block_b, BLOCK_K=plan.block_k, num_warps=plan.num_warps)

    def combine(m: torch.Tensor, l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        wrap(_combine_kernel)[(triton.cdiv(n_cols, _COMBINE_COLS),)](
            part_m, part_l, m, l, n_groups, n_cols, BLOCK=_COMBINE_COLS, BLOCK_P=_COMBINE_PARTS, num_warps=4)
        if reduce_columns is None:
            return m, l
        m, l = reduce_columns(m, l)
        assert m.shape == l.shape == (n_cols,) and m.dtype == l.dtype == torch.float32
        return m.contiguous(), l.contiguous()

    # The first stats are kept as the shift c; later ones go to the other two rows of `stats`.
    row_pass(stats[0], stats[0], stats[1], _COLUMN.value, write_out=False)
    c, l = combine(stats[0], stats[1])
    m, stage = c, _FIRST_ROW.value
    for _ in range(iters - 1):
        row_pass(c, m, l, stage, write_out=False)
        m, l = combine(stats[2], stats[3])
        stage = _ROW.value
    row_pass(c, m, l, stage, write_out=True)
    return out


def sinkhorn_knopp(scores: torch.Tensor, eps: float, iters: int,
                   reduce_columns: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
                   | None = None) -> torch.Tensor:
    """SwAV's balanced assignments (B x K float32, rows sum to 1) from the Triton kernels, on
    scores' device; equal to `gedi_fast.reference.sinkhorn_knopp` up to fp32 rounding.

    Eager launcher without validation or host syncs (the public wrapper validates).

    `reduce_columns(m, l) -> (m, l)` is the distributed hook, called once after each of the `iters`
    cluster steps with this rank's per-cluster logsumexp pairs as float32 K-vectors: m_k is a max
    and l_k = sum_i exp(v_ik - m_k) over this rank's rows i of the current iterate v (S / eps at the
    first call, a shifted iterate later; the shifts per cluster are the same on every rank because
    they come from earlier results of the hook). It must return the pair over all ranks' rows:
    M = all-reduce MAX of m, then L = all-reduce SUM of l * exp(m - M). A positive constant factor
    on L changes nothing. With a hook the multi-pass schedule always runs.
    """
    return _run(scores, eps, iters, reduce_columns, direct)


@torch.library.triton_op("gedi_fast::sinkhorn_knopp_fused", mutates_args=())
def sinkhorn_knopp_fused(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """The Triton Sinkhorn-Knopp as a torch.library op, traceable by torch.compile.

    This body is also the op's fake kernel and its decomposition under AOT tracing, so off CUDA it
    traces the reference instead of launching kernels on CPU (or fake CPU) tensors.
    """
    if scores.device.type != "cuda":
        return _reference_fp32(scores, eps, iters)
    return _run(scores, eps, iters, None, torch.library.wrap_triton)


@sinkhorn_knopp_fused.register_kernel("cpu")
def _reference_fp32(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """On CPU the plain-torch reference is the runtime path."""
    return reference.sinkhorn_knopp(scores, eps, iters).float()
