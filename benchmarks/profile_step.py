"""Where one training step's time goes: torch.profiler over warm steps of GEDITrainer.train_step, split
into the phases the trainer labels (trainer.STEP_PHASES), with the operators that cost most, the
step's host syncs and its allocations.

    python -m benchmarks.profile_step --dataset mnist5k --preset cpu-images [--set KEY=VALUE ...]

prints Markdown: a phase table (ms per step, share of the step) and the top operators. The step is
also timed without the profiler (median of --timed steps), since profiling inflates small operators.
docs/RESULTS.md holds the figures of a run.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.profiler import ProfilerActivity, profile

from gedi_fast.train.config import parse_settings
from gedi_fast.train.data import load_dataset
from gedi_fast.train.presets import preset_settings
from gedi_fast.train.trainer import STEP_PHASES, GEDITrainer, TrainConfig

HOST_SYNCS = ("aten::item", "aten::_local_scalar_dense")
ALLOCATIONS = ("aten::empty", "aten::empty_strided", "aten::empty_like", "aten::zeros", "aten::zeros_like")


def build_trainer(dataset: str, preset: str, settings: list[str], threads: int) -> GEDITrainer:
    torch.set_num_threads(threads)
    data = load_dataset(dataset)
    config = TrainConfig.from_settings(**preset_settings(preset, data.kind, "cpu") | parse_settings(settings)
                                       | {"dataset": dataset})
    return GEDITrainer(config, tempfile.mkdtemp(prefix="gedi_fast_profile_"), data)


def timed_steps(trainer: GEDITrainer, steps: int) -> float:
    """Median wall time of one step, in ms, without the profiler."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def profile_steps(trainer: GEDITrainer, steps: int) -> tuple[dict[str, float], list[tuple[str, float, int]], dict]:
    """(ms per step of each phase, top operators (name, self ms per step, calls per step), counts per step)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            trainer.train_step()
    averages = prof.key_averages()
    phases = {event.key: event.cpu_time_total / 1e3 / steps for event in averages if event.key in STEP_PHASES}
    operators = sorted(((e.key, e.self_cpu_time_total / 1e3 / steps, e.count // steps) for e in averages
                        if e.key not in STEP_PHASES), key=lambda row: -row[1])
    counts = {"host syncs": sum(e.count for e in averages if e.key in HOST_SYNCS) / steps,
              "allocations": sum(e.count for e in averages if e.key in ALLOCATIONS) / steps,
              "operators": sum(e.count for e in averages if e.key.startswith("aten::")) / steps}
    return phases, operators, counts


def report(trainer: GEDITrainer, steps: int, timed: int, top: int) -> str:
    for _ in range(3):  # buffer, allocator and Adam state warm
        trainer.train_step()
    wall = timed_steps(trainer, timed)
    phases, operators, counts = profile_steps(trainer, steps)
    profiled = sum(phases.values())
    lines = [f"Step: {wall:.0f} ms (median of {timed}, no profiler); precision {trainer.precision}, "
             f"{str(trainer.memory_format).removeprefix('torch.')}, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}.", "",
             "| phase | ms per step (profiled) | share |", "|---|---|---|"]
    lines += [f"| {name.removeprefix('step:')} | {phases.get(name, 0.0):.1f} | {phases.get(name, 0.0) / profiled:.0%} |"
              for name in STEP_PHASES]
    lines += ["", f"Per step: {counts['operators']:.0f} aten operators, {counts['host syncs']:.0f} host syncs, "
              f"{counts['allocations']:.0f} allocations.", "",
              "| operator | self ms per step | calls per step |", "|---|---|---|"]
    lines += [f"| {name} | {ms:.1f} | {calls} |" for name, ms, calls in operators[:top]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--preset", default="auto", help="a gedi_fast.train.presets name (auto: by the dataset's kind)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=5, help="profiled steps")
    parser.add_argument("--timed", type=int, default=10, help="steps timed without the profiler")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=12, help="operators listed")
    args = parser.parse_args(argv)
    print(report(build_trainer(args.dataset, args.preset, args.set, args.threads), args.steps, args.timed, args.top))


if __name__ == "__main__":
    main()
