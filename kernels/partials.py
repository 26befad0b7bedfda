"""The device helper both kernel modules merge per-column logsumexp partials with.

Each row-parallel pass leaves, per program and column, a (max, sum of exp(x - max)) pair; a column's
total merges them. One partial at a time makes that a chain of n_parts dependent steps (on the H200
the Sinkhorn combine at 32768 x 1000, 512 partials in one program, took three quarters of the op's
time); a tile of partials per step reduces across the tile instead.
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def merge_partials(part_m_ptr, part_l_ptr, n_parts, n_cols, cols, col_ok, BLOCK_P: tl.constexpr):
    """Per column in `cols`, the (max, sum of exp(x - max)) pair over the n_parts pairs stored row-wise in
    [n_parts, n_cols] arrays, BLOCK_P partials per step; a column without any finite max gives (-inf, 0)."""
    m = tl.full(cols.shape, float("-inf"), tl.float32)
    l = tl.zeros(cols.shape, tl.float32)
    parts = tl.arange(0, BLOCK_P)
    for start in range(0, n_parts, BLOCK_P):
        rows = start + parts
        ok = (rows < n_parts)[:, None] & col_ok[None, :]
        offsets = rows.to(tl.int64)[:, None] * n_cols + cols[None, :]
        tile_m = tl.load(part_m_ptr + offsets, mask=ok, other=float("-inf"))
        tile_l = tl.load(part_l_ptr + offsets, mask=ok, other=0.0)
        m_new = tl.maximum(m, tl.max(tile_m, 0))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        l = l * tl.exp(m - shift) + tl.sum(tile_l * tl.exp(tile_m - shift[None, :]), 0)
        m = m_new
    return m, l
