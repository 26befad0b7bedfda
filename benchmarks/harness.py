"""Honest timing for the benchmark suites.

- Warm-up (and with it torch.compile's compilation) runs before the clock starts.
- GPU work is synchronised at the end of every timed round of calls; a round lasts at least
  MIN_ROUND_S, so a synchronisation costs under 1% and tiny kernels are timed by throughput.
- Inputs that would sit in a cache (L2 on the GPU, L3 on the CPU) are rotated through a pool of
  copies whose total exceeds ROTATION_BYTES, so every call reads from memory as in training.
- pytest-benchmark's stats are made per call (`per_call`): its table, its JSON and the terminal
  summary of benchmarks/conftest.py compare rows whatever their calls per round.
- torch's CPU threads default to the physical cores available less one, and less those other
  processes keep busy (`bench_threads`): a thread more than the idle cores makes every OpenMP region
  wait out a scheduler slice.
- Every result carries its speedups over eager and torch.compile at the same size, measured in
  the same test with the baselines' rounds interleaved with its own (`measure`), so they hold
  whatever the order or selection of the tests and however the load of the machine drifts.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
import pathlib
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import pytest
import torch
from pytest_benchmark.stats import Metadata, Stats

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Quick mode (the default without CUDA) trims sizes, rounds and torch.compile runs for the CPU CI run
# (benchmarks/sizes.py says which).
QUICK = os.environ.get("GEDI_BENCH_QUICK", "0" if DEVICE == "cuda" else "1") == "1"
# GEDI_BENCH_COMPILE=0 skips every torch.compile run: compile rows and compile baselines.
COMPILE = os.environ.get("GEDI_BENCH_COMPILE", "1") == "1"
IMPLS = ("eager", "compile", "ours")
BASELINES = ("eager", "compile")
ROTATION_BYTES = 128 * 2**20  # over twice an H200's L2 and four times this CPU's L3
COPY_BYTES = (1024 if DEVICE == "cuda" else 256) * 2**20
MIN_ROUND_S = 2e-3
MAX_CALLS_PER_ROUND = 1000
ROUND_BUDGET_S = 0.4 if QUICK else 1.0  # a result's timed rounds, its baselines' included, take about this long
# GEDI_BENCH_MIN_ROUNDS=N times at least N rounds per result, slow ones included (a second-long CNN
# step gets 3 by default): a noisy machine needs more for a steady median.
MIN_ROUNDS = int(os.environ.get("GEDI_BENCH_MIN_ROUNDS", "5"))
MAX_ROUNDS = max(MIN_ROUNDS, 15 if QUICK else 50)
# SLOW_ROUNDS: when one round (own and baselines') already exceeds ROUND_BUDGET_S.
SLOW_ROUNDS = int(os.environ.get("GEDI_BENCH_MIN_ROUNDS", "3"))
WARMUP_CALLS = 3

Call = Callable[[], object]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Case:
    """One size of one op. ideal_bytes: the bytes a perfect kernel moves (None for compute-bound steps)."""

    op: str
    size: str
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    ideal_bytes: int | None = None
    compile_in_quick: bool = False  # whether quick mode still measures torch.compile at this size

    @property
    def key(self) -> tuple[str, str, str]:
        return self.op, self.size, dtype_name(self.dtype)

    @property
    def id(self) -> str:
        return self.size if self.dtype == torch.float32 else f"{self.size}-{dtype_name(self.dtype)}"


Builder = Callable[[Case, str], Call]  # (case, impl) -> one call; raises pytest.skip where impl cannot run


def params(cases: list[Case], impls: tuple[str, ...] = IMPLS) -> list:
    """pytest params (case, impl): the impls of one case side by side, eager and compile first."""
    return [pytest.param(case, impl, id=f"{case.id}-{impl}") for case in cases for impl in impls]


def compiled_if(impl: str, fn: Callable) -> Callable:
    """fn under torch.compile (one static graph per input shape) for the compile impl, else fn."""
    return torch.compile(fn, dynamic=False) if impl == "compile" else fn


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def rotating(
    set_bytes: int, make: Callable[[int], tuple[torch.Tensor, ...]], leaves: bool = False
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Cycle through input sets that together exceed ROTATION_BYTES (a single set when it does alone).

    make(n) returns tensors with a leading dimension n; set i is their i-th slices, made up front so
    a call pays no indexing. leaves=True makes each slice a leaf that requires grad.
    """
    count = max(1, math.ceil(ROTATION_BYTES / max(set_bytes, 1)))
    slices = [t.unbind(0) for t in make(count)]
    if leaves:
        slices = [[s.detach().requires_grad_(True) for s in tensor_slices] for tensor_slices in slices]
    return itertools.cycle(list(zip(*slices)))


