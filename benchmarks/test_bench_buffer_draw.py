"""JEM's replay-buffer draw: rows buffer[indices], 5% of them replaced by U(-1, 1) noise.

eager: reference_sampler.plain_buffer_draw (gather, uniform noise for every row, select); compile:
the same under torch.compile; ours: gedi_fast.buffer_draw (one pass; C++ on CPU, CUDA kernel on GPU).
Ideal bytes: read the drawn rows and the int64 indices, write the samples and the bool mask.
"""
from __future__ import annotations

import math

import pytest
import torch

from benchmarks.harness import DEVICE, Case, compiled_if, params, rotating
from benchmarks.reference_sampler import plain_buffer_draw
from benchmarks.sizes import QUICK_COMPILE_BUFFER_DRAWS, buffer_draws
from gedi_fast import buffer_draw

REINIT_PROB, LOW, HIGH = 0.05, -1.0, 1.0


def cases() -> list[Case]:
    out = []
    for label, (_, shape, batch) in buffer_draws().items():
        ideal = 2 * batch * math.prod(shape) * 4 + batch * (8 + 1)
        out.append(Case("buffer_draw", label, (batch, *shape), ideal_bytes=ideal,
                        compile_in_quick=label in QUICK_COMPILE_BUFFER_DRAWS))
    return out


def plain(buffer: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return plain_buffer_draw(buffer, indices, REINIT_PROB, LOW, HIGH)


def fused(buffer: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return buffer_draw(buffer, indices, REINIT_PROB, LOW, HIGH, seed=0, offset=1)


def build(case: Case, impl: str):
    rows, shape, batch = buffer_draws()[case.size]
    row_bytes = math.prod(shape) * 4

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        buffers = torch.rand(n, rows, *shape, device=DEVICE) * (HIGH - LOW) + LOW
        return buffers, torch.randint(0, rows, (n, batch), device=DEVICE)

    inputs = rotating(rows * row_bytes + batch * 8, make)
    draw = fused if impl == "ours" else compiled_if(impl, plain)
    return lambda: draw(*next(inputs))


@pytest.mark.parametrize(("case", "impl"), params(cases()))
def test_buffer_draw(bench, case, impl):
    bench(case, impl, build)
