"""Numerics at the edges and property-based comparisons of every op with the float64 reference, on the
plain-torch backend and the Triton kernels (interpreter lane), and of the C++ SGLD kernels with theirs;
the stated tolerances are in tests/tolerances.py.

Edge: fp16/bf16 logits up to +-1e4 with temperature 0.05 and Sinkhorn eps 0.01 give finite losses
and gradients within the edge tolerances of the float64 reference. Properties: hypothesis draws shapes,
dtypes and value scales (1e-2 to 1e4), deterministically (derandomize), and compares every op.
The interpreter has no bf16, so its edge cases run fp16 and fp32 (bf16 on the Triton kernels is
checked in the GPU lane, tests/test_gpu_triton.py).
"""
from __future__ import annotations

import math

import pytest
import torch
from backends import LOSS_BACKENDS, per_backend
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import EDGE_SINKHORN_ATOL, OUTPUT_ROUNDING, U, assert_matches_float64, sinkhorn_tolerance

from gedi_fast import GEDILoss, buffer_draw, reference, sgld_step_, sinkhorn_knopp
from gedi_fast.ops import ASSIGNMENTS

EDGE = dict(temperature=0.05, sinkhorn_eps=0.01)
EDGE_DTYPES = {"torch": [torch.float16, torch.bfloat16], "triton": [torch.float16, torch.float32]}
PROPERTY_DTYPES = {"torch": [torch.float32, torch.float16, torch.bfloat16], "triton": [torch.float32, torch.float16]}
PROPERTY = settings(deadline=None, max_examples=40, derandomize=True)


def uniform(gen: torch.Generator, rows: int, cols: int, scale: float, dtype: torch.dtype) -> torch.Tensor:
    return ((torch.rand(rows, cols, generator=gen) * 2 - 1) * scale).to(dtype)


# --- the edge: +-1e4, temperature 0.05, eps 0.01 ------------------------------------------------

@pytest.mark.parametrize("backend,dtype", per_backend(EDGE_DTYPES))
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
@pytest.mark.parametrize("batch,clusters,samples", [(64, 10, 16), (33, 100, 5), (7, 3, 0)])
def test_huge_logits_match_float64(gen, backend, dtype, assignment, batch, clusters, samples):
    inputs = [uniform(gen, n, clusters, 1e4, dtype) for n in (batch, batch, samples) if n]
    assert_matches_float64(backend, inputs, edge=True, assignment=assignment, energy_reg=0.01, **EDGE)


@pytest.mark.parametrize("backend,dtype", per_backend(EDGE_DTYPES))
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_saturated_ties_at_plus_minus_1e4(gen, backend, dtype, assignment):
    # Every logit at +-1e4: exact ties, one-hot and uniform rows, the largest energies.
    inputs = [torch.where(torch.rand(9, 6, generator=gen) < 0.5, 1e4, -1e4).to(dtype) for _ in range(3)]
    assert_matches_float64(backend, inputs, edge=True, assignment=assignment, energy_reg=0.01, **EDGE)


@pytest.mark.parametrize("backend,dtype", per_backend({name: [*dtypes, torch.float32] if torch.float32 not in dtypes
                                                             else dtypes for name, dtypes in EDGE_DTYPES.items()}))
@pytest.mark.parametrize("batch,clusters", [(64, 10), (7, 3), (37, 300)])
def test_sinkhorn_at_the_edge(gen, backend, dtype, batch, clusters):
    scores = uniform(gen, batch, clusters, 1e4, dtype)
    q = sinkhorn_knopp(scores, 0.01, 3, backend=backend)
    assert q.dtype == torch.float32 and torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(batch), rtol=0, atol=1e-6)
    exact = reference.sinkhorn_knopp(scores.double(), 0.01, 3)
    assert (q.double() - exact).abs().max().item() <= EDGE_SINKHORN_ATOL


# --- non-finite inputs: documented behaviour without check_finite ---------------------------------

@pytest.mark.parametrize("backend", LOSS_BACKENDS)
@pytest.mark.parametrize("value", [math.nan, math.inf])
@pytest.mark.parametrize("where", [0, 1, 2])
def test_nan_or_inf_logits_give_a_non_finite_loss_without_check(gen, backend, value, where):
    z = [torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen), torch.randn(2, 4, generator=gen)]
    z[where][1, 2] = value
    for assignment in ASSIGNMENTS:
        assert not math.isfinite(GEDILoss(backend=backend, assignment=assignment)(*z).item())
    with pytest.raises(ValueError, match=f"{('z1', 'z2', 'zn')[where]} must be finite"):
        GEDILoss(backend=backend, check_finite=True)(*z)
    # Sinkhorn: NaN where the bad score is (the reference makes every row NaN, the kernels need not).
    assert torch.isnan(sinkhorn_knopp(z[where], backend=backend)[1, 2])
    with pytest.raises(ValueError, match="scores must be finite"):
        sinkhorn_knopp(z[where], backend=backend, check_finite=True)


