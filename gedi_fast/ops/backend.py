"""Which implementation runs: the fused Triton kernels where they can run, the plain-torch reference elsewhere."""
from __future__ import annotations

import importlib.util
import os

import torch

BACKENDS = ("auto", "torch", "triton")
# Decided once, at import: the loss's forward runs inside torch.compile, whose tracer (torch 2.11's
# Dynamo) breaks the graph on importlib and os.environ calls.
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
# Triton reads TRITON_INTERPRET when its kernels' module is imported, so only a value set before
# that counts; gedi_fast's kernels are imported after gedi_fast itself.
TRITON_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def triton_unavailable_reason(t: torch.Tensor) -> str | None:
    """Why the Triton kernels cannot take t, or None when they can.

    CPU tensors run under Triton's interpreter only, and only when TRITON_INTERPRET=1 was set before
    triton was imported (it decides how kernels are built when their module is imported).
    """
    if not TRITON_INSTALLED:
        return "triton is not installed (pip install 'gedi-fast[triton]')"
    if t.dtype == torch.float64:
        return "the Triton kernels compute in float32; float64 inputs need backend='torch'"
    if t.device.type == "cuda":
        return None
    if t.device.type == "cpu" and TRITON_INTERPRETER:
        return None
    return f"tensors on {t.device} need a CUDA device (or, for CPU tensors, TRITON_INTERPRET=1 set before triton is imported)"


def use_triton(backend: str, t: torch.Tensor) -> bool:
    """backend "torch" never, "triton" always (raising when impossible), "auto" whenever possible."""
    if backend == "torch":
        return False
    reason = triton_unavailable_reason(t)
    if backend == "triton" and reason is not None:
        raise RuntimeError(f"backend='triton' cannot run here: {reason}")
    return reason is None
