"""`gedi-fast` command line: train a clustering run, or evaluate a saved one."""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import pathlib
import platform
import sys
import time

import torch

from gedi_fast import checkpoint, launch
from gedi_fast.data import LOADERS, DatasetUnavailable
from gedi_fast.plots import plot_run
from gedi_fast.trainer import CHECKPOINT_NAME, GEDITrainer, TrainConfig

SUMMARY_KEYS = ("nmi", "ari", "acc", "largest_cluster_share", "usage_entropy", "view_agreement", "steps")


def _overrides(pairs: list[str]) -> dict:
    """--set key=value pairs, typed like the TrainConfig field they name ("none" clears an optional one)."""
    fields = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    result = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set expects key=value with key one of {sorted(fields)}, got {pair!r}")
        annotation = fields[key]
        if "None" in annotation and text.lower() == "none":
            result[key] = None
            continue
        if annotation == "bool":
            if text.lower() not in ("true", "false"):
                raise SystemExit(f"--set {key} expects true or false, got {text!r}")
            result[key] = text.lower() == "true"
            continue
        kind = next((k for k in (int, float) if annotation.startswith(k.__name__)), str)
        try:
            result[key] = kind(text)
        except ValueError:
            raise SystemExit(f"--set {key} expects a {kind.__name__}, got {text!r}") from None
    return result


def _summary(scores: dict) -> str:
    return "  ".join(f"{k}={scores[k]:.4g}" if isinstance(scores[k], float) else f"{k}={scores[k]}" for k in SUMMARY_KEYS)


def train(args: argparse.Namespace) -> int:
    """One process, or under torchrun one rank of a DDP run; rank 0 alone evaluates, plots and prints."""
    out = pathlib.Path(args.out)
    state = checkpoint.load_latest(out / CHECKPOINT_NAME) if args.resume else None
    if state is not None:
        config = TrainConfig(**state["config"])
    else:
        options = dict(dataset=args.dataset, seed=args.seed, device=args.device, data_root=args.data_root)
        if args.steps is not None:
            options["steps"] = args.steps
        config = TrainConfig(**options | _overrides(args.set))
    with launch.torchrun_process_group(config.device):
        trainer = GEDITrainer(config, out)
        if state is not None:
            trainer.load_state_dict(state)
        trainer.train(progress=sys.stderr.isatty())
        if trainer.rank != 0:
            return 0
    scores = trainer.evaluate()
    path = trainer.write_metrics(scores)
    pictures = plot_run(trainer)
    print(f"{trainer.config.dataset}: {_summary(scores)}")
    print(f"metrics: {path}; checkpoint: {out / CHECKPOINT_NAME}; plots: {', '.join(p.name for p in pictures)} in {out}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    trainer = GEDITrainer.resume(args.out)
    scores = trainer.evaluate()
    print(f"{trainer.config.dataset}: {_summary(scores)}")
    return 0


def triad_command(args: argparse.Namespace) -> int:
    from gedi_fast import triad

    base = TrainConfig(**_overrides(args.set))
    started = time.perf_counter()
    results = triad.run(args.datasets, range(args.seeds), args.steps, args.out, base, jobs=args.jobs)
    minutes = (time.perf_counter() - started) / 60
    table = triad.markdown_table(results, args.datasets)
    command = " ".join(["gedi-fast", *sys.argv[1:]]) if args.argv is None else " ".join(["gedi-fast", *args.argv])
    report = pathlib.Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    where = (f"{datetime.date.today()}, {platform.processor() or platform.machine()} with {os.cpu_count()} CPUs, "
             f"Python {platform.python_version()}, torch {torch.__version__}; {minutes:.0f} min wall")
    report.write_text(f"# The failure-mode triad on our data\n\nCommand: `{command}`\n\nRun: {where}.\n\n{table}\n")
    print(table)
    print(f"table: {report}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gedi-fast", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="train GEDI on a dataset and write DIR/metrics.json "
                              "(under torchrun: DDP, one rank per process)")
    run.add_argument("--dataset", choices=sorted(LOADERS), default="moons")
    run.add_argument("--out", required=True, help="run folder (checkpoint, metrics.json)")
    run.add_argument("--steps", type=int, help="training steps (default: TrainConfig.steps)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="cpu")
    run.add_argument("--data-root", help="folder holding file-based datasets (cifar10, cifar100, svhn, ...)")
    run.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any TrainConfig field")
    run.set_defaults(handler=train)
    check = commands.add_parser("eval", help="evaluate the checkpoint saved in a run folder")
    check.add_argument("--out", required=True)
    check.set_defaults(handler=evaluate)
    triad = commands.add_parser("triad", help="full GEDI, its ablations and k-means over seeds; a Markdown table")
    triad.add_argument("--datasets", nargs="+", default=["moons", "circles", "digits"], choices=sorted(LOADERS))
    triad.add_argument("--seeds", type=int, default=5)
    triad.add_argument("--steps", type=int, help="training steps per run (default: TrainConfig.steps)")
    triad.add_argument("--out", default="runs/triad", help="folder for the runs")
    triad.add_argument("--report", default="docs/RESULTS.md", help="where the Markdown table goes")
    triad.add_argument("--jobs", type=int, default=1, help="runs trained at once, one CPU thread each")
    triad.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig field for every run")
    triad.set_defaults(handler=triad_command)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = argv
    if args.command != "train" and launch.torchrun_world_size() > 1:
        print(f"gedi-fast: error: only train runs under torchrun; run {args.command} as one process", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except (DatasetUnavailable, OSError, ValueError, TypeError) as err:
        print(f"gedi-fast: error: {err}", file=sys.stderr)
        return 2
    except FloatingPointError as err:
        print(f"gedi-fast: training failed: {err}", file=sys.stderr)
        return 1
