"""SGLD update + noise: eager torch vs the fused gedi_fast.sgld_step_, on the device at hand.

Ideal bytes: read x and grad once, write x once (3 * numel * element size).
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import DEVICE, inner_calls, measure
from gedi_fast import sgld_step_

SIZES = {"jem_batch_64x3x32x32": 64 * 3 * 32 * 32, "786k": 786_432, "12.6M": 12_582_912}
if DEVICE == "cuda":
    SIZES["64M"] = 64 * 2**20


def eager_step(x, grad):
    return x.add_(grad, alpha=-1.0).add_(torch.randn_like(x), alpha=0.01)


def fused_step(x, grad):
    return sgld_step_(x, grad, 1.0, 0.01, seed=0, offset=1)


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("impl", [eager_step, fused_step], ids=["eager", "gedi_fast"])
def test_sgld_step(benchmark, size, impl):
    numel = SIZES[size]
    x = torch.randn(numel, device=DEVICE)
    grad = torch.randn(numel, device=DEVICE)
    ideal = 3 * numel * x.element_size()
    benchmark.group = f"sgld_step {size}"
    measure(benchmark, lambda: impl(x, grad), ideal, inner=inner_calls(ideal), rounds=10 if numel > 10**7 else 30,
            impl=impl.__name__, shape=[numel], dtype="float32")
