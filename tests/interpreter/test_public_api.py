"""The public API's Triton backend on CPU tensors (interpreter): same answers as the reference backend."""
from __future__ import annotations

import torch

import gedi_fast
from gedi_fast import reference


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


def test_triton_path_traces_with_fullgraph(gen):
    # On CPU the registered ops answer with the reference; what this checks is that GEDILoss's
    # Triton path (backend choice, Sinkhorn targets, the ops, autograd) compiles without a graph break.
    for assignment in ("softmax", "sinkhorn"):
        loss_fn = gedi_fast.GEDILoss(assignment=assignment, energy_reg=0.01, backend="triton")
        compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
        z1, z2, zn = (torch.randn(n, 6, generator=gen).requires_grad_(True) for n in (8, 8, 3))
        loss = compiled(z1, z2, zn)
        loss.backward()
        want = gedi_fast.GEDILoss(assignment=assignment, energy_reg=0.01, backend="torch")(z1, z2, zn)
        torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-6)
        assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (z1, z2, zn))
