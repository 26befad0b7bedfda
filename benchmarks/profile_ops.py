"""Where an op's time goes on the device: each kernel's time per call against the call's wall time, so a
slow result reads as host overhead (wall well above the kernels' sum), a slow kernel, or too many launches.

    python -m benchmarks.profile_ops [--ops gedi_fwd gedi_fwd_bwd sinkhorn] [--impls ours compile] [--calls 20]

prints Markdown, one table per op and size, built from the benchmark suites' own cases and calls
(benchmarks/test_bench_gedi.py, benchmarks/test_bench_sinkhorn.py), the sizes of the run's mode. The
wall time per call is a median over synchronised rounds without the profiler.
"""
from __future__ import annotations

import argparse
import collections
import statistics
import time

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import harness, test_bench_gedi, test_bench_sinkhorn

# op -> (the suite whose `build` makes its calls, its cases)
SUITES = {"gedi_fwd": (test_bench_gedi, lambda: test_bench_gedi.cases("gedi_fwd")),
          "gedi_fwd_bwd": (test_bench_gedi, lambda: test_bench_gedi.cases("gedi_fwd_bwd")),
          "sinkhorn": (test_bench_sinkhorn, test_bench_sinkhorn.cases)}


def wall_us(call: harness.Call, calls: int) -> float:
    """Median over 5 rounds of `calls` synchronised calls, in microseconds per call."""
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        harness.sync()
        rounds.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(rounds)


def kernel_times(call: harness.Call, calls: int) -> dict[str, tuple[float, float]]:
    """Kernel name -> (microseconds per call, launches per call), from torch.profiler's device activity."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if harness.DEVICE == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            call()
        harness.sync()
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            totals[event.name][0] += event.time_range.elapsed_us() / calls
            totals[event.name][1] += 1 / calls
    return {name: (us, launches) for name, (us, launches) in totals.items()}


def table(op: str, case: harness.Case, impl: str, calls: int) -> list[str]:
    try:
        call = SUITES[op][0].build(case, impl)
    except pytest.skip.Exception as skipped:
        return [f"{op} {case.id} {impl}: not run ({skipped.msg})", ""]
    harness.calibrate(call)  # compiles and warms up
    wall = wall_us(call, calls)
    kernels = kernel_times(call, calls)
    busy = sum(us for us, _ in kernels.values())
    ideal = f", {case.ideal_bytes / busy / 1e3:.0f} GB/s over kernel time" if case.ideal_bytes and busy else ""
    lines = [f"**{op} {case.id}, {impl}**: {wall:.1f} us per call; kernels {busy:.1f} us "
             f"({sum(n for _, n in kernels.values()):.0f} launches){ideal}", "",
             "| kernel | us per call | launches per call |", "|---|---|---|"]
    for name, (us, launches) in sorted(kernels.items(), key=lambda item: -item[1][0]):
        lines.append(f"| `{name[:90]}` | {us:.1f} | {launches:.0f} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", nargs="+", default=list(SUITES), choices=list(SUITES))
    parser.add_argument("--impls", nargs="+", default=["ours", "compile"], choices=list(harness.IMPLS))
    parser.add_argument("--sizes", nargs="+", default=None, help="case ids to keep (default: all of the mode)")
    parser.add_argument("--calls", type=int, default=20, help="calls per timed round and per profile")
    args = parser.parse_args(argv)
    print(f"Device {torch.cuda.get_device_name() if harness.DEVICE == 'cuda' else 'cpu'}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n")
    for op in args.ops:
        for case in SUITES[op][1]():
            if args.sizes is None or case.id in args.sizes:
                for impl in args.impls:
                    print("\n".join(table(op, case, impl, args.calls)), flush=True)


if __name__ == "__main__":
    main()
