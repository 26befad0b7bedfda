"""Benchmark helpers: the device under test and honest timing.

GPU work is synchronised once per round of `inner` calls, so tiny kernels are timed by throughput
rather than by the cost of a synchronisation; each result's extra_info holds the per-call median,
the ideal bytes and the achieved GB/s.
"""
from __future__ import annotations

from typing import Callable

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def measure(benchmark, fn: Callable[[], object], ideal_bytes: int, inner: int = 1, rounds: int = 20, **info) -> None:
    """Time fn (warm-up and compilation excluded) and record per-call median and bandwidth."""

    def round_of_calls():
        for _ in range(inner):
            fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):
        round_of_calls()
    benchmark.pedantic(round_of_calls, rounds=rounds, iterations=1, warmup_rounds=1)
    per_call = benchmark.stats.stats.median / inner
    benchmark.extra_info.update(
        info, device=DEVICE, inner_calls=inner, median_us_per_call=per_call * 1e6,
        ideal_bytes=ideal_bytes, gb_per_s=ideal_bytes / per_call / 1e9,
    )


def inner_calls(ideal_bytes: int) -> int:
    """Enough calls per round that a round lasts well over a synchronisation on the GPU."""
    if DEVICE != "cuda":
        return 1
    return max(1, min(200, (200 * 2**20) // max(ideal_bytes, 1)))
