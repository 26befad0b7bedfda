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
