"""Benchmark helpers: the device under test and honest timing (GPU work synchronised)."""
from __future__ import annotations

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def synchronised(fn):
    """Wrap fn so each timed call includes the GPU work it launched."""
    if DEVICE != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize()

    return run


def record_bandwidth(benchmark, ideal_bytes: int, **info) -> None:
    """Store implementation, shape, ideal bytes and achieved GB/s (from the median) in extra_info."""
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(info, device=DEVICE, ideal_bytes=ideal_bytes, gb_per_s=ideal_bytes / median / 1e9)


@pytest.fixture
def device() -> str:
    return DEVICE
