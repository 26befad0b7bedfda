"""The reference objective against hand-derived values, SwAV's literal loop and the naive formulas."""
from __future__ import annotations

import math

import pytest
import torch

from gedi_fast import reference

LN2, LN3 = math.log(2.0), math.log(3.0)


def swav_sinkhorn(scores: torch.Tensor, eps: float, iters: int) -> torch.Tensor:
    """SwAV's distributed_sinkhorn on one process, literally (main_swav.py)."""
    q = torch.exp(scores / eps).t()
    q /= q.sum()
    k, b = q.shape
    for _ in range(iters):
        q /= q.sum(dim=1, keepdim=True)
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def naive_terms(z1, z2, zn, temperature, targets=None):
    """docs/DESIGN.md's formulas taken literally in float64 (softmax, then log; pbar, then log)."""
    q1, q2 = torch.softmax(z1 / temperature, -1), torch.softmax(z2 / temperature, -1)
    e = lambda z: -torch.logsumexp(z / temperature, -1)  # noqa: E731
    ev = torch.cat([e(z1), e(z2)])
    t1, t2 = (q1, q2) if targets is None else targets
    batch, k = z1.shape
    inv = -((t2 * q1.log()).sum() + (t1 * q2.log()).sum()) / (2 * batch)
    pbar = torch.cat([q1, q2]).mean(0)
    prior = ((1 / k) * (math.log(1 / k) - pbar.log())).sum()
    if zn is None:
        return {"gen": torch.zeros(()), "inv": inv, "prior": prior, "energy_reg": (ev**2).mean()}
    en = e(zn)
    return {"gen": ev.mean() - en.mean(), "inv": inv, "prior": prior, "energy_reg": (ev**2).mean() + (en**2).mean()}


@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_terms_by_hand_two_clusters(temperature):
    # s1 = (0, ln 3): q1 = (1/4, 3/4), lse = ln 4.  s2 = (ln 3, 0): q2 = (3/4, 1/4).  sn = (0, 0): lse = ln 2.
    z1 = torch.tensor([[0.0, LN3]], dtype=torch.float64) * temperature
    z2 = torch.tensor([[LN3, 0.0]], dtype=torch.float64) * temperature
    zn = torch.zeros(1, 2, dtype=torch.float64)
    t = reference.gedi_terms(z1, z2, zn, temperature)
    expected = {
        "gen": -2 * LN2 + LN2,
        "inv": -(0.75 * math.log(0.25) + 0.25 * math.log(0.75)),
        "prior": 0.0,  # pbar = (1/2, 1/2)
        "energy_reg": (2 * LN2) ** 2 + LN2**2,
        "energy_data": -2 * LN2,
        "energy_neg": -LN2,
        "cluster_entropy": LN2,
    }
    for name, value in expected.items():
        assert t[name].item() == pytest.approx(value, abs=1e-12), name


def test_prior_and_sinkhorn_inv_by_hand():
    # Both views (0, ln 3): pbar = (1/4, 3/4); prior = 1/2 ln(1/2 / 1/4) + 1/2 ln(1/2 / 3/4) = 1/2 ln(4/3).
    z = torch.tensor([[0.0, LN3]], dtype=torch.float64)
    t = reference.gedi_terms(z, z.clone(), None, 1.0, assignment="sinkhorn")
    assert t["prior"].item() == pytest.approx(0.5 * math.log(4 / 3), abs=1e-12)
    # One sample: Sinkhorn's targets are uniform (1/2, 1/2), so inv = -1/2 (ln 1/4 + ln 3/4).
    assert t["inv"].item() == pytest.approx(-0.5 * (math.log(0.25) + math.log(0.75)), abs=1e-12)
    assert t["gen"].item() == 0.0
    assert math.isnan(t["energy_neg"].item())


def test_sinkhorn_by_hand_symmetric_two_by_two():
    # exp(S/eps) = [[e, 1], [1, e]] is already balanced: the assignment is the row softmax, sigmoid(a/eps).
    a, eps = 0.1, 0.05
    q = reference.sinkhorn_knopp(torch.tensor([[a, 0.0], [0.0, a]], dtype=torch.float64), eps, 3)
    p = 1 / (1 + math.exp(-a / eps))
    torch.testing.assert_close(q, torch.tensor([[p, 1 - p], [1 - p, p]], dtype=torch.float64), rtol=0, atol=1e-14)


