"""GPU lane for the Triton kernels: shapes x dtypes vs the float64 reference, large shapes, compile, opcheck."""
from __future__ import annotations

import pytest
import torch
from tolerances import EDGE_SINKHORN_ATOL, assert_matches_float64

from gedi_fast import GEDILoss, reference, sinkhorn_knopp
from gedi_fast.ops import ASSIGNMENTS

pytestmark = pytest.mark.gpu
pytest.importorskip("triton")

WEIGHTS = dict(gen_weight=0.7, inv_weight=1.3, prior_weight=0.9, energy_reg=0.01)


def run(loss_fn, z1, z2, zn):
    inputs = [t.detach().clone().requires_grad_(True) for t in (z1, z2) + (() if zn is None else (zn,))]
    loss, terms = loss_fn(*inputs[:2], inputs[2] if zn is not None else None, return_terms=True)
    loss.backward()
    return loss.detach(), {k: v.detach() for k, v in terms.items()}, [t.grad for t in inputs]


def max_rel_error(got, want):
    return ((got.double() - want).abs().max() / (want.abs().max() + 1e-30)).item()


def check_against_reference(z1, z2, zn, assignment, temperature, rtol):
    kw = dict(temperature=temperature, assignment=assignment, sinkhorn_eps=0.5, **WEIGHTS)
    loss, terms, grads = run(GEDILoss(backend="triton", **kw), z1, z2, zn)
    to64 = lambda t: None if t is None else t.detach().double()  # noqa: E731  (the float64 oracle, on the GPU)
    ref_loss, ref_terms, ref_grads = run(GEDILoss(backend="torch", **kw), to64(z1), to64(z2), to64(zn))
    assert abs(loss.item() - ref_loss.item()) <= rtol * (abs(ref_loss.item()) + 1)
    for name, value in ref_terms.items():
        torch.testing.assert_close(terms[name].double(), value, rtol=rtol, atol=rtol, equal_nan=True)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == z1.dtype and max_rel_error(got, want) <= rtol


