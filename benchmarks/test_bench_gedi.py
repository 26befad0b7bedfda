"""GEDI terms (the discriminative inv and prior terms, the baseline of docs/DESIGN.md: views z1, z2, no SGLD
samples) at temperature 0.1: forward, and forward + backward to dz1, dz2.

The forward is a training forward: the logits require grad, so every implementation also keeps what
its backward needs. eager: GEDILoss(backend="torch") (the reference); compile: the same module under
torch.compile; ours: GEDILoss(backend="triton") (the fused kernels; CUDA only, skipped on CPU).
Ideal bytes: forward reads z1 and z2 once; forward + backward also writes both gradients once.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.harness import DEVICE, QUICK, Case, compiled_if, params, rotating
from benchmarks.sizes import QUICK_COMPILE_LOGIT_SHAPES, logit_shapes
from gedi_fast import GEDILoss

BF16_SHAPE = (32768, 1000)  # the bf16 size of docs/DESIGN.md, measured outside quick mode
PASSES = {"gedi_fwd": 2, "gedi_fwd_bwd": 4}  # tensors of B x K read or written by an ideal kernel


def cases(op: str) -> list[Case]:
    shapes = [(shape, torch.float32) for shape in logit_shapes()]
    if not QUICK:
        shapes.append((BF16_SHAPE, torch.bfloat16))
    return [Case(op, f"{b}x{k}", (b, k), dtype, ideal_bytes=PASSES[op] * b * k * dtype.itemsize,
                 compile_in_quick=(b, k) in QUICK_COMPILE_LOGIT_SHAPES) for (b, k), dtype in shapes]


def build(case: Case, impl: str):
    if impl == "ours" and DEVICE != "cuda":
        pytest.skip("the fused Triton kernels need CUDA (on CPU GEDILoss runs the reference)")
    batch, clusters = case.shape

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return tuple(torch.randn(n, batch, clusters, device=DEVICE, dtype=case.dtype) for _ in range(2))

    inputs = rotating(2 * batch * clusters * case.dtype.itemsize, make, leaves=True)
    loss_fn = compiled_if(impl, GEDILoss(backend="triton" if impl == "ours" else "torch"))
    if case.op == "gedi_fwd":
        return lambda: loss_fn(*next(inputs))

    def forward_backward() -> tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = next(inputs)
        return torch.autograd.grad(loss_fn(z1, z2), (z1, z2))

    return forward_backward


@pytest.mark.parametrize(("case", "impl"), params(cases("gedi_fwd")))
def test_gedi_forward(bench, case, impl):
    bench(case, impl, build)


@pytest.mark.parametrize(("case", "impl"), params(cases("gedi_fwd_bwd")))
def test_gedi_forward_backward(bench, case, impl):
    bench(case, impl, build)