@pytest.mark.parametrize("backend", LOSS_BACKENDS)
def test_minus_inf_logit_is_a_cluster_of_probability_zero(backend):
    zn = torch.zeros(2, 3)
    zn[0, 1] = -math.inf
    loss = GEDILoss(backend=backend)(torch.zeros(4, 3), torch.zeros(4, 3), zn)
    assert torch.isfinite(loss)
    q = sinkhorn_knopp(torch.tensor([[0.0, -math.inf], [0.0, 0.0]]), backend=backend)
    assert q[0, 1] == 0 and torch.isfinite(q).all()


def masked_views(gen: torch.Generator, column: bool) -> list[torch.Tensor]:
    """Views of 7 x 5 and samples of 3 x 5 with cluster 2 masked by -inf: in one row of both views and of
    the samples, or (column) in every view and sample row."""
    z = [torch.randn(7, 5, generator=gen) * 3, torch.randn(7, 5, generator=gen) * 3, torch.randn(3, 5, generator=gen)]
    for logits in z:
        if column:
            logits[:, 2] = -math.inf
        else:
            logits[1, 2] = -math.inf
    return z


@pytest.mark.parametrize("backend", LOSS_BACKENDS)
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
@pytest.mark.parametrize("column", [False, True], ids=["entry", "column"])
def test_a_masked_cluster_gives_the_formulas_value_never_nan(gen, backend, assignment, column):
    """-inf is the limit of a very negative logit: the terms equal the float64 formula on -1e4 there (whose
    probabilities underflow to exactly 0), so 0 log 0 counts 0. A whole masked column makes the prior +inf,
    as the formula does (the uniform prior puts mass on a cluster of probability 0); nothing is NaN."""
    z = [t.requires_grad_(True) for t in masked_views(gen, column)]
    loss_fn = GEDILoss(backend=backend, assignment=assignment, energy_reg=0.1)
    loss, terms = loss_fn(*z, return_terms=True)
    # Sinkhorn would balance mass onto any finite column however low, so a column masked in every row
    # is no limit of finite ones there: it is left out of the balancing (documented), and the float64
    # reference on the masked input itself is the oracle.
    left_out = column and assignment == "sinkhorn"
    limit = [t.detach().double() if left_out else t.detach().double().nan_to_num(neginf=-1e4) for t in z]
    expected = reference.gedi_terms(*limit, loss_fn.temperature, assignment=assignment,
                                    sinkhorn_eps=loss_fn.sinkhorn_eps, sinkhorn_iters=loss_fn.sinkhorn_iters)
    for name in ("gen", "inv", "energy_reg", "cluster_entropy"):
        assert torch.isfinite(terms[name]), name
        torch.testing.assert_close(terms[name].double(), expected[name], rtol=1e-5, atol=1e-5)
    assert not math.isnan(loss.item())
    if column:
        assert terms["prior"].item() == math.inf and loss.item() == math.inf
        assert expected["prior"].item() > 1e4  # at -1e4 already; it grows without bound as the logit falls
        return
    torch.testing.assert_close(terms["prior"].double(), expected["prior"], rtol=1e-5, atol=1e-5)
    loss.backward()
    for logits in z:
        assert torch.isfinite(logits.grad).all()
        assert (logits.grad[1, 2] == 0).all()  # a cluster of probability 0 gets no gradient


