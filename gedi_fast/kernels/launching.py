"""Host-side helpers both kernel modules launch with.

Triton launches on the current CUDA device and its current stream, not on the device of the
tensors it is given: every launch sequence runs inside `on_device(tensor)`, so tensors on cuda:1
are processed on cuda:1 (and on that device's current stream) whatever device is current.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch


def direct(kernel: Callable) -> Callable:
    """The eager launchers' `wrap`: the kernel itself (the registered ops pass torch.library.wrap_triton)."""
    return kernel


def on_device(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """t's CUDA device made current for the launches inside; nothing to do for CPU tensors (interpreter)."""
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()
