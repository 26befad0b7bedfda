"""GEDILoss: API contract of docs/DESIGN.md, gradients, and clear errors for bad input."""
from __future__ import annotations

import os

import pytest
import torch

from gedi_fast import GEDILoss, reference

TERMS = {"gen", "inv", "prior", "energy_reg", "energy_data", "energy_neg", "cluster_entropy"}


def logits(gen, *shape, dtype=torch.float64, scale=2.0):
    return (torch.randn(*shape, generator=gen, dtype=dtype) * scale).requires_grad_(True)


def test_scalar_by_default_terms_on_request(gen):
    z1, z2, zn = logits(gen, 6, 4), logits(gen, 6, 4), logits(gen, 3, 4)
    weights = dict(gen_weight=0.7, inv_weight=1.3, prior_weight=2.1, energy_reg=0.01)
    loss_fn = GEDILoss(temperature=0.5, **weights)
    loss = loss_fn(z1, z2, zn)
    assert loss.shape == () and loss.dtype == torch.float64
    loss2, terms = loss_fn(z1, z2, zn, return_terms=True)
    assert set(terms) == TERMS
    assert all(v.shape == () for v in terms.values())
    expected = 0.7 * terms["gen"] + 1.3 * terms["inv"] + 2.1 * terms["prior"] + 0.01 * terms["energy_reg"]
    torch.testing.assert_close(loss, expected, rtol=1e-14, atol=0)
    torch.testing.assert_close(loss2, loss, rtol=0, atol=0)
    assert not any(terms[k].requires_grad for k in ("energy_data", "energy_neg", "cluster_entropy"))


@pytest.mark.parametrize("batch,clusters,samples", [(1, 2, 0), (3, 5, 2), (4, 3, 1), (2, 9, 3)])
def test_gradcheck_float64(gen, batch, clusters, samples):
    # Softmax assignment only: Sinkhorn targets are deliberately constants (checked below).
    loss_fn = GEDILoss(temperature=0.3, energy_reg=0.1)
    z1, z2 = logits(gen, batch, clusters), logits(gen, batch, clusters)
    if samples:
        zn = logits(gen, samples, clusters)
        assert torch.autograd.gradcheck(lambda a, b, c: loss_fn(a, b, c), (z1, z2, zn))
    else:
        assert torch.autograd.gradcheck(lambda a, b: loss_fn(a, b), (z1, z2))


