"""Sinkhorn-Knopp, SwAV's 3 iterations at eps 0.05 on float32 scores.

eager: gedi_fast.sinkhorn_knopp(backend="torch") (the log-domain reference); compile: the same under
torch.compile; ours: backend="triton" (the fused kernels; CUDA only, skipped on CPU).
Ideal bytes: read the scores once, write the float32 assignments once.
"""
from __future__ import annotations

import functools

import pytest
import torch

from benchmarks.harness import DEVICE, Case, compiled_if, params, rotating
from benchmarks.sizes import QUICK_COMPILE_LOGIT_SHAPES, logit_shapes
from gedi_fast import sinkhorn_knopp

EPS, ITERS = 0.05, 3


def cases() -> list[Case]:
    return [Case("sinkhorn", f"{b}x{k}", (b, k), ideal_bytes=2 * b * k * 4,
                 compile_in_quick=(b, k) in QUICK_COMPILE_LOGIT_SHAPES) for b, k in logit_shapes()]


def build(case: Case, impl: str):
    if impl == "ours" and DEVICE != "cuda":
        pytest.skip("the fused Triton kernels need CUDA (on CPU sinkhorn_knopp runs the reference)")
    batch, clusters = case.shape
    inputs = rotating(batch * clusters * 4, lambda n: (torch.rand(n, batch, clusters, device=DEVICE) * 2 - 1,))
    backend = "triton" if impl == "ours" else "torch"
    run = compiled_if(impl, functools.partial(sinkhorn_knopp, eps=EPS, iters=ITERS, backend=backend))
    return lambda: run(*next(inputs))


@pytest.mark.parametrize(("case", "impl"), params(cases()))
def test_sinkhorn(bench, case, impl):
    bench(case, impl, build)