def calibrate(call: Call) -> tuple[int, float]:
    """Warm up, then choose the calls per round; returns (calls per round, seconds per round).

    The first call compiles (torch.compile, Triton's JIT) and is never timed; the second tells
    whether the op is slow (over ROUND_BUDGET_S: then one call per round and no more warm-up).
    """
    call()
    sync()
    start = time.perf_counter()
    call()
    sync()
    per_call = time.perf_counter() - start
    if per_call > ROUND_BUDGET_S:
        return 1, per_call
    for _ in range(WARMUP_CALLS - 2):
        call()
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            call()
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= MIN_ROUND_S or calls >= MAX_CALLS_PER_ROUND:
            break
        calls *= 2
    inner = min(MAX_CALLS_PER_ROUND, max(1, math.ceil(MIN_ROUND_S * calls / elapsed)))
    return inner, inner * elapsed / calls


def rounds_for(seconds_per_round: float) -> int:
    """Rounds that fill ROUND_BUDGET_S, within [MIN_ROUNDS, MAX_ROUNDS]; SLOW_ROUNDS past the budget."""
    if seconds_per_round > ROUND_BUDGET_S:
        return SLOW_ROUNDS
    return min(MAX_ROUNDS, max(MIN_ROUNDS, math.ceil(ROUND_BUDGET_S / seconds_per_round)))


def round_of(call: Call, inner: int) -> Call:
    """inner calls, then a synchronisation: one timed round."""

    def run() -> None:
        for _ in range(inner):
            call()
        sync()

    return run


