"""Argument checks for the public API: every error names the argument and what was expected."""
from __future__ import annotations

import math
import numbers

import torch

LOGIT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SAMPLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def require_tensor(value: object, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_dtype(t: torch.Tensor, name: str, allowed: tuple[torch.dtype, ...]) -> None:
    if t.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"{name} must have dtype in ({names}), got {t.dtype}")


def require_same_device(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} must be on {ref_name}'s device {ref.device}, got {t.device}")


def require_bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def require_finite(t: torch.Tensor, name: str) -> None:
    """Raises when t holds NaN or inf: the opt-in check_finite of the public ops (one host sync)."""
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf values (check_finite=True)")


def require_no_overlap(t: torch.Tensor, name: str) -> None:
    """An in-place result needs one memory location per element: an expanded tensor (stride 0) shares them."""
    if any(stride == 0 and size > 1 for size, stride in zip(t.shape, t.stride())):
        raise ValueError(f"{name} must not be an expanded tensor (a dimension of size > 1 with stride 0 makes "
                         f"elements share memory; pass {name}.clone()), got shape {tuple(t.shape)} with strides "
                         f"{t.stride()}")


def require_disjoint(t: torch.Tensor, name: str, other: torch.Tensor, other_name: str) -> None:
    """t, read while `other` is written in place, must not share memory with it (the kernels read and
    write through restrict pointers)."""
    if t.numel() == 0 or other.numel() == 0 or t.untyped_storage().data_ptr() != other.untyped_storage().data_ptr():
        return

    def span(x: torch.Tensor) -> tuple[int, int]:
        start = x.storage_offset()
        return start, start + sum((n - 1) * abs(s) for n, s in zip(x.shape, x.stride())) + 1

    (a0, a1), (b0, b1) = span(t), span(other)
    if a0 < b1 and b0 < a1:
        raise ValueError(f"{name} must not share memory with {other_name} ({other_name} is updated in place "
                         f"while {name} is read); pass {name}.clone()")


def require_real(value: object, name: str, *, positive: bool = False, non_negative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return float(value)


def require_fraction(value: object, name: str) -> float:
    """A real number in [0, 1]: a probability or a share."""
    value = require_real(value, name, non_negative=True)
    if value > 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return value


def require_int(value: object, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def require_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value  # type: ignore[return-value]


def check_logits(z: object, name: str) -> torch.Tensor:
    """A B x K matrix of cluster logits with B >= 1 and K >= 2."""
    z = require_tensor(z, name)
    require_dtype(z, name, LOGIT_DTYPES)
    if z.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch x clusters), got shape {tuple(z.shape)}")
    if z.shape[0] < 1:
        raise ValueError(f"{name} must have at least one row, got shape {tuple(z.shape)}")
    if z.shape[1] < 2:
        raise ValueError(f"{name} must have at least 2 clusters (columns), got shape {tuple(z.shape)}")
    return z


def check_gedi_inputs(z1: object, z2: object, zn: object) -> None:
    """The two views share shape, dtype and device; the SGLD samples share K, dtype and device."""
    z1 = check_logits(z1, "z1")
    z2 = check_logits(z2, "z2")
    if z2.shape != z1.shape:
        raise ValueError(f"z2 must have z1's shape {tuple(z1.shape)}, got {tuple(z2.shape)}")
    if z2.dtype != z1.dtype:
        raise TypeError(f"z2 must have z1's dtype {z1.dtype}, got {z2.dtype}")
    require_same_device(z2, "z2", z1, "z1")
    if zn is None:
        return
    zn = check_logits(zn, "zn")
    if zn.shape[1] != z1.shape[1]:
        raise ValueError(f"zn must have z1's {z1.shape[1]} clusters (columns), got shape {tuple(zn.shape)}")
    if zn.dtype != z1.dtype:
        raise TypeError(f"zn must have z1's dtype {z1.dtype}, got {zn.dtype}")
    require_same_device(zn, "zn", z1, "z1")
