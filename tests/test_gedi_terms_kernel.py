"""The fused GEDI-terms kernels (forward and backward) under the Triton interpreter vs the float64 reference."""
from __future__ import annotations

import pytest
import torch

from gedi_fast import GEDILoss, reference
from gedi_fast.kernels import gedi_terms as fused
from gedi_fast.ops import ASSIGNMENTS

pytestmark = pytest.mark.interpreter

WEIGHTS = [0.7, 1.3, 0.9, 0.01]  # gen, inv, prior, energy_reg


def reference_vector_and_grads(z1, z2, zn, targets, temperature, grad_terms, dtype=torch.float64):
    """Terms vector and input gradients of the reference, run on the inputs cast to dtype.

    float64 is the oracle; the inputs' own dtype gives the same-precision torch implementation
    (internally float32, gradients in the inputs' dtype), whose error sets the low-precision bar.
    """
    inputs = [t.detach().to(dtype).requires_grad_(True) for t in (z1, z2) + (() if zn is None else (zn,))]
    stats = reference.gedi_statistics(inputs[0], inputs[1], inputs[2] if zn is not None else None, temperature,
                                      None if targets is None else tuple(t.to(dtype) for t in targets))
    terms = reference.terms_from_statistics(stats)
    terms["loss"] = reference.weighted_loss(terms, dict(zip(reference.TERM_NAMES, WEIGHTS)))
    vector = torch.stack([terms[name] for name in reference.TERM_VECTOR])
    grads = torch.autograd.grad(vector[:5], inputs, grad_terms[:5].to(vector.dtype))
    return vector.detach(), grads


def assert_within_twice_torch_error(got, same_precision, oracle, floor_rtol=1e-6):
    """Kernel error vs the float64 oracle at most twice the same-precision torch error (flash-attention's rule).

    The terms vector is compared entry by entry (each entry is its own quantity), a gradient by its
    largest error; a floor of floor_rtol relative covers entries torch gets exact by luck.
    """
    magnitude = oracle.abs().nan_to_num()
    got_err = (got.double() - oracle).abs().nan_to_num()
    torch_err = (same_precision.double() - oracle).abs().nan_to_num()
    if oracle.dim() != 1:
        magnitude, got_err, torch_err = magnitude.max(), got_err.max(), torch_err.max()
    allowed = 2 * torch_err + floor_rtol * magnitude + 1e-7
    assert (got_err <= allowed).all(), f"error {got_err.max():.3g}, torch's {torch_err.max():.3g}"


def run_kernel(z1, z2, zn, targets, temperature, grad_terms):
    inputs = [t.detach().clone().requires_grad_(True) for t in (z1, z2) + (() if zn is None else (zn,))]
    vector = fused.gedi_terms(inputs[0], inputs[1], inputs[2] if zn is not None else None, targets, temperature,
                              WEIGHTS)
    vector.backward(grad_terms)
    return vector.detach(), [t.grad for t in inputs]


def assert_matches(got_vector, got_grads, want_vector, want_grads, rtol):
    torch.testing.assert_close(got_vector.double(), want_vector, rtol=rtol, atol=rtol, equal_nan=True)
    for got, want in zip(got_grads, want_grads):
        scale = want.abs().max().item() + 1e-30
        assert got.dtype in (torch.float32, torch.float16)
        err = (got.double() - want).abs().max().item()
        assert err <= rtol * scale + 1e-7, f"gradient error {err:.3g} vs scale {scale:.3g}"


def make_inputs(gen, batch, clusters, samples, scale, dtype=torch.float32):
    z1, z2 = ((torch.rand(batch, clusters, generator=gen) * 2 - 1) * scale for _ in range(2))
    zn = (torch.rand(samples, clusters, generator=gen) * 2 - 1) * scale if samples else None
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(z1), cast(z2), cast(zn)