def timed(run: Call) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def available_cores() -> int:
    """Physical cores this process may run on: its CPU affinity counted one per core (hyperthread
    siblings share one), capped by a cgroup v2 CPU quota (a container's CPU limit)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = {_core_of(cpu) for cpu in cpus}
    try:
        quota, period = pathlib.Path("/sys/fs/cgroup/cpu.max").read_text().split()
        limit = len(cores) if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        limit = len(cores)
    return min(len(cores), limit)


def _core_of(cpu: int) -> tuple[str, str] | int:
    topology = pathlib.Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
    try:
        return (topology / "physical_package_id").read_text(), (topology / "core_id").read_text()
    except OSError:
        return cpu


@dataclass(frozen=True)
class CpuClock:
    """When, and the CPU seconds the whole machine and this process (with its waited-for children) had
    used then; two of them give the CPUs other processes kept busy in between (`others_busy`)."""

    wall: float
    machine: float | None  # None where /proc/stat cannot be read
    own: float

    @classmethod
    def now(cls) -> CpuClock:
        try:
            ticks = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
            machine = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        except (OSError, ValueError, IndexError):
            machine = None
        own = os.times()
        return cls(time.perf_counter(), machine, own.user + own.system + own.children_user + own.children_system)


def others_busy(start: CpuClock, end: CpuClock) -> float | None:
    """CPUs that other processes kept busy on average between two clocks (None where unknown)."""
    if start.machine is None or end.machine is None or end.wall <= start.wall:
        return None
    return max(0.0, (end.machine - start.machine - (end.own - start.own)) / (end.wall - start.wall))


def bench_threads(sample_s: float = 0.25) -> tuple[int, str]:
    """torch's CPU threads for a run, and why: GEDI_BENCH_THREADS, else OMP_NUM_THREADS, else the
    physical cores available less one left to other processes, and less the CPUs they keep busy over
    `sample_s` (at least one thread).

    A thread more than the idle cores makes every OpenMP region wait a scheduler slice for the thread
    another process holds, and a shared machine's load comes and goes during a run: with all its
    cores a 2-core machine gave times 40-50x too high, with the spare core within 2x.
    """
    for name in ("GEDI_BENCH_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").split(",")[0].strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise pytest.UsageError(f"{name} must be a positive integer of threads, not {value!r}")
            return int(value), f"{name}={value}"
    cores, start = available_cores(), CpuClock.now()
    time.sleep(sample_s)
    busy = others_busy(start, CpuClock.now()) or 0.0
    spare = min(1, cores - 1)
    threads = max(1, min(cores - spare, math.floor((os.cpu_count() or cores) - busy + 0.5)))
    why = f"{cores} physical cores available" + (", one left to other processes" if spare else "")
    return threads, why + (f", {busy:.1f} CPUs busy with them at the start" if threads < cores - spare else "")


def per_call(metadata: Metadata, calls: int) -> None:
    """Make pytest-benchmark's stats of rounds of `calls` calls per call, as its `iterations` are
    (pedantic refuses iterations with a setup, which runs the baselines): its table, JSON stats and
    --benchmark-compare then compare rows whatever their calls per round."""
    stats = Stats()
    stats.data = [seconds / calls for seconds in metadata.stats.data]
    metadata.stats, metadata.iterations = stats, metadata.iterations * calls


def copy_bandwidth() -> float:
    """The device's copy bandwidth in GB/s (bytes read plus bytes written), from dst.copy_(src)."""
    src = torch.empty(COPY_BYTES // 4, device=DEVICE).uniform_()
    dst = torch.empty_like(src)

    def copy() -> None:
        dst.copy_(src)

    inner, per_round = calibrate(copy)
    run = round_of(copy, inner)
    seconds = statistics.median(timed(run) for _ in range(rounds_for(per_round))) / inner
    return 2 * src.nbytes / seconds / 1e9


@functools.cache
def compile_unavailable() -> str | None:
    """Why torch.compile rows cannot run here, or None when they can."""
    if not COMPILE:
        return "GEDI_BENCH_COMPILE=0: torch.compile runs are off"
    try:
        torch.compile(lambda t: t * 2 + 1, dynamic=False)(torch.ones(8, device=DEVICE))
    except Exception as error:  # any failure of the toolchain means: no compile rows, with its reason
        return f"torch.compile does not work here: {type(error).__name__}: {error}"
    return None


@dataclass(frozen=True)
class Round:
    """One timed round of an impl at a case: `run` makes `inner` warm calls and synchronises; it
    took about `seconds` when calibrated."""

    run: Call
    inner: int
    seconds: float


class CaseCalls:
    """The rounds of the case being measured, each built, warmed up and calibrated once: a row and
    the rows that time it as a baseline share it (one compiled graph, one warm-up). Moving on to
    another case frees them and their inputs."""

    def __init__(self) -> None:
        self._rounds: dict[str, Round] = {}
        self._key: tuple | None = None

    def get(self, case: Case, impl: str, build: Builder) -> Round:
        """impl's round at case; raises pytest.skip where impl cannot run."""
        if case.key != self._key:
            self._rounds, self._key = {}, case.key
        if impl not in self._rounds:
            if impl == "compile":
                reason = compile_unavailable()
                if reason is None and QUICK and not case.compile_in_quick:
                    reason = "quick mode: torch.compile is measured at fewer sizes (GEDI_BENCH_QUICK=0 for all)"
                if reason is not None:
                    pytest.skip(reason)
            call = build(case, impl)
            inner, seconds = calibrate(call)
            self._rounds[impl] = Round(round_of(call, inner), inner, seconds)
        return self._rounds[impl]

    def baselines(self, case: Case, impl: str, build: Builder) -> dict[str, Round]:
        """The rounds of eager and compile, other than impl, that can run at case."""
        out = {}
        for name in BASELINES:
            if name != impl:
                try:
                    out[name] = self.get(case, name, build)
                except pytest.skip.Exception:
                    continue
        return out


def measure(benchmark, calls: CaseCalls, copy_gbps: float, case: Case, impl: str, build: Builder) -> None:
    """Time impl at case with pytest-benchmark (stats per call), the baselines interleaved, and fill extra_info.

    Before each timed round of impl, one round of each baseline (eager, compile) runs, timed apart
    (pytest-benchmark's untimed setup): the speedups compare rounds run side by side, so a load that
    drifts over the run (a shared machine) moves both sides alike.
    """
    own = calls.get(case, impl, build)
    baselines = calls.baselines(case, impl, build)
    samples: dict[str, list[float]] = {name: [] for name in baselines}

    def run_baselines() -> None:
        for name, other in baselines.items():
            samples[name].append(timed(other.run) / other.inner)

    benchmark.group = f"{case.op} {case.id}"
    rounds = rounds_for(own.seconds + sum(other.seconds for other in baselines.values()))
    benchmark.pedantic(own.run, setup=run_baselines, rounds=rounds, iterations=1, warmup_rounds=0)
    if benchmark.disabled:  # --benchmark-disable: each case ran once as a smoke test; no timings to record
        return
    per_call(benchmark.stats, own.inner)
    seconds = benchmark.stats.stats.median
    side_by_side = {impl: seconds, **{name: statistics.median(times) for name, times in samples.items()}}
    gbps = None if case.ideal_bytes is None else case.ideal_bytes / seconds / 1e9
    benchmark.extra_info.update(
        op=case.op, impl=impl, size=case.size, shape=list(case.shape), dtype=dtype_name(case.dtype),
        device=DEVICE, quick=QUICK, median_us=seconds * 1e6, calls_per_round=own.inner, rounds=rounds,
        ideal_bytes=case.ideal_bytes, gb_per_s=gbps, copy_gb_per_s=copy_gbps,
        pct_of_copy=None if gbps is None else 100 * gbps / copy_gbps,
        baseline_us={name: side_by_side[name] * 1e6 for name in BASELINES if name in side_by_side},
        **{f"speedup_vs_{name}": side_by_side[name] / seconds if name in side_by_side else None for name in BASELINES},
    )
