"""kernels/sinkhorn.py (gedi_fast.kernels.sinkhorn) under the Triton interpreter: every schedule against the float64 reference.

Tolerances: atol 1e-5 against float64 where the fp32 logits S / eps are moderate (SwAV scale). With
scores up to 1e4 and eps 0.01, S / eps (~1e6) itself carries fp32 rounding that no fp32 code avoids,
so there the kernel must match the float64 reference run on its own fp32-rounded logits within 1e-5,
and the true float64 result within 4x the error of the plain-torch fp32 reference (flash-attention's
rule, with margin). Where rows lie far below every column max (huge row and column offsets) both
fp32 implementations round alike, and the kernel's error may be at most 2x the fp32 reference's.
Padding (K not a power of two, B not a multiple of the row block, partial chunks) covers masked
rows and columns.
"""
from __future__ import annotations

import threading

import pytest
import torch
import triton

from gedi_fast import reference
from gedi_fast.kernels import launching, sinkhorn

pytestmark = pytest.mark.interpreter

ATOL = 1e-5
SCHEDULES = ("single", "multi")  # the launcher's own configurations, forced to one path
SMALL_BLOCKS = ("single_small_rows", "multi_grouped", "multi_chunked")
# Multi-pass with 8 x 64 tiles: several row groups and, at K = 300, several column chunks.
CHUNKED_PLAN = sinkhorn.SinkhornPlan(block_b=8, block_k=64, rows_per_program=8, num_warps=4, single_launch=False)


def _plan(schedule: str, n_rows: int, n_cols: int) -> sinkhorn.SinkhornPlan:
    """The launcher's choice for each path, or small blocks: several row blocks in one program,
    groups of several row blocks, several column chunks."""
    whole = triton.next_power_of_2(n_cols)
    return {
        "single": sinkhorn.launch_plan(n_rows, n_cols, multi_pass=False),
        "multi": sinkhorn.launch_plan(n_rows, n_cols, multi_pass=True),
        "single_small_rows": sinkhorn.SinkhornPlan(block_b=4, block_k=whole, rows_per_program=n_rows, num_warps=4,
                                                   single_launch=True),
        "multi_grouped": sinkhorn.SinkhornPlan(block_b=4, block_k=whole, rows_per_program=16, num_warps=4,
                                               single_launch=False),
        "multi_chunked": sinkhorn.SinkhornPlan(block_b=16, block_k=max(1, whole // 4), rows_per_program=16, num_warps=4,
                                               single_launch=False),
    }[schedule]


def _run(scores: torch.Tensor, eps: float, iters: int, schedule: str, reduce_columns=None) -> torch.Tensor:
    return sinkhorn._run(scores, eps, iters, reduce_columns, launching.direct, _plan(schedule, *scores.shape))


def _uniform(gen: torch.Generator, n_rows: int, n_cols: int, scale: float) -> torch.Tensor:
    return (torch.rand(n_rows, n_cols, generator=gen) * 2 - 1) * scale


def _check_assignments(out: torch.Tensor, n_rows: int, n_cols: int) -> None:
    assert out.shape == (n_rows, n_cols) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(1), torch.ones(n_rows), atol=ATOL, rtol=0)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("eps", [0.05, 0.5])
