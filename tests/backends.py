"""The backends a test runs an op on, one pytest param each, marked with the lane that runs it.

"torch" is the plain-torch reference backend (the CPU suite); "triton" on CPU tensors is the Triton
kernels under the interpreter (marked `interpreter`: its own process, see conftest.py). The SGLD ops
have no backend switch: the tensors' device picks the C++ kernels ("cpu") or the CUDA ones ("cuda",
marked `gpu`: the GPU lane).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import pytest
import torch

REFERENCE = pytest.param("torch", id="reference")
INTERPRETER = pytest.param("triton", id="interpreter", marks=pytest.mark.interpreter)
LOSS_BACKENDS = (REFERENCE, INTERPRETER)
SGLD_DEVICES = (pytest.param("cpu", id="cpp"), pytest.param("cuda", id="gpu", marks=pytest.mark.gpu))


def per_backend(values: Mapping[str, Iterable], backends: Iterable = LOSS_BACKENDS) -> list:
    """(backend, value) params: each backend with its own list of values (dtypes, sizes), in its lane."""
    params = []
    for backend in backends:
        (name,) = backend.values
        for value in values[name]:
            label = str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else str(value)
            params.append(pytest.param(name, value, id=f"{backend.id}-{label}", marks=backend.marks))
    return params