def sinkhorn_targets(z1, z2, eps):
    return tuple(reference.sinkhorn_knopp(z.float(), eps, 3).float() for z in (z1, z2))


@pytest.mark.parametrize("batch", [1, 7, 64])
@pytest.mark.parametrize("clusters", [2, 3, 10, 100, 1000])
@pytest.mark.parametrize("samples", [0, 5])
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_terms_and_gradients_match_reference(gen, batch, clusters, samples, assignment):
    z1, z2, zn = make_inputs(gen, batch, clusters, samples, scale=3.0)
    targets = sinkhorn_targets(z1, z2, 0.5) if assignment == "sinkhorn" else None
    grad_terms = torch.rand(len(reference.TERM_VECTOR), generator=gen)
    got = run_kernel(z1, z2, zn, targets, 0.5, grad_terms)
    want = reference_vector_and_grads(z1, z2, zn, targets, 0.5, grad_terms)
    assert_matches(*got, *want, rtol=2e-5)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
@pytest.mark.parametrize("batch,clusters,samples", [(7, 10, 5), (64, 1000, 0), (1, 3, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_huge_logits_no_worse_than_torch_at_the_same_precision(gen, assignment, batch, clusters, samples, dtype):
    # Logits of +-1e4 at temperature 0.05: |s| up to 2e5, where one float32 ulp is 0.016, so log q and
    # pbar carry ~1e-4 relative rounding whichever way they are computed: that is the terms' floor.
    z1, z2, zn = make_inputs(gen, batch, clusters, samples, scale=1e4, dtype=dtype)
    targets = sinkhorn_targets(z1, z2, 0.01) if assignment == "sinkhorn" else None
    grad_terms = torch.zeros(len(reference.TERM_VECTOR))
    grad_terms[1:4] = torch.rand(3, generator=gen)  # gen, inv, prior: energy_reg's gradient (~1e6) overflows fp16
    got_vector, got_grads = run_kernel(z1, z2, zn, targets, 0.05, grad_terms)
    assert torch.isfinite(got_vector[:6]).all() and all(torch.isfinite(g).all() for g in got_grads)
    same_vector, same_grads = reference_vector_and_grads(z1, z2, zn, targets, 0.05, grad_terms, dtype=dtype)
    want_vector, want_grads = reference_vector_and_grads(z1, z2, zn, targets, 0.05, grad_terms)
    assert_within_twice_torch_error(got_vector, same_vector, want_vector, floor_rtol=1e-4)
    for got, same, want in zip(got_grads, same_grads, want_grads):
        assert got.dtype == dtype
        assert_within_twice_torch_error(got, same, want)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_float16_inputs_no_worse_than_torch_at_the_same_precision(gen, assignment):
    z1, z2, zn = make_inputs(gen, 33, 100, 5, scale=8.0, dtype=torch.float16)
    targets = sinkhorn_targets(z1, z2, 0.5) if assignment == "sinkhorn" else None
    grad_terms = torch.rand(len(reference.TERM_VECTOR), generator=gen)
    got_vector, got_grads = run_kernel(z1, z2, zn, targets, 0.1, grad_terms)
    same_vector, same_grads = reference_vector_and_grads(z1, z2, zn, targets, 0.1, grad_terms, dtype=torch.float16)
    want_vector, want_grads = reference_vector_and_grads(z1, z2, zn, targets, 0.1, grad_terms)
    assert_within_twice_torch_error(got_vector, same_vector, want_vector)
    for got, same, want in zip(got_grads, same_grads, want_grads):
        assert got.dtype == torch.float16
        assert_within_twice_torch_error(got, same, want)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
@pytest.mark.parametrize("clusters", [37, 300])
def test_chunked_columns_many_programs_and_separate_combine(gen, monkeypatch, assignment, clusters):
    # Force every path the large shapes take: column chunks, several programs, the combine kernel.
    monkeypatch.setattr(fused, "SINGLE_CHUNK_MAX", 16)
    monkeypatch.setattr(fused, "CHUNK_COLUMNS", 16)
    monkeypatch.setattr(fused, "CHUNK_ROWS", 4)
    monkeypatch.setattr(fused, "COMBINE_IN_FINALIZE_MAX", 0)
    z1, z2, zn = make_inputs(gen, 37, clusters, 6, scale=5.0)
    targets = sinkhorn_targets(z1, z2, 0.5) if assignment == "sinkhorn" else None
    grad_terms = torch.rand(len(reference.TERM_VECTOR), generator=gen)
    for plan in (fused.forward_plan(37, 6, clusters), fused.backward_plan(37, 6, clusters)):
        assert not plan.single_chunk and plan.view_programs > 1
    got = run_kernel(z1, z2, zn, targets, 0.5, grad_terms)
    assert_matches(*got, *reference_vector_and_grads(z1, z2, zn, targets, 0.5, grad_terms), rtol=2e-5)


def test_several_sub_blocks_per_program(gen, monkeypatch):
    monkeypatch.setattr(fused, "FWD_TILE_ELEMENTS", 64)  # 4 rows per tile at K = 10
    monkeypatch.setattr(fused, "BWD_TILE_ELEMENTS", 32)  # 2 rows
    monkeypatch.setattr(fused, "TARGET_PROGRAMS", 3)
    for plan in (fused.forward_plan(50, 9, 10), fused.backward_plan(50, 9, 10)):
        assert plan.single_chunk and plan.rows_per_program > plan.block_b and plan.view_programs > 1
    z1, z2, zn = make_inputs(gen, 50, 10, 9, scale=4.0)
    grad_terms = torch.rand(len(reference.TERM_VECTOR), generator=gen)
    got = run_kernel(z1, z2, zn, None, 0.3, grad_terms)
    assert_matches(*got, *reference_vector_and_grads(z1, z2, zn, None, 0.3, grad_terms), rtol=2e-5)


def test_deterministic(gen):
    z1, z2, zn = make_inputs(gen, 64, 100, 5, scale=3.0)
    grad_terms = torch.ones(len(reference.TERM_VECTOR))
    first, second = run_kernel(z1, z2, zn, None, 0.1, grad_terms), run_kernel(z1, z2, zn, None, 0.1, grad_terms)
    assert torch.equal(first[0], second[0]) and all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_loss_module_triton_backend_equals_torch_backend(gen, assignment):
    z1, z2, zn = make_inputs(gen, 16, 12, 4, scale=2.0)
    results = {}
    for backend in ("triton", "torch"):
        loss_fn = GEDILoss(temperature=0.2, assignment=assignment, energy_reg=0.05, sinkhorn_eps=0.3, backend=backend)
        inputs = [t.clone().requires_grad_(True) for t in (z1, z2, zn)]
        loss, terms = loss_fn(*inputs, return_terms=True)
        terms["inv"].backward(retain_graph=True)  # a single term's gradient, not only the loss's
        inv_grad = inputs[0].grad.clone()
        loss.backward()
        results[backend] = (loss.detach(), terms, inv_grad, [t.grad for t in inputs])
    (loss_t, terms_t, inv_t, grads_t), (loss_r, terms_r, inv_r, grads_r) = results["triton"], results["torch"]
    torch.testing.assert_close(loss_t, loss_r, rtol=1e-5, atol=1e-5)
    assert set(terms_t) == set(terms_r)
    for name in terms_r:
        torch.testing.assert_close(terms_t[name], terms_r[name], rtol=1e-5, atol=1e-5, equal_nan=True)
        assert terms_t[name].requires_grad == terms_r[name].requires_grad
    torch.testing.assert_close(inv_t, inv_r, rtol=1e-4, atol=1e-6)
    for got, want in zip(grads_t, grads_r):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def reference_form_vector_and_grads(z1, z2, zn, targets, temperature, grad_terms, form, queue):
    """The float64 reference of the terms vector and its input gradients in `form`, with a queue's rows."""
    inputs = [t.detach().double().requires_grad_(True) for t in (z1, z2, zn)]
    stats = reference.gedi_statistics(*inputs, temperature, None if targets is None else
                                      tuple(t.double() for t in targets), form)
    sums = reference.batch_sums(stats, form)
    if queue is not None:
        sums = reference.with_queue(sums, *reference.queue_columns(tuple(q.double() for q in queue), temperature,
                                                                   form))
    terms = reference.terms_from_sums(sums, form)
    terms["loss"] = reference.weighted_loss(terms, dict(zip(reference.TERM_NAMES, WEIGHTS)))
    vector = torch.stack([terms[name] for name in reference.TERM_VECTOR])
    grads = torch.autograd.grad(vector[:5], inputs, grad_terms[:5].double(), materialize_grads=True)
    return vector.detach(), grads


@pytest.mark.parametrize("form", reference.FORMS)
@pytest.mark.parametrize("queued", [0, 6])
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
@pytest.mark.parametrize("batch, clusters, chunked", [(1, 3, False), (7, 10, False), (64, 1000, False), (9, 13, True)])
def test_both_forms_and_a_queue_match_the_reference(gen, monkeypatch, form, queued, assignment, batch, clusters,
                                                     chunked):
    if chunked:  # column chunks, several programs, the separate combine kernel (the queue's partial among them)
        monkeypatch.setattr(fused, "SINGLE_CHUNK_MAX", 4)
        monkeypatch.setattr(fused, "CHUNK_COLUMNS", 4)
        monkeypatch.setattr(fused, "CHUNK_ROWS", 4)
        monkeypatch.setattr(fused, "COMBINE_IN_FINALIZE_MAX", 0)
    z1, z2, zn = make_inputs(gen, batch, clusters, 5, scale=4.0)
    queue = tuple(make_inputs(gen, queued, clusters, 0, scale=4.0)[:2]) if queued else None
    targets = sinkhorn_targets(z1, z2, 0.5) if assignment == "sinkhorn" else None
    grad_terms = torch.rand(len(reference.TERM_VECTOR), generator=gen)
    columns, rows = (None, 0) if queue is None else reference.queue_columns(queue, 0.5, form)
    inputs = [t.detach().clone().requires_grad_(True) for t in (z1, z2, zn)]
    vector = fused.gedi_terms(*inputs, targets, 0.5, WEIGHTS, None, form, columns, rows)
    vector.backward(grad_terms)
    want = reference_form_vector_and_grads(z1, z2, zn, targets, 0.5, grad_terms, form, queue)
    assert_matches(vector.detach(), [t.grad for t in inputs], *want, rtol=2e-5)


@pytest.mark.parametrize("form", reference.FORMS)
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_the_loss_module_keeps_the_kernels_with_a_queue(gen, form, assignment):
    """backend="triton" takes queue_size (the queued Sinkhorn targets on the fused Sinkhorn kernels too)
    and gives the reference's loss and gradients call after call, as the queue fills and wraps."""
    losses = {backend: GEDILoss(temperature=0.2, assignment=assignment, energy_reg=0.05, sinkhorn_eps=0.3,
                                backend=backend, queue_size=10, form=form) for backend in ("triton", "torch")}
    for call in range(3):
        z1, z2, zn = make_inputs(gen, 6, 9, 4, scale=2.0)
        results = {}
        for backend, loss_fn in losses.items():
            inputs = [t.clone().requires_grad_(True) for t in (z1, z2, zn)]
            loss = loss_fn(*inputs)
            loss.backward()
            results[backend] = (loss.detach(), [t.grad for t in inputs])
        torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-5)
        for got, want in zip(results["triton"][1], results["torch"][1]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert losses["triton"].queue.filled == 10
