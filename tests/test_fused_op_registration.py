"""The Triton ops' registration: opcheck on CPU (the reference is their CPU kernel) and on CUDA (their Triton
kernels, the GPU lane); autograd through the CPU op agrees with the reference's."""
from __future__ import annotations

import itertools

import pytest
import torch

from gedi_fast import reference

pytest.importorskip("triton")
fused = pytest.importorskip("gedi_fast.kernels.gedi_terms")

WEIGHTS = [0.7, 1.3, 0.9, 0.01]
ALL_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def inputs(gen, batch=5, clusters=4, samples=3):
    z1, z2, zn = (torch.randn(n, clusters, generator=gen) * 2 for n in (batch, batch, samples))
    return z1, z2, zn


def queue_arguments(gen, form, queued, clusters=4):
    """The op's (queued_columns, queued_rows) for a queue of 6 rows per view, or (None, 0)."""
    if not queued:
        return None, 0
    queue = tuple(torch.randn(6, clusters, generator=gen) * 2 for _ in range(2))
    return reference.queue_columns(queue, 0.5, form)


# On CUDA opcheck traces the Triton launchers (Triton's mutation analysis of each kernel, per trace): on the
# H200 one case took 1.5-2 minutes, so the GPU lane runs two that differ in every option, dynamic shapes included.
CUDA_CASES = [(True, False, "symmetric", False), (True, True, "author", True)]
CASES = [pytest.param("cpu", *options, id=f"cpu-{'-'.join(map(str, options))}") for options in
         itertools.product([True, False], [False, True], reference.FORMS, [False, True])]
CASES += [pytest.param("cuda", *options, id=f"cuda-{'-'.join(map(str, options))}", marks=pytest.mark.gpu)
          for options in CUDA_CASES]


@pytest.mark.parametrize(("device", "with_samples", "sinkhorn", "form", "queued"), CASES)
def test_opcheck_forward_and_backward(gen, device, with_samples, sinkhorn, form, queued):
    z1, z2, zn = (t.to(device) for t in inputs(gen))
    zn = zn if with_samples else None
    targets = tuple(reference.sinkhorn_knopp(z, 0.5, 3) for z in (z1, z2)) if sinkhorn else (None, None)
    queued_columns, queued_rows = queue_arguments(gen, form, queued)
    options = (form, None if queued_columns is None else queued_columns.to(device), queued_rows)
    args = (z1, z2, zn, *targets, 0.5, WEIGHTS, *options)
    # Without samples energy_neg is NaN, which the AOT check's output comparison counts as a mismatch.
    checks = ALL_CHECKS if with_samples else ALL_CHECKS[:-1]
    torch.library.opcheck(torch.ops.gedi_fast.gedi_terms_fwd.default, args, test_utils=checks)
    _, stats, lse_n, columns = torch.ops.gedi_fast.gedi_terms_fwd(*args)
    grad = torch.rand(len(reference.TERM_VECTOR), generator=gen).to(device)
    bwd_args = (grad, z1, z2, zn, *targets, stats, lse_n, columns, 0.5, WEIGHTS, *options)
    torch.library.opcheck(torch.ops.gedi_fast.gedi_terms_bwd.default, bwd_args)


@pytest.mark.parametrize("form", reference.FORMS)
def test_op_autograd_on_cpu_equals_reference_autograd(gen, form):
    z1, z2, zn = (t.requires_grad_(True) for t in inputs(gen))
    vector = torch.ops.gedi_fast.gedi_terms_fwd(z1, z2, zn, None, None, 0.5, WEIGHTS, form, None, 0)[0]
    grad = torch.rand(len(reference.TERM_VECTOR), generator=gen)
    got = torch.autograd.grad(vector, (z1, z2, zn), grad)
    terms = reference.gedi_terms(z1, z2, zn, 0.5, form=form)
    terms["loss"] = reference.weighted_loss(terms, dict(zip(reference.TERM_NAMES, WEIGHTS)))
    want_vector = torch.stack([terms[name] for name in reference.TERM_VECTOR])
    want = torch.autograd.grad(want_vector[:5], (z1, z2, zn), grad[:5])
    torch.testing.assert_close(vector.detach(), want_vector.detach(), equal_nan=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
