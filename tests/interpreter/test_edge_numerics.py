"""The Triton backend at the edges and under property-based tests (interpreter; tolerances in
tests/tolerances.py), bad layouts, and non-finite inputs.

The interpreter has no bf16, so bf16 at the edge is checked in the GPU lane (tests/test_gpu_triton.py).
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import EDGE_SINKHORN_ATOL, assert_matches_float64, sinkhorn_tolerance

from gedi_fast import GEDILoss, reference, sinkhorn_knopp
from gedi_fast.ops import ASSIGNMENTS

EDGE = dict(temperature=0.05, sinkhorn_eps=0.01)
PROPERTY = settings(deadline=None, max_examples=20, derandomize=True)


def uniform(gen: torch.Generator, rows: int, cols: int, scale: float, dtype: torch.dtype) -> torch.Tensor:
    return ((torch.rand(rows, cols, generator=gen) * 2 - 1) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
@pytest.mark.parametrize("batch,clusters,samples", [(16, 10, 8), (7, 3, 0)])
def test_huge_logits_match_float64(gen, dtype, assignment, batch, clusters, samples):
    inputs = [uniform(gen, n, clusters, 1e4, dtype) for n in (batch, batch, samples) if n]
    assert_matches_float64("triton", inputs, edge=True, assignment=assignment, energy_reg=0.01, **EDGE)


def test_saturated_ties_at_plus_minus_1e4(gen):
    inputs = [torch.where(torch.rand(9, 6, generator=gen) < 0.5, 1e4, -1e4).half() for _ in range(3)]
    assert_matches_float64("triton", inputs, edge=True, assignment="sinkhorn", energy_reg=0.01, **EDGE)


def test_sinkhorn_at_the_edge_fp16(gen):
    scores = uniform(gen, 37, 30, 1e4, torch.float16)
    q = sinkhorn_knopp(scores, 0.01, 3, backend="triton")
    assert torch.isfinite(q).all()
    assert (q.double() - reference.sinkhorn_knopp(scores.double(), 0.01, 3)).abs().max().item() <= EDGE_SINKHORN_ATOL


SCALES = st.floats(min_value=-2.0, max_value=4.0).map(lambda e: 10.0**e)


@PROPERTY
@given(batch=st.integers(1, 6), clusters=st.integers(2, 12), samples=st.integers(0, 3),
       dtype=st.sampled_from([torch.float32, torch.float16]), scale=SCALES,
       temperature=st.sampled_from([0.05, 0.1, 0.5, 1.0]), assignment=st.sampled_from(ASSIGNMENTS),
       eps=st.sampled_from([0.01, 0.05, 0.5]), seed=st.integers(0, 2**31 - 1))
def test_gedi_loss_matches_float64_reference(batch, clusters, samples, dtype, scale, temperature, assignment, eps,
                                            seed):
    gen = torch.Generator().manual_seed(seed)
    inputs = [uniform(gen, n, clusters, scale, dtype) for n in (batch, batch, samples) if n]
    energy_reg = 0.0 if dtype == torch.float16 else 0.01
    assert_matches_float64("triton", inputs, temperature=temperature, assignment=assignment, sinkhorn_eps=eps,
                           energy_reg=energy_reg)


@PROPERTY
@given(batch=st.integers(1, 20), clusters=st.integers(2, 40), iters=st.integers(1, 4),
       dtype=st.sampled_from([torch.float32, torch.float16]), scale=SCALES, eps=st.sampled_from([0.01, 0.05, 0.5]),
       seed=st.integers(0, 2**31 - 1))
def test_sinkhorn_matches_float64_reference(batch, clusters, iters, dtype, scale, eps, seed):
    scores = uniform(torch.Generator().manual_seed(seed), batch, clusters, scale, dtype)
    q = sinkhorn_knopp(scores, eps, iters, backend="triton")
    assert torch.isfinite(q).all()
    exact = reference.sinkhorn_knopp(scores.double(), eps, iters)
    assert (q.double() - exact).abs().max().item() <= sinkhorn_tolerance(scores, eps)


@pytest.mark.parametrize("layout", ["row slice", "expanded", "transposed"])
def test_strided_and_expanded_logits_equal_contiguous(gen, layout):
    # Regression: the kernels once read z2 with z1's row stride and wrote gradients with it.
    wide = torch.randn(8, 12, generator=gen)
    z1 = {"row slice": wide[:, 2:7], "expanded": torch.randn(1, 5, generator=gen).expand(8, 5),
          "transposed": torch.randn(5, 8, generator=gen).t()}[layout]
    z2, zn = torch.randn(8, 5, generator=gen), torch.randn(12, 10, generator=gen)[::3, 1::2]
    assert not z1.is_contiguous() and not zn.is_contiguous()
    results = []
    for inputs in ([z1, z2, zn], [z1.contiguous(), z2, zn.contiguous()]):
        leaves = [t.detach().requires_grad_(True) for t in inputs]
        loss = GEDILoss(backend="triton", energy_reg=0.01)(*leaves)
        loss.backward()
        results.append((loss.detach(), [t.grad for t in leaves]))
    (loss, grads), (want_loss, want_grads) = results
    assert torch.equal(loss, want_loss)
    for got, want in zip(grads, want_grads):
        assert torch.equal(got, want)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_logits_give_nan_loss_or_a_clear_error(gen, value):
    z1 = torch.randn(6, 4, generator=gen)
    z1[2, 1] = value
    for assignment in ASSIGNMENTS:
        assert math.isnan(GEDILoss(backend="triton", assignment=assignment)(z1, torch.zeros(6, 4)).item())
    with pytest.raises(ValueError, match="z1 must be finite"):
        GEDILoss(backend="triton", check_finite=True)(z1, torch.zeros(6, 4))
    assert torch.isnan(sinkhorn_knopp(z1, backend="triton")[2, 1])  # the reference: every row NaN
    with pytest.raises(ValueError, match="scores must be finite"):
        sinkhorn_knopp(z1, backend="triton", check_finite=True)
