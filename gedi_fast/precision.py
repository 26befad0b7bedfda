"""TF32 for the training step: one switch, set and restored through torch's global precision API.

torch keeps two precision APIs that refuse to be mixed: after the per-backend `fp32_precision`
strings have been set, the global getters (`get_float32_matmul_precision`, `allow_tf32`, which
Inductor reads while compiling) may raise, and setting `allow_tf32` against a
`set_float32_matmul_precision` choice makes `get_float32_matmul_precision` raise. The switch speaks
the global API only: `torch.set_float32_matmul_precision` for matmuls (what users call, and what
Inductor reads) and cuDNN's `allow_tf32` for convolutions. Where the caller's settings are not
readable there (they were made through the per-backend strings), it leaves them as they are.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch


def _global_state() -> tuple[str, bool] | None:
    """(matmul precision, cuDNN allow_tf32), or None when the caller's settings are in the per-backend API."""
    try:
        return torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    except RuntimeError:
        return None


def _set_global(matmul: str, cudnn: bool) -> None:
    torch.set_float32_matmul_precision(matmul)
    torch.backends.cudnn.allow_tf32 = cudnn


@contextlib.contextmanager
def tf32_switches(enabled: bool) -> Iterator[None]:
    """TF32 for cuBLAS matmuls and cuDNN convolutions on (`enabled`) or off inside; the caller's settings after."""
    saved = _global_state()
    if saved is None:
        warnings.warn("tf32 setting not applied: fp32 precision was configured through torch's per-backend "
                      "fp32_precision API, which these settings leave as they are", RuntimeWarning, stacklevel=3)
        yield
        return
    _set_global("high" if enabled else "highest", enabled)
    try:
        yield
    finally:
        _set_global(*saved)


def tf32_state() -> tuple:
    """Everything matmul and convolution precision depends on, in both APIs (never raises): what a
    captured CUDA graph bakes in."""
    return _global_state(), (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
