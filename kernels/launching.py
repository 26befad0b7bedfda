"""Host-side helpers both kernel modules launch with: the launch plan, the launch wrapper, the device.

Triton launches on the current CUDA device and its current stream, not on the device of the
tensors it is given: every launch sequence runs inside `on_device(tensor)`, so tensors on cuda:1
are processed on cuda:1 (and on that device's current stream) whatever device is current.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch


def direct(kernel: Callable) -> Callable:
    """The eager launchers' `wrap`: the kernel itself (the registered ops pass torch.library.wrap_triton)."""
    return kernel


def on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """t's CUDA device made current for the launches inside; nothing to do for CPU tensors (interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


@dataclass(frozen=True)
class LaunchPlan:
    """A kernel's pinned launch (no autotune): its register tile, the rows each program covers, its warps.

    Each kernel module extends it with what its own schedule decides (tests pin small plans with it).
    """

    block_b: int
    block_k: int
    rows_per_program: int
    num_warps: int


def tile_warps(block_b: int, block_k: int, elements_per_thread: int, max_warps: int) -> int:
    """Warps for a block_b x block_k tile at about elements_per_thread elements a thread, from 4 to max_warps."""
    return max(4, min(max_warps, block_b * block_k // (32 * elements_per_thread)))
