"""`gedi-fast` command line: train a clustering run, or evaluate a saved one."""
from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

from gedi_fast.data import LOADERS, DatasetUnavailable
from gedi_fast.plots import plot_run
from gedi_fast.trainer import CHECKPOINT_NAME, GEDITrainer, TrainConfig

SUMMARY_KEYS = ("nmi", "ari", "acc", "largest_cluster_share", "usage_entropy", "view_agreement", "steps")


def _overrides(pairs: list[str]) -> dict:
    """--set key=value pairs, typed like the TrainConfig field they name."""
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    defaults = TrainConfig()
    result = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in fields:
            raise SystemExit(f"--set expects key=value with key one of {sorted(fields)}, got {pair!r}")
        kind = type(getattr(defaults, key))
        try:
            result[key] = text if kind in (str, type(None)) else kind(text)
        except ValueError:
            raise SystemExit(f"--set {key} expects a {kind.__name__}, got {text!r}") from None
    return result


def _summary(scores: dict) -> str:
    return "  ".join(f"{k}={scores[k]:.4g}" if isinstance(scores[k], float) else f"{k}={scores[k]}" for k in SUMMARY_KEYS)


def train(args: argparse.Namespace) -> int:
    out = pathlib.Path(args.out)
    if args.resume:
        trainer = GEDITrainer.resume(out)
    else:
        options = dict(dataset=args.dataset, seed=args.seed, device=args.device, data_root=args.data_root)
        if args.steps is not None:
            options["steps"] = args.steps
        trainer = GEDITrainer(TrainConfig(**options | _overrides(args.set)), out)
    trainer.train()
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


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gedi-fast", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="train GEDI on a dataset and write DIR/metrics.json")
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
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.handler(args)
    except (DatasetUnavailable, FileNotFoundError, ValueError, TypeError) as err:
        print(f"gedi-fast: error: {err}", file=sys.stderr)
        return 2
