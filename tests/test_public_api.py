"""The public API's Triton backend on CPU tensors (interpreter): same answers as the reference backend."""
from __future__ import annotations

import pytest
import torch

import gedi_fast
from gedi_fast import reference
from gedi_fast.ops import ASSIGNMENTS

pytestmark = pytest.mark.interpreter


def test_public_sinkhorn_triton_backend(gen):
    scores = torch.rand(37, 11, generator=gen) * 2 - 1
    got = gedi_fast.sinkhorn_knopp(scores, 0.05, 3, backend="triton")
    torch.testing.assert_close(got.double(), reference.sinkhorn_knopp(scores.double(), 0.05, 3), rtol=1e-5, atol=1e-6)


def test_auto_backend_uses_the_kernels_when_the_interpreter_is_active(gen, monkeypatch):
    calls = []
    from gedi_fast.kernels import gedi_terms

    original = gedi_terms.gedi_terms
    monkeypatch.setattr(gedi_terms, "gedi_terms", lambda *a, **k: calls.append(1) or original(*a, **k))
    z = torch.randn(8, 5, generator=gen)
    gedi_fast.GEDILoss()(z, z.flip(0))
    assert calls == [1]


@pytest.mark.parametrize("samples", [0, 3])
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_triton_path_compiles_fullgraph_with_aot_eager_and_matches_eager(gen, assignment, samples):
    """fullgraph=True: GEDILoss's Triton path (backend choice, Sinkhorn targets, the registered ops,
    autograd) traces without a graph break. Under the interpreter the ops' traced bodies are the
    reference (wrap_triton traces only compiled kernels, not interpreted ones), so the kernels
    themselves are compared under aot_eager in the GPU lane."""
    loss_fn = gedi_fast.GEDILoss(assignment=assignment, energy_reg=0.01, backend="triton")
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    z1, z2 = (torch.randn(8, 6, generator=gen) for _ in range(2))
    zn = torch.randn(samples, 6, generator=gen) if samples else None
    leaves = lambda: [t.clone().requires_grad_(True) for t in (z1, z2, zn) if t is not None]  # noqa: E731
    traced_in, eager_in = leaves(), leaves()
    traced = compiled(traced_in[0], traced_in[1], traced_in[2] if samples else None, return_terms=True)
    eager = loss_fn(eager_in[0], eager_in[1], eager_in[2] if samples else None, return_terms=True)
    torch.testing.assert_close(traced[0], eager[0], rtol=1e-5, atol=1e-6)
    for name, value in eager[1].items():
        torch.testing.assert_close(traced[1][name], value, rtol=1e-5, atol=1e-6, equal_nan=True)
    traced[0].backward()
    eager[0].backward()
    for a, b in zip(traced_in, eager_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)  # kernels vs the traced reference


def test_sinkhorn_triton_path_compiles_fullgraph(gen):
    scores = torch.randn(9, 5, generator=gen)
    compiled = torch.compile(lambda s: gedi_fast.sinkhorn_knopp(s, 0.05, 3, backend="triton"), fullgraph=True,
                             backend="aot_eager")
    torch.testing.assert_close(compiled(scores), gedi_fast.sinkhorn_knopp(scores, 0.05, 3, backend="triton"),
                               rtol=1e-5, atol=1e-6)