def test_sinkhorn_targets_carry_no_gradient(gen):
    # With inv_weight only and Sinkhorn targets, d inv / d z1 = (q1 - t2)/(2B tau) * (sum_k t2 = 1): no path through t.
    z1, z2 = logits(gen, 5, 4), logits(gen, 5, 4)
    loss_fn = GEDILoss(temperature=1.0, gen_weight=0, prior_weight=0, assignment="sinkhorn")
    loss_fn(z1, z2).backward()
    q1 = torch.softmax(z1.detach(), -1)
    t2 = reference.sinkhorn_knopp(z2.detach())
    torch.testing.assert_close(z1.grad, (q1 - t2) / (2 * 5), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_logits_give_float32_loss_and_input_dtype_grads(gen, dtype):
    z1, z2, zn = (logits(gen, 8, 7, dtype=torch.float32).detach().to(dtype).requires_grad_() for _ in range(3))
    loss = GEDILoss()(z1, z2, zn)
    assert loss.dtype == torch.float32
    loss.backward()
    assert z1.grad.dtype == dtype and torch.isfinite(z1.grad.float()).all()
    ref = GEDILoss()(z1.detach().float(), z2.detach().float(), zn.detach().float())
    torch.testing.assert_close(loss, ref, rtol=0, atol=0)


def test_repr_names_settings():
    text = repr(GEDILoss(temperature=0.2, assignment="sinkhorn", energy_reg=0.5))
    assert "temperature=0.2" in text and "sinkhorn" in text
    for argument in ("gen_weight=1", "inv_weight=1", "prior_weight=3", "energy_reg=0.5"):
        assert argument in text  # the constructor's own argument names
    assert "energy_reg_weight" not in text


GOOD = torch.zeros(4, 3)


@pytest.mark.parametrize(
    "z1,z2,zn,error,match",
    [
        (GOOD.numpy(), GOOD, None, TypeError, "z1 must be a torch.Tensor"),
        (torch.zeros(4, 3, dtype=torch.int64), GOOD, None, TypeError, "z1 must have dtype"),
        (torch.zeros(4, 3, dtype=torch.bool), GOOD, None, TypeError, "z1 must have dtype"),
        (torch.zeros(12), GOOD, None, ValueError, "z1 must be 2-D"),
        (torch.zeros(2, 4, 3), GOOD, None, ValueError, "z1 must be 2-D"),
        (torch.zeros(0, 3), torch.zeros(0, 3), None, ValueError, "z1 must have at least one row"),
        (torch.zeros(4, 1), torch.zeros(4, 1), None, ValueError, "z1 must have at least 2 clusters"),
        (GOOD, torch.zeros(5, 3), None, ValueError, "z2 must have z1's shape"),
        (GOOD, torch.zeros(1, 3), None, ValueError, "z2 must have z1's shape"),
        (GOOD, GOOD.double(), None, TypeError, "z2 must have z1's dtype"),
        (GOOD, GOOD, torch.zeros(2, 4), ValueError, "zn must have z1's 3 clusters"),
        (GOOD, GOOD, torch.zeros(0, 3), ValueError, "zn must have at least one row"),
        (GOOD, GOOD, torch.zeros(3), ValueError, "zn must be 2-D"),
        (GOOD, GOOD, GOOD.half(), TypeError, "zn must have z1's dtype"),
        (GOOD, GOOD, [[0.0] * 3], TypeError, "zn must be a torch.Tensor"),
    ],
)
def test_bad_inputs_name_the_argument(z1, z2, zn, error, match):
    with pytest.raises(error, match=match):
        GEDILoss()(z1, z2, zn)


def test_tensors_on_different_devices_are_rejected():
    with pytest.raises(ValueError, match="z2 must be on z1's device"):
        GEDILoss()(GOOD, torch.zeros(4, 3, device="meta"))


def test_the_fused_path_gives_targets_for_every_assignment_mode_the_reference_defines():
    from gedi_fast.ops.gedi import ASSIGNMENT_TARGETS

    assert set(ASSIGNMENT_TARGETS) == set(reference.ASSIGNMENTS) and len(reference.ASSIGNMENTS) >= 2


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(temperature=0.0), ValueError, "temperature must be > 0"),
        (dict(temperature=-1.0), ValueError, "temperature must be > 0"),
        (dict(temperature=float("nan")), ValueError, "temperature must be a finite real"),
        (dict(temperature="0.1"), ValueError, "temperature must be a finite real"),
        (dict(gen_weight=float("inf")), ValueError, "gen_weight must be a finite real"),
        (dict(energy_reg=-0.1), ValueError, "energy_reg must be >= 0"),
        (dict(assignment="optimal"), ValueError, "assignment must be one of"),
        (dict(sinkhorn_eps=0.0), ValueError, "sinkhorn_eps must be > 0"),
        (dict(sinkhorn_iters=0), ValueError, "sinkhorn_iters must be >= 1"),
        (dict(sinkhorn_iters=2.5), TypeError, "sinkhorn_iters must be an int"),
        (dict(backend="cuda"), ValueError, "backend must be one of"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        GEDILoss(**kwargs)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter makes CPU tensors valid")
def test_triton_backend_on_cpu_tensors_is_a_clear_error():
    with pytest.raises(RuntimeError, match="backend='triton' cannot run here"):
        GEDILoss(backend="triton")(GOOD, GOOD)


def test_triton_backend_refuses_float64():
    with pytest.raises(RuntimeError, match="float64 inputs need backend='torch'"):
        GEDILoss(backend="triton")(GOOD.double(), GOOD.double())


def test_forward_decides_nothing_at_call_time(gen, monkeypatch):
    """Whether triton is installed is decided at import: torch 2.11's Dynamo cannot trace importlib
    or os.environ in the loss's forward (a graph break under fullgraph=True)."""
    import importlib.util

    import gedi_fast

    def refuse(*args, **kwargs):
        raise AssertionError("importlib.util.find_spec called on the hot path")

    monkeypatch.setattr(importlib.util, "find_spec", refuse)
    monkeypatch.setattr(os.environ, "get", refuse)
    z = torch.randn(6, 4, generator=gen)
    for backend in ("auto", "torch"):
        GEDILoss(assignment="sinkhorn", backend=backend)(z, z.flip(0), z[:2])
        gedi_fast.sinkhorn_knopp(z, backend=backend)
