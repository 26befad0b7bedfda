"""Shared fixtures (a seeded generator per test, one intra-op thread on request) and the lanes.

A test marked `interpreter` runs Triton kernels on CPU tensors, which needs TRITON_INTERPRET=1 set
before triton is imported, so those tests run in a process of their own: with TRITON_INTERPRET=1
only they are collected, without it all the others (`make test` starts both). A test marked `gpu`
is skipped without a CUDA device.
"""
from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

INTERPRETER_LANE = os.environ.get("TRITON_INTERPRET") == "1"
# The sm_90 lane builds its parameters from compiled kernels when imported, which interpreted ones are not.
collect_ignore = ["test_sm90_lane.py"] if INTERPRETER_LANE else []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    other_lane = [item for item in items if ("interpreter" in item.keywords) != INTERPRETER_LANE]
    if other_lane:
        config.hook.pytest_deselected(items=other_lane)
        items[:] = [item for item in items if ("interpreter" in item.keywords) == INTERPRETER_LANE]
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
