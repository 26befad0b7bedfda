"""pytest wiring for the suites: one run's baselines and copy bandwidth, the `bench` fixture every
suite times through (benchmarks/harness.py), and the run's metadata in the --benchmark-json output."""
from __future__ import annotations

import datetime
import functools
import importlib.metadata
import os
import pathlib
import platform
import sys

import pytest
import torch
import torch._inductor.config

from benchmarks import harness

CASE_CALLS = pytest.StashKey[harness.CaseCalls]()
COPY_GBPS = pytest.StashKey[float]()

# Each size compiles its own static graph of the same reference functions: keep every one compiled
# (past the default limit of 8 per function, dynamo would silently fall back to eager). The limit
# was called cache_size_limit before torch 2.7.
_LIMIT = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
setattr(torch._dynamo.config, _LIMIT, 64)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[CASE_CALLS] = harness.CaseCalls()
    if harness.THREADS > 0:
        torch.set_num_threads(harness.THREADS)
    if harness.DEVICE == "cpu":
        # Compile in this process: inductor's pool of compile workers (each importing torch) would
        # otherwise compete with the timed calls for the few cores.
        torch._inductor.config.compile_threads = 1


@pytest.fixture(scope="session")
def copy_gbps(request: pytest.FixtureRequest) -> float:
    """This run's device copy bandwidth (GB/s), the yardstick of every result's pct_of_copy."""
    value = harness.copy_bandwidth()
    request.config.stash[COPY_GBPS] = value
    return value


@pytest.fixture
def bench(benchmark, copy_gbps: float, request: pytest.FixtureRequest):
    """bench(case, impl, build): time build(case, impl) and record extra_info with both speedups."""
    return functools.partial(harness.measure, benchmark, request.config.stash[CASE_CALLS], copy_gbps)


def _device_name() -> str:
    if harness.DEVICE == "cuda":
        return torch.cuda.get_device_name()
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return platform.processor() or "CPU"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    """The run's facts beside the results: device, versions, copy bandwidth, the command."""
    settings = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("GEDI_BENCH_"))
    command = " ".join(["python -m pytest", *config.invocation_params.args])
    output_json["gedi_fast"] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": harness.DEVICE,
        "device_name": _device_name(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "quick": harness.QUICK,
        "copy_gb_per_s": config.stash.get(COPY_GBPS, None),
        "command": f"{settings} {command}".strip(),
    }