@pytest.mark.parametrize("backend", LOSS_BACKENDS)
def test_sinkhorn_leaves_a_cluster_masked_in_every_row_out(gen, backend):
    scores = torch.randn(7, 5, generator=gen) * 4
    scores[:, 2] = -math.inf
    q = sinkhorn_knopp(scores, eps=0.05, iters=3, backend=backend)
    kept = sinkhorn_knopp(scores[:, [0, 1, 3, 4]].double(), eps=0.05, iters=3, backend="torch")
    assert (q[:, 2] == 0).all() and torch.isfinite(q).all()
    torch.testing.assert_close(q[:, [0, 1, 3, 4]].double(), kept, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", LOSS_BACKENDS)
def test_sinkhorn_stays_finite_while_scores_over_eps_fit_in_fp32(gen, backend):
    scores = (torch.rand(6, 5, generator=gen) * 2 - 1) * 1e36  # / eps = 1e38, below fp32's 3.4e38
    q = sinkhorn_knopp(scores, eps=0.01, backend=backend)
    assert torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(6), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", LOSS_BACKENDS)
def test_a_term_of_weight_zero_cannot_make_the_loss_nan(backend):
    """Logits of 1e19 square to an fp32 overflow in energy_reg; at weight 0 it is left out, not 0 * inf."""
    z = torch.full((4, 3), 1e19)
    loss, terms = GEDILoss(backend=backend, energy_reg=0.0)(z, z, z, return_terms=True)
    assert terms["energy_reg"].item() == math.inf and math.isfinite(loss.item())


def test_nan_propagates_through_sgld_and_buffer_draw():
    x = torch.tensor([math.nan, 1.0, math.inf])
    sgld_step_(x, torch.zeros(3), 0.1, 0.0)
    assert math.isnan(x[0]) and x[1] == 1.0 and math.isinf(x[2])
    buffer = torch.tensor([[math.nan], [2.0]])
    out, _ = buffer_draw(buffer, torch.tensor([0, 1]), reinit_prob=0.0)
    assert math.isnan(out[0, 0]) and out[1, 0] == 2.0


@pytest.mark.interpreter
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


# --- properties: every op against the reference ---------------------------------------------------

SCALES = st.floats(min_value=-2.0, max_value=4.0).map(lambda e: 10.0**e)
SEEDS = st.integers(0, 2**31 - 1)


@pytest.mark.parametrize("backend", LOSS_BACKENDS)
@PROPERTY
@given(batch=st.integers(1, 9), clusters=st.integers(2, 40), samples=st.integers(0, 5), dtype_index=st.integers(0, 2),
       scale=SCALES, temperature=st.sampled_from([0.05, 0.1, 0.5, 1.0]),
       assignment=st.sampled_from(ASSIGNMENTS), eps=st.sampled_from([0.01, 0.05, 0.5]), seed=SEEDS)
def test_gedi_loss_matches_float64_reference(backend, batch, clusters, samples, dtype_index, scale, temperature,
                                            assignment, eps, seed):
    dtypes = PROPERTY_DTYPES[backend]
    dtype = dtypes[dtype_index % len(dtypes)]
    gen = torch.Generator().manual_seed(seed)
    inputs = [uniform(gen, n, clusters, scale, dtype) for n in (batch, batch, samples) if n]
    # energy_reg's gradient, ~|E| / (rows temperature), would overflow fp16 at the largest scales.
    energy_reg = 0.0 if dtype == torch.float16 else 0.01
    assert_matches_float64(backend, inputs, temperature=temperature, assignment=assignment, sinkhorn_eps=eps,
                           energy_reg=energy_reg)


@pytest.mark.parametrize("backend", LOSS_BACKENDS)
@PROPERTY
@given(batch=st.integers(1, 40), clusters=st.integers(2, 60), iters=st.integers(1, 5), dtype_index=st.integers(0, 2),
       scale=SCALES, eps=st.sampled_from([0.01, 0.05, 0.5]), seed=SEEDS)
def test_sinkhorn_matches_float64_reference(backend, batch, clusters, iters, dtype_index, scale, eps, seed):
    dtypes = PROPERTY_DTYPES[backend]
    scores = uniform(torch.Generator().manual_seed(seed), batch, clusters, scale, dtypes[dtype_index % len(dtypes)])
    q = sinkhorn_knopp(scores, eps, iters, backend=backend)
    assert torch.isfinite(q).all()
    exact = reference.sinkhorn_knopp(scores.double(), eps, iters)
    assert (q.double() - exact).abs().max().item() <= sinkhorn_tolerance(scores, eps)


@PROPERTY
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=4), dtype=st.sampled_from(list(OUTPUT_ROUNDING)[:3]),
       scale=SCALES, step_size=st.floats(0.0, 2.0), noise_std=st.floats(0.0, 1.0),
       clamp=st.sampled_from([None, 1.0, (-0.5, 3.0)]), seed=SEEDS, offset=st.integers(0, 2**64 - 1))
def test_sgld_step_matches_reference(shape, dtype, scale, step_size, noise_std, clamp, seed, offset):
    gen = torch.Generator().manual_seed(seed)
    x = ((torch.rand(shape, generator=gen) * 2 - 1) * scale).to(dtype)
    grad = ((torch.rand(shape, generator=gen) * 2 - 1) * scale).to(dtype)
    noise = reference.philox_normal(x.numel(), seed, offset).reshape(shape)
    bounds = (-clamp, clamp) if isinstance(clamp, float) else clamp
    want = reference.sgld_step(x, grad, step_size, noise_std, noise, bounds).double()
    got = sgld_step_(x.clone(), grad, step_size, noise_std, seed=seed, offset=offset, clamp=clamp).double()
    # One rounding into the dtype apart, plus float32 Box-Muller against the reference's float64.
    size = x.double().abs() + step_size * grad.double().abs() + noise_std * noise.abs()
    allowed = 2 * OUTPUT_ROUNDING[dtype] * want.abs() + 4 * U * size + noise_std * 4e-6
    assert (got - want).abs().le(allowed).all()


@PROPERTY
@given(rows=st.integers(1, 30), row_shape=st.lists(st.integers(1, 5), max_size=3), draws=st.integers(0, 40),
       dtype=st.sampled_from(list(OUTPUT_ROUNDING)[:3]), reinit_prob=st.floats(0.0, 1.0),
       low=st.floats(-1e4, 1e4), width=SCALES, seed=SEEDS, offset=st.integers(0, 2**64 - 1))
def test_buffer_draw_equals_reference(rows, row_shape, draws, dtype, reinit_prob, low, width, seed, offset):
    gen = torch.Generator().manual_seed(seed)
    buffer = torch.randn(rows, *row_shape, generator=gen).to(dtype)
    indices = torch.randint(0, rows, (draws,), generator=gen)
    high = low + width
    got, got_mask = buffer_draw(buffer, indices, reinit_prob, low, high, seed=seed, offset=offset)
    want, want_mask = reference.buffer_draw(buffer, indices, reinit_prob, low, high, seed, offset)
    assert torch.equal(got_mask, want_mask) and torch.equal(got, want)
