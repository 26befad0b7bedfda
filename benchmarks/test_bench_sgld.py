"""SGLD update + noise, x <- x - step * grad + noise * xi in place (JEM: step 1.0, noise 0.01, no clamp).

eager: reference_sampler.plain_sgld_step_ (two in-place adds and torch.randn_like); compile: the
same under torch.compile; ours: gedi_fast.sgld_step_ (C++ on CPU, CUDA kernel on GPU); ours_op: the
registered op torch.ops.gedi_fast.sgld_step_ without the Python checks, what a CUDA graph replays
(it tells the kernel from the per-call host cost, e.g. for the <= 8 us target at 786k in benchmarks/RESULTS.md).
Ideal bytes: read x and grad once, write x once (12 bytes per float32 element).
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.harness import DEVICE, IMPLS, Case, compiled_if, params, rotating
from benchmarks.reference_sampler import plain_sgld_step_
from benchmarks.sizes import QUICK_COMPILE_SGLD_SIZES, sgld_sizes
from gedi_fast import sgld_step_

STEP_SIZE, NOISE_STD = 1.0, 0.01


def cases() -> list[Case]:
    return [Case("sgld_step", label, (numel,), ideal_bytes=3 * numel * 4,
                 compile_in_quick=label in QUICK_COMPILE_SGLD_SIZES)
            for label, numel in sgld_sizes().items()]


def plain(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return plain_sgld_step_(x, grad, STEP_SIZE, NOISE_STD)


def fused(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return sgld_step_(x, grad, STEP_SIZE, NOISE_STD, seed=0, offset=1)


def registered_op(x: torch.Tensor, grad: torch.Tensor) -> None:
    torch.ops.gedi_fast.sgld_step_(x, grad, STEP_SIZE, NOISE_STD, 0, 1, None, None, None)


def build(case: Case, impl: str):
    (numel,) = case.shape
    inputs = rotating(2 * numel * 4, lambda n: (torch.randn(n, numel, device=DEVICE),
                                                torch.randn(n, numel, device=DEVICE)))
    update = {"ours": fused, "ours_op": registered_op}.get(impl) or compiled_if(impl, plain)
    return lambda: update(*next(inputs))


@pytest.mark.parametrize(("case", "impl"), params(cases(), (*IMPLS, "ours_op")))
def test_sgld_step(bench, case, impl):
    bench(case, impl, build)
