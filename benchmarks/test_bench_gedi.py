"""GEDI terms forward+backward and Sinkhorn-Knopp: eager reference, torch.compile'd reference, fused kernels.

Ideal bytes: GEDI reads z1, z2 once and writes both gradients once; Sinkhorn reads the scores once
and writes the float32 assignments once. The fused kernels need CUDA and are skipped on CPU, where
only the small sizes of the reference run.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import DEVICE, inner_calls, measure
from gedi_fast import GEDILoss, reference
from gedi_fast.ops.sinkhorn import fused_sinkhorn_knopp

GPU_SHAPES = [(256, 10), (1024, 100), (64, 3000), (4096, 3000), (32768, 1000), (4096, 65536)]
SHAPES = GPU_SHAPES if DEVICE == "cuda" else [(256, 10), (1024, 100), (64, 3000)]
IMPLS = ["eager", "compile", "gedi_fast"]


def needs(impl: str) -> None:
    if impl == "gedi_fast" and DEVICE != "cuda":
        pytest.skip("the fused Triton kernels need CUDA")
    if impl == "compile" and DEVICE != "cuda":
        pytest.skip("torch.compile baselines are measured on the GPU")


def gedi_step(impl: str):
    loss_fn = GEDILoss(backend="triton" if impl == "gedi_fast" else "torch")
    forward = torch.compile(loss_fn) if impl == "compile" else loss_fn

    def step(z1, z2):
        forward(z1, z2).backward()

    return step


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", IMPLS)
def test_gedi_terms_fwd_bwd(benchmark, impl, shape, dtype):
    needs(impl)
    if dtype == torch.bfloat16 and (shape != (32768, 1000) or DEVICE != "cuda"):
        pytest.skip("bf16 is measured at 32768 x 1000 on the GPU")
    z1, z2 = (torch.randn(*shape, device=DEVICE, dtype=dtype).requires_grad_(True) for _ in range(2))
    step = gedi_step(impl)
    ideal = 4 * z1.numel() * z1.element_size()
    benchmark.group = f"gedi fwd+bwd {shape[0]}x{shape[1]} {dtype}"
    measure(benchmark, lambda: step(z1, z2), ideal, inner=inner_calls(ideal), impl=impl, shape=list(shape),
            dtype=str(dtype))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("impl", IMPLS)
def test_sinkhorn(benchmark, impl, shape):
    needs(impl)
    scores = torch.rand(*shape, device=DEVICE) * 2 - 1
    fn = {
        "eager": lambda: reference.sinkhorn_knopp(scores, 0.05, 3),
        "compile": torch.compile(lambda: reference.sinkhorn_knopp(scores, 0.05, 3)),
        "gedi_fast": lambda: fused_sinkhorn_knopp(scores, 0.05, 3),
    }[impl]
    ideal = 2 * scores.numel() * 4
    benchmark.group = f"sinkhorn {shape[0]}x{shape[1]}"
    measure(benchmark, fn, ideal, inner=inner_calls(ideal), impl=impl, shape=list(shape), dtype="float32")
