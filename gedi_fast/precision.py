"""How the training step computes: which devices run bf16 natively, and TF32 as one switch set and
restored through torch's global precision API.

bf16 pays only where the hardware multiplies in it (AMX or AVX512-BF16 on a CPU; not yet measured on
such a CPU in this project); on a CPU without them oneDNN emulates bf16 and the cpu-images network is
about 14x slower than in fp32 (docs/RESULTS.md, "Image training at the CPU's own speed"). So "auto"
asks the hardware.

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
from torch import nn


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies in bf16 (AMX tiles or AVX512-BF16), as torch's CPU query reports it."""
    queries = (getattr(torch.cpu, "_is_amx_tile_supported", None), getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(query is not None and query() for query in queries)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bf16 faster than fp32: a CUDA device with bf16 support, a CPU with native bf16."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


def resolve_precision(requested: str, device: torch.device, images: bool) -> str:
    """The precision a run computes in: `requested` unless it is "auto", which means bf16 for image
    models on a device with native bf16 (native_bf16) and fp32 everywhere else (the small MLPs of
    vector data gain nothing, and their results are measured in fp32)."""
    if requested != "auto":
        return requested
    return "bf16" if images and native_bf16(device) else "fp32"


# oneDNN's weight gradient of a strided 1 x 1 convolution with fewer input channels than this corrupts
# the heap in channels_last on the CPU ("corrupted double-linked list", then an abort; seen with torch
# 2.13.0+cpu and oneDNN 3.12 on an AVX2 machine, 2 to 7 input channels, one thread and two).
NARROWEST_SAFE_CHANNELS_LAST = 8


def channels_last_is_safe(model: nn.Module, device: torch.device) -> bool:
    """Whether `model` may run channels_last on `device`: anywhere but the CPU, or a CPU model without
    a strided 1 x 1 convolution narrower than NARROWEST_SAFE_CHANNELS_LAST input channels."""
    return device.type != "cpu" or not any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
        and m.in_channels < NARROWEST_SAFE_CHANNELS_LAST for m in model.modules())


def resolve_memory_format(requested: str, model: nn.Module, device: torch.device) -> torch.memory_format:
    """The layout of `model`'s weights and activations on `device`. "auto": channels_last for a CNN
    where that is safe (oneDNN's and cuDNN's fast convolutions work in it), contiguous otherwise and
    for models without convolutions, where it has no meaning. An explicit "channels_last" where it is
    unsafe is an error rather than a crash."""
    convolutional = any(isinstance(m, nn.Conv2d) for m in model.modules())
    safe = channels_last_is_safe(model, device)
    if requested == "channels_last" and not safe:
        raise ValueError(f"memory_format 'channels_last' is unsafe for this CNN on the CPU: oneDNN corrupts memory in "
                         f"the backward of a strided 1 x 1 convolution with fewer than {NARROWEST_SAFE_CHANNELS_LAST} "
                         f"input channels; use width >= {NARROWEST_SAFE_CHANNELS_LAST} or memory_format 'contiguous'")
    if requested == "auto":
        requested = "channels_last" if convolutional and safe else "contiguous"
    return torch.channels_last if requested == "channels_last" else torch.contiguous_format


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
