"""Shared fixtures: a seeded generator per test and the GPU-lane skip."""
from __future__ import annotations

import os

import pytest
import torch

# The interpreter lane runs in its own process, with TRITON_INTERPRET=1 set before triton's import.
collect_ignore = [] if os.environ.get("TRITON_INTERPRET") == "1" else ["interpreter"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="GPU lane: no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def gen() -> torch.Generator:
    """A fresh, seeded CPU generator so every test draws its own reproducible random inputs."""
    return torch.Generator().manual_seed(20261128)
