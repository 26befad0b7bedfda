"""pytest wiring for the suites: torch's threads, one run's baselines and copy bandwidth, the `bench`
fixture every suite times through (benchmarks/harness.py), the run's metadata in the --benchmark-json
output, and a summary after pytest-benchmark's table (benchmarks/report.py, `terminal_summary`): per-call
times, GB/s and speedups per group, and the command that writes the full report."""
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

from benchmarks import harness, report

CASE_CALLS = pytest.StashKey[harness.CaseCalls]()
COPY_GBPS = pytest.StashKey[float]()
THREADS_WHY = pytest.StashKey[str]()
START = pytest.StashKey[harness.CpuClock]()
GROUPS = pytest.StashKey[list]()

# Each size compiles its own static graph of the same reference functions: keep every one compiled
# (past the default limit of 8 per function, dynamo would silently fall back to eager). The limit
# was called cache_size_limit before torch 2.7.
_LIMIT = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
setattr(torch._dynamo.config, _LIMIT, 64)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[CASE_CALLS] = harness.CaseCalls()
    threads, config.stash[THREADS_WHY] = harness.bench_threads()
    torch.set_num_threads(threads)
    config.stash[START] = harness.CpuClock.now()
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


@pytest.fixture(autouse=True)
def _threads_in_extra_info(request: pytest.FixtureRequest) -> None:
    """Every result records the threads it ran with, the image-preset suite's (no `bench`) included."""
    if "benchmark" in request.fixturenames:
        request.getfixturevalue("benchmark").extra_info["torch_threads"] = torch.get_num_threads()


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


def run_facts(config: pytest.Config) -> dict:
    """The run's facts: device, versions, threads and the load beside the run, copy bandwidth, the command."""
    settings = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("GEDI_BENCH_"))
    command = " ".join(["python -m pytest", *config.invocation_params.args])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": harness.DEVICE,
        "device_name": _device_name(),
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cuda": torch.version.cuda,
        "torch_threads": torch.get_num_threads(),
        "torch_threads_why": config.stash.get(THREADS_WHY, None),
        "others_busy_cpus": harness.others_busy(config.stash[START], harness.CpuClock.now()),
        "quick": harness.QUICK,
        "copy_gb_per_s": config.stash.get(COPY_GBPS, None),
        "command": f"{settings} {command}".strip(),
    }


def pytest_benchmark_update_json(config: pytest.Config, benchmarks, output_json: dict) -> None:
    """The run's facts beside the results (benchmarks/report.py prints them above its tables)."""
    output_json["gedi_fast"] = run_facts(config)


@pytest.hookimpl(wrapper=True)
def pytest_benchmark_generate_json(config, benchmarks, include_data, machine_info, commit_info):
    """A run stopped inside a case (SIGINT at a time limit) leaves that case without a timed round, on
    which pytest-benchmark's JSON writer fails: leave it out, so the finished cases are written."""
    benchmarks[:] = [bench for bench in benchmarks if bench.stats.data]
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_benchmark_group_stats(config: pytest.Config, benchmarks, group_by):
    """Keep the groups of pytest-benchmark's table (per-call stats) for the summary."""
    groups = yield
    config.stash[GROUPS] = groups
    return groups


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    """After pytest-benchmark's table: per group, the times per call beside GB/s and the speedups over
    the baselines run alongside, under the run's threads and load, then where the full report comes from."""
    groups = config.stash.get(GROUPS, None)
    if not groups or config.getoption("benchmark_quiet"):
        return
    json_path = getattr(config.getoption("benchmark_json"), "name", None)  # an open file, or None
    if not isinstance(json_path, str) or json_path.startswith("<"):  # none, or "-" (<stdout>)
        json_path = None
    terminalreporter.write_sep("-", "gedi_fast: times per call, bandwidth and speedups")
    for line in report.terminal_summary(run_facts(config), groups, json_path):
        terminalreporter.write_line(line)