@pytest.mark.parametrize("batch", [1, 7, 64, 257])
@pytest.mark.parametrize("clusters", [2, 3, 10, 100, 1000, 3000, 5000])
@pytest.mark.parametrize("samples", [0, 5])
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_gedi_terms_shape_matrix_fp32(batch, clusters, samples, assignment):
    gen = torch.Generator(device="cuda").manual_seed(batch * 7919 + clusters)
    z1, z2 = (torch.randn(batch, clusters, device="cuda", generator=gen) * 3 for _ in range(2))
    zn = torch.randn(samples, clusters, device="cuda", generator=gen) * 3 if samples else None
    check_against_reference(z1, z2, zn, assignment, 0.5, rtol=5e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("clusters", [10, 1000, 5000])
def test_gedi_terms_low_precision(dtype, clusters):
    gen = torch.Generator(device="cuda").manual_seed(clusters)
    z1, z2, zn = (torch.randn(n, clusters, device="cuda", generator=gen).to(dtype) * 3 for n in (64, 64, 9))
    check_against_reference(z1, z2, zn, "softmax", 0.5, rtol=1e-2 if dtype == torch.bfloat16 else 2e-3)


@pytest.mark.parametrize("form", reference.FORMS)
@pytest.mark.parametrize("queued", [0, 300])
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch,clusters", [(1, 3), (64, 1000), (257, 5000)])
def test_both_forms_and_a_queue_on_the_gpu(form, queued, assignment, dtype, batch, clusters):
    """Both forms with and without a queue (the queued rows on the fused path), three calls each so the
    queue fills and wraps, against the float64 reference on the same rows and queue."""
    gen = torch.Generator(device="cuda").manual_seed(batch + clusters + queued)
    kw = dict(temperature=0.5, assignment=assignment, sinkhorn_eps=0.5, form=form, queue_size=queued, **WEIGHTS)
    fused, oracle = GEDILoss(backend="triton", **kw), GEDILoss(backend="torch", **kw)
    rtol = 5e-5 if dtype == torch.float32 else 1e-2
    for _ in range(3):
        z1, z2, zn = (torch.randn(n, clusters, device="cuda", generator=gen).to(dtype) * 3 for n in (batch, batch, 5))
        loss, terms, grads = run(fused, z1, z2, zn)
        ref_loss, ref_terms, ref_grads = run(oracle, z1.double(), z2.double(), zn.double())
        assert abs(loss.item() - ref_loss.item()) <= rtol * (abs(ref_loss.item()) + 1)
        for name, value in ref_terms.items():
            torch.testing.assert_close(terms[name].double(), value, rtol=rtol, atol=rtol, equal_nan=True)
        for got, want in zip(grads, ref_grads):
            assert max_rel_error(got, want) <= rtol


@pytest.mark.parametrize("batch,clusters", [(4096, 3000), (32768, 1000), (4096, 65536)])
def test_gedi_terms_large_shapes(batch, clusters):
    gen = torch.Generator(device="cuda").manual_seed(1)
    z1, z2, zn = (torch.randn(n, clusters, device="cuda", generator=gen) for n in (batch, batch, 64))
    check_against_reference(z1, z2, zn, "softmax", 0.1, rtol=2e-4)


def test_gedi_terms_huge_logits_bf16_finite():
    gen = torch.Generator(device="cuda").manual_seed(2)
    z1, z2, zn = ((torch.rand(64, 1000, device="cuda", generator=gen) * 2 - 1) * 1e4 for _ in range(3))
    loss, terms, grads = run(GEDILoss(temperature=0.05, assignment="sinkhorn", sinkhorn_eps=0.01, backend="triton"),
                             z1.bfloat16(), z2.bfloat16(), zn.bfloat16())
    assert torch.isfinite(loss) and all(torch.isfinite(g.float()).all() for g in grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
@pytest.mark.parametrize("batch,clusters,samples", [(256, 10, 64), (64, 1000, 16), (7, 3, 0)])
def test_huge_low_precision_logits_match_float64(dtype, assignment, batch, clusters, samples):
    # The edge of tests/tolerances.py; bf16 runs only here (the interpreter has no bf16).
    gen = torch.Generator(device="cuda").manual_seed(batch + clusters)
    inputs = [((torch.rand(n, clusters, device="cuda", generator=gen) * 2 - 1) * 1e4).to(dtype)
              for n in (batch, batch, samples) if n]
    assert_matches_float64("triton", inputs, edge=True, assignment=assignment, energy_reg=0.01, temperature=0.05,
                           sinkhorn_eps=0.01)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sinkhorn_huge_low_precision_scores_match_float64(dtype):
    gen = torch.Generator(device="cuda").manual_seed(3)
    scores = ((torch.rand(512, 1000, device="cuda", generator=gen) * 2 - 1) * 1e4).to(dtype)
    q = sinkhorn_knopp(scores, 0.01, 3)
    assert torch.isfinite(q).all()
    assert (q.double() - reference.sinkhorn_knopp(scores.double(), 0.01, 3)).abs().max().item() <= EDGE_SINKHORN_ATOL


def test_row_sliced_and_expanded_logits_equal_contiguous():
    wide = torch.randn(300, 140, device="cuda")
    z2 = torch.randn(300, 100, device="cuda")
    for z1 in (wide[:, 3:103], torch.randn(1, 100, device="cuda").expand(300, 100)):
        results = []
        for view in (z1, z1.contiguous()):
            leaves = [view.detach().requires_grad_(True), z2.detach().clone().requires_grad_(True)]
            loss = GEDILoss(backend="triton")(*leaves)  # detach keeps the strides (clone would not)
            loss.backward()
            results.append((loss.detach(), [t.grad for t in leaves]))
        (loss, grads), (want_loss, want_grads) = results
        assert torch.equal(loss, want_loss) and all(torch.equal(a, b) for a, b in zip(grads, want_grads))


def test_gedi_loss_is_deterministic():
    z1, z2, zn = (torch.randn(n, 1000, device="cuda") for n in (4096, 4096, 64))
    first, second = run(GEDILoss(backend="triton"), z1, z2, zn), run(GEDILoss(backend="triton"), z1, z2, zn)
    assert torch.equal(first[0], second[0]) and all(torch.equal(a, b) for a, b in zip(first[2], second[2]))


@pytest.mark.parametrize("compiler", ["inductor", "aot_eager"])
@pytest.mark.parametrize("samples", [0, 32])  # without samples two written arguments once shared a tensor
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_compile_fullgraph_parity(assignment, samples, compiler):
    loss_fn = GEDILoss(assignment=assignment, backend="triton", **WEIGHTS)
    compiled = torch.compile(loss_fn, fullgraph=True, backend=compiler)
    z1, z2 = (torch.randn(256, 100, device="cuda") for _ in range(2))
    zn = torch.randn(samples, 100, device="cuda") if samples else None
    eager = run(loss_fn, z1, z2, zn)
    traced = run(compiled, z1, z2, zn)
    torch.testing.assert_close(traced[0], eager[0], rtol=1e-6, atol=1e-6)
    for name, value in eager[1].items():
        torch.testing.assert_close(traced[1][name], value, rtol=1e-6, atol=1e-6, equal_nan=True)
    for a, b in zip(traced[2], eager[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("compiler", ["inductor", "aot_eager"])
@pytest.mark.parametrize("batch,clusters", [(256, 10), (4096, 3000)])  # single launch, multi-pass
def test_sinkhorn_compile_fullgraph_parity(compiler, batch, clusters):
    scores = torch.randn(batch, clusters, device="cuda")
    compiled = torch.compile(lambda s: sinkhorn_knopp(s, 0.05, 3, backend="triton"), fullgraph=True, backend=compiler)
    torch.testing.assert_close(compiled(scores), sinkhorn_knopp(scores, 0.05, 3, backend="triton"), rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_kernels_run_on_their_tensors_device_not_the_current_one():
    z1, z2, zn = (torch.randn(n, 37, device="cuda:1") for n in (64, 64, 8))
    with torch.cuda.device(0):
        loss, terms, grads = run(GEDILoss(backend="triton", **WEIGHTS), z1, z2, zn)
        q = sinkhorn_knopp(z1, 0.05, 3, backend="triton")
    want = run(GEDILoss(backend="torch", **WEIGHTS), z1.double(), z2.double(), zn.double())
    torch.testing.assert_close(loss.double(), want[0], rtol=1e-4, atol=1e-5)
    assert q.device == z1.device and all(g.device == z1.device for g in grads)
    torch.testing.assert_close(q.double(), reference.sinkhorn_knopp(z1.double(), 0.05, 3), rtol=1e-4, atol=1e-6)


def test_sinkhorn_opcheck_on_cuda():
    torch.library.opcheck(torch.ops.gedi_fast.sinkhorn_knopp_fused.default, (torch.randn(9, 37, device="cuda"), 0.05, 3))


@pytest.mark.parametrize("batch,clusters", [(1, 2), (7, 3), (256, 10), (1024, 100), (64, 3000), (4096, 3000),
                                            (32768, 1000), (4096, 65536)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sinkhorn_matches_reference(batch, clusters, dtype):
    gen = torch.Generator(device="cuda").manual_seed(batch + clusters)
    scores = (torch.rand(batch, clusters, device="cuda", generator=gen) * 2 - 1).to(dtype)
    got = sinkhorn_knopp(scores, 0.05, 3)
    want = reference.sinkhorn_knopp(scores.double(), 0.05, 3)
    assert got.dtype == torch.float32 and got.is_cuda
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_sinkhorn_huge_scores_finite():
    scores = (torch.rand(512, 1000, device="cuda") * 2 - 1) * 1e4
    got = sinkhorn_knopp(scores, 0.01, 3)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.sum(1), torch.ones(512, device="cuda"))