@pytest.mark.parametrize("batch,clusters", [(1, 2), (7, 3), (64, 10), (33, 101), (64, 3000), (256, 10)])
@pytest.mark.parametrize("iters", [1, 3, 7])
def test_sinkhorn_matches_swav_where_swav_is_finite(gen, batch, clusters, iters):
    scores = torch.rand(batch, clusters, generator=gen, dtype=torch.float64) * 2 - 1  # SwAV's cosine scores
    expected = swav_sinkhorn(scores.clone(), 0.05, iters)
    assert torch.isfinite(expected).all()
    torch.testing.assert_close(reference.sinkhorn_knopp(scores, 0.05, iters), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sinkhorn_finite_where_swav_is_not(gen, dtype):
    scores = (torch.rand(64, 10, generator=gen, dtype=torch.float64) * 2 - 1) * 1e4
    assert not torch.isfinite(swav_sinkhorn(scores.clone(), 0.01, 3)).all()  # SwAV overflows here
    q = reference.sinkhorn_knopp(scores.to(dtype), 0.01, 3)
    assert q.dtype == dtype and torch.isfinite(q).all()
    torch.testing.assert_close(q.sum(1), torch.ones(64, dtype=dtype))
    assert (q >= 0).all()


def test_sinkhorn_balances_clusters_with_enough_iterations(gen):
    scores = torch.randn(200, 8, generator=gen, dtype=torch.float64)
    q = reference.sinkhorn_knopp(scores, 0.5, 200)
    torch.testing.assert_close(q.sum(0), torch.full((8,), 200 / 8, dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_float32_results_of_the_upcast_values(gen, dtype):
    z1, z2, zn = (torch.randn(9, 5, generator=gen).to(dtype) * 4 for _ in range(3))
    for assignment in reference.ASSIGNMENTS:
        low = reference.gedi_terms(z1, z2, zn, 0.1, assignment)
        full = reference.gedi_terms(z1.float(), z2.float(), zn.float(), 0.1, assignment)
        for name in full:
            assert low[name].dtype == torch.float32
            torch.testing.assert_close(low[name], full[name], rtol=0, atol=0, equal_nan=True)
    assert reference.sinkhorn_knopp(z1).dtype == torch.float32


@pytest.mark.parametrize("batch,clusters,samples", [(1, 2, 1), (7, 3, 5), (16, 10, 0), (5, 101, 3)])
def test_log_domain_terms_equal_the_naive_formulas(gen, batch, clusters, samples):
    z1, z2 = (torch.randn(batch, clusters, generator=gen, dtype=torch.float64) * 3 for _ in range(2))
    zn = torch.randn(samples, clusters, generator=gen, dtype=torch.float64) * 3 if samples else None
    got = reference.gedi_terms(z1, z2, zn, 0.5)
    want = naive_terms(z1, z2, zn, 0.5)
    for name, value in want.items():
        torch.testing.assert_close(got[name], value.to(torch.float64), rtol=1e-10, atol=1e-12)
    sk = reference.gedi_terms(z1, z2, zn, 0.5, "sinkhorn", 0.3, 4)
    targets = (swav_sinkhorn(z1, 0.3, 4), swav_sinkhorn(z2, 0.3, 4))
    torch.testing.assert_close(sk["inv"], naive_terms(z1, z2, zn, 0.5, targets)["inv"], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("assignment", reference.ASSIGNMENTS)
def test_huge_logits_stay_finite(gen, assignment):
    z1, z2, zn = ((torch.rand(7, 5, generator=gen) * 2 - 1) * 1e4 for _ in range(3))
    for z in (z1, z2, zn):
        z.requires_grad_(True)
    terms = reference.gedi_terms(z1, z2, zn, 0.05, assignment, 0.01, 3)
    loss = reference.weighted_loss(terms, {"gen": 1.0, "inv": 1.0, "prior": 1.0, "energy_reg": 1e-6})
    loss.backward()
    assert all(torch.isfinite(v) for v in terms.values())
    assert all(torch.isfinite(z.grad).all() for z in (z1, z2, zn))


def test_sgld_step_reference_formula():
    x = torch.tensor([0.5, -2.0, 3.0])
    g = torch.tensor([1.0, 1.0, -1.0])
    noise = torch.tensor([1.0, -1.0, 0.0])
    out = reference.sgld_step(x, g, 0.5, 0.1, noise, clamp=(-1.0, 1.0))
    torch.testing.assert_close(out, torch.tensor([0.1, -1.0, 1.0]))


@pytest.mark.parametrize("assignment", reference.ASSIGNMENTS)
@pytest.mark.parametrize("batch,clusters,samples", [(1, 2, 0), (6, 5, 3), (9, 17, 0)])
def test_analytic_gradients_equal_autograd(gen, assignment, batch, clusters, samples):
    z1, z2 = (torch.randn(batch, clusters, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
    zn = torch.randn(samples, clusters, generator=gen, dtype=torch.float64).requires_grad_() if samples else None
    weights = [0.7, 1.3, 0.9, 0.05]
    targets = reference.assignment_targets(z1, z2, assignment, 0.5, 3)
    terms = reference.terms_from_statistics(reference.gedi_statistics(z1, z2, zn, 0.4, targets))
    terms["loss"] = reference.weighted_loss(terms, dict(zip(reference.TERM_NAMES, weights)))
    vector = torch.stack([terms[name] for name in reference.TERM_VECTOR[:5]])
    grad = torch.rand(len(reference.TERM_VECTOR), generator=gen, dtype=torch.float64)
    leaves = [z1, z2] + ([zn] if samples else [])
    want = torch.autograd.grad(vector, leaves, grad[:5])
    got = reference.gedi_gradients(grad, z1.detach(), z2.detach(), None if zn is None else zn.detach(), 0.4,
                                   weights, targets)
    assert (got[2] is None) == (zn is None)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch,clusters,scale", [(1, 2, 1.0), (7, 3, 5.0), (5, 17, 1e4), (33, 1001, 30.0)])
@pytest.mark.parametrize("temperature", [1.0, 0.05])
def test_energy_grad_is_the_autograd_gradient_of_the_energy(gen, batch, clusters, scale, temperature):
    z = (scale * torch.randn(batch, clusters, generator=gen, dtype=torch.float64)).requires_grad_(True)
    (want,) = torch.autograd.grad(reference.energy(z, temperature).sum(), z)
    got = reference.energy_grad(z, temperature)
    assert torch.isfinite(got).all() and not got.requires_grad
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_energy_grad_keeps_the_logits_dtype_and_computes_in_float32(gen, dtype):
    z = (1e4 * torch.randn(6, 9, generator=gen)).to(dtype)  # z / 0.1 overflows fp16: finite only in float32
    got = reference.energy_grad(z, 0.1)
    assert got.dtype == dtype and torch.isfinite(got).all()
    torch.testing.assert_close(got, reference.energy_grad(z.double(), 0.1).to(dtype))
