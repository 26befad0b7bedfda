"""Shared fixtures: a seeded generator per test, one intra-op thread on request, and the GPU-lane skip."""
from __future__ import annotations

import os
from collections.abc import Iterator

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


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for tests that train tiny models: on shared CI cores two threads are many
    times slower, and a run in a subprocess with OMP_NUM_THREADS=1 computes the same numbers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