@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize("n_cols", [2, 3, 10, 100, 1000])
@pytest.mark.parametrize("n_rows", [1, 7, 64])
def test_swav_scale_matches_float64(gen, n_rows, n_cols, iters, eps, schedule):
    scores = _uniform(gen, n_rows, n_cols, 1.0)
    out = _run(scores, eps, iters, schedule)
    _check_assignments(out, n_rows, n_cols)
    expected = reference.sinkhorn_knopp(scores.double(), eps, iters)
    torch.testing.assert_close(out.double(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("schedule", SMALL_BLOCKS)
@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize(("n_rows", "n_cols"), [(7, 3), (7, 100), (64, 10), (37, 300)])
def test_small_blocks_match_float64(gen, n_rows, n_cols, iters, schedule):
    scores = _uniform(gen, n_rows, n_cols, 1.0)
    out = _run(scores, 0.05, iters, schedule)
    _check_assignments(out, n_rows, n_cols)
    expected = reference.sinkhorn_knopp(scores.double(), 0.05, iters)
    torch.testing.assert_close(out.double(), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize(("n_rows", "n_cols"), [(1, 2), (7, 3), (37, 300)])
@pytest.mark.parametrize(("scale", "schedule"),
                         [(scale, s) for s in SCHEDULES for scale in (1e2, 1e4)] + [(1e4, s) for s in SMALL_BLOCKS])
def test_huge_logits_finite_and_accurate(gen, scale, n_rows, n_cols, iters, schedule):
    eps = 0.01
    scores = _uniform(gen, n_rows, n_cols, scale)
    out = _run(scores, eps, iters, schedule)
    _check_assignments(out, n_rows, n_cols)
    logits32 = scores * (1.0 / eps)  # the kernel's own fp32 rounding of S / eps
    same_logits = reference.sinkhorn_knopp(logits32.double(), 1.0, iters)
    torch.testing.assert_close(out.double(), same_logits, atol=ATOL, rtol=0)
    exact = reference.sinkhorn_knopp(scores.double(), eps, iters)
    fp32_error = (reference.sinkhorn_knopp(scores, eps, iters).double() - exact).abs().max().item()
    assert (out.double() - exact).abs().max().item() <= 4 * fp32_error + 1e-6


@pytest.mark.parametrize("schedule", ["single", "multi_chunked"])
@pytest.mark.parametrize("iters", [1, 3])
@pytest.mark.parametrize(("n_rows", "n_cols"), [(7, 3), (64, 10), (37, 300)])
def test_huge_row_and_column_offsets_as_accurate_as_fp32_reference(gen, n_rows, n_cols, iters, schedule):
    """S = u + o_i + p_k with |o|, |p| up to 5e3: the offsets cancel exactly, but rows far below
    every column max are where adding small scaling vectors to huge logits loses digits. S sits on a
    2^-8 grid and eps = 1/64, so S / eps is exact in fp32 and only the algorithm's rounding shows."""
    eps = 1.0 / 64
    offsets = _uniform(gen, n_rows, 1, 5e3) + _uniform(gen, 1, n_cols, 5e3)
    scores = torch.round((_uniform(gen, n_rows, n_cols, 1.0) + offsets) * 256) / 256
    out = _run(scores, eps, iters, schedule)
    _check_assignments(out, n_rows, n_cols)
    exact = reference.sinkhorn_knopp(scores.double(), eps, iters)
    fp32_error = (reference.sinkhorn_knopp(scores, eps, iters).double() - exact).abs().max().item()
    assert (out.double() - exact).abs().max().item() <= 2 * fp32_error + 1e-6


@pytest.mark.parametrize("schedule", SCHEDULES + SMALL_BLOCKS)
@pytest.mark.parametrize(("n_rows", "n_cols"), [(7, 10), (37, 300)])
def test_fp16_scores(gen, n_rows, n_cols, schedule):
    scores = _uniform(gen, n_rows, n_cols, 1.0).half()
    out = _run(scores, 0.05, 3, schedule)
    _check_assignments(out, n_rows, n_cols)
    torch.testing.assert_close(out.double(), reference.sinkhorn_knopp(scores.double(), 0.05, 3), atol=ATOL, rtol=0)


def test_launcher_picks_single_launch_for_small_and_chunks_for_wide():
    assert sinkhorn.launch_plan(256, 10, multi_pass=False).single_launch
    assert sinkhorn.launch_plan(64, 3000, multi_pass=False).single_launch
    assert not sinkhorn.launch_plan(64, 3000, multi_pass=True).single_launch
    wide = sinkhorn.launch_plan(4096, 65536, multi_pass=False)
    assert not wide.single_launch and wide.block_k < 65536 and wide.block_b * wide.block_k <= 1 << 14


def test_wide_k_default_schedule(gen):
    """K above the whole-row limit: the launcher's own chunked schedule."""
    n_cols = sinkhorn._WHOLE_ROW_MAX_COLS + 904
    scores = _uniform(gen, 3, n_cols, 1.0)
    out = sinkhorn.sinkhorn_knopp(scores, 0.05, 2)
    _check_assignments(out, 3, n_cols)
    torch.testing.assert_close(out.double(), reference.sinkhorn_knopp(scores.double(), 0.05, 2), atol=ATOL, rtol=0)


def test_schedules_agree_with_many_blocks_and_chunks(gen):
    """B=37, K=300 with BLOCK_B=8, BLOCK_K=64: five row blocks and five column chunks."""
    scores = _uniform(gen, 37, 300, 1.0)
    single = sinkhorn.sinkhorn_knopp(scores, 0.05, 3)
    assert sinkhorn.launch_plan(37, 300, multi_pass=False).single_launch
    multi = sinkhorn._run(scores, 0.05, 3, None, launching.direct, CHUNKED_PLAN)
    torch.testing.assert_close(multi, single, atol=1e-6, rtol=0)
    torch.testing.assert_close(multi.double(), reference.sinkhorn_knopp(scores.double(), 0.05, 3), atol=ATOL, rtol=0)


def test_non_contiguous_scores(gen):
    scores = _uniform(gen, 40, 24, 1.0).t()
    torch.testing.assert_close(sinkhorn.sinkhorn_knopp(scores, 0.05, 3).double(),
                               reference.sinkhorn_knopp(scores.double(), 0.05, 3), atol=ATOL, rtol=0)


@pytest.mark.parametrize("schedule", ["single", "multi_grouped", "multi_chunked"])
def test_bitwise_deterministic(gen, schedule):
    scores = _uniform(gen, 37, 300, 1.0)
    assert torch.equal(_run(scores, 0.05, 3, schedule), _run(scores, 0.05, 3, schedule))


@pytest.mark.parametrize("iters", [1, 3])
def test_hook_called_once_per_cluster_step_and_identity_changes_nothing(gen, iters):
    scores = _uniform(gen, 16, 10, 1.0)
    calls = []

    def hook(m: torch.Tensor, l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append((m.dtype, l.dtype, tuple(m.shape), tuple(l.shape), bool(torch.isfinite(m).all())))
        return m, l

    hooked = sinkhorn.sinkhorn_knopp(scores, 0.05, iters, reduce_columns=hook)
    assert calls == [(torch.float32, torch.float32, (10,), (10,), True)] * iters
    plain = sinkhorn._run(scores, 0.05, iters, None, launching.direct,
                          sinkhorn.launch_plan(16, 10, multi_pass=True))
    assert torch.equal(hooked, plain)


def test_hook_constant_factor_on_l_cancels(gen):
    scores = _uniform(gen, 16, 10, 1.0)
    scaled = sinkhorn.sinkhorn_knopp(scores, 0.05, 3, reduce_columns=lambda m, l: (m, l * 37.0))
    torch.testing.assert_close(scaled, sinkhorn.sinkhorn_knopp(scores, 0.05, 3), atol=1e-6, rtol=0)


def _two_ranks_in_lockstep(halves: list[torch.Tensor], eps: float, iters: int,
                           plan: sinkhorn.SinkhornPlan | None) -> list[torch.Tensor]:
    """Each half on its own thread; the hook is an all-reduce through a shared dict. Only the
    thread holding the lock runs (waiting releases it), so the interpreter never runs two kernels
    at once."""
    lock = threading.Condition()
    posted: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
    outs: list[torch.Tensor | None] = [None, None]
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        step = 0

        def all_reduce(m: torch.Tensor, l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal step
            key, step = step, step + 1
            posted[(key, r)] = (m.clone(), l.clone())
            lock.notify_all()
            if not lock.wait_for(lambda: (key, 1 - r) in posted or errors, timeout=120) or errors:
                raise RuntimeError("the other rank never arrived")
            (m0, l0), (m1, l1) = posted[(key, 0)], posted[(key, 1)]
            top = torch.maximum(m0, m1)
            return top, l0 * torch.exp(m0 - top) + l1 * torch.exp(m1 - top)

        with lock:
            try:
                outs[r] = sinkhorn._run(halves[r], eps, iters, all_reduce, launching.direct, plan)
            except BaseException as exc:
                errors.append(exc)
                lock.notify_all()

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads), "a rank hung"
    return outs


@pytest.mark.parametrize("plan", [None, CHUNKED_PLAN], ids=["default", "chunked"])
@pytest.mark.parametrize("iters", [1, 3])
def test_two_ranks_equal_the_full_batch(gen, iters, plan):
    scores = _uniform(gen, 37, 300, 1.0)
    outs = _two_ranks_in_lockstep([scores[:18], scores[18:]], 0.05, iters, plan)
    union = torch.cat(outs)
    _check_assignments(union, 37, 300)
    torch.testing.assert_close(union.double(), reference.sinkhorn_knopp(scores.double(), 0.05, iters), atol=ATOL, rtol=0)
    alone = sinkhorn.sinkhorn_knopp(scores[:18], 0.05, iters)
    assert (alone - outs[0]).abs().max() > 1e-3  # the hook really coupled the ranks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_op_on_cpu_is_the_reference_and_passes_opcheck(gen, dtype):
    scores = _uniform(gen, 12, 10, 1.0).to(dtype)
    out = torch.ops.gedi_fast.sinkhorn_knopp_fused(scores, 0.05, 3)
    assert torch.equal(out, reference.sinkhorn_knopp(scores, 0.05, 3).float())
    torch.library.opcheck(torch.ops.gedi_fast.sinkhorn_knopp_fused.default, (scores, 0.05, 3))
