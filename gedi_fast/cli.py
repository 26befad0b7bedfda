"""`gedi-fast` command line: parse the flags, hand the command to its wing (gedi_fast.train.commands:
train, eval, assign, export; gedi_fast.experiments.commands: triad, study, images), and turn the
errors a user can fix into one line and an exit status. A command's module is imported only when it
runs, so `--help` and a rank's start stay light (no scikit-learn, no matplotlib)."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

from gedi_fast.experiments.images import DATASETS as IMAGE_EXPERIMENT_DATASETS
from gedi_fast.experiments.studies import STUDIES
from gedi_fast.experiments.triad import DATASETS as TRIAD_DATASETS
from gedi_fast.train import launch
from gedi_fast.train.clusterer import EXPORT_FORMATS
from gedi_fast.train.config import RESUME_CHANGEABLE, settings_help
from gedi_fast.train.data import LOADERS, DatasetUnavailable
from gedi_fast.train.presets import CHOICES as PRESET_CHOICES
from gedi_fast.train.sample_quality import CACHE_ENV
from gedi_fast.train.trainer import TrainingStopped
from gedi_fast.version import version_line

# Each command's handler, as (module, function): imported when the command runs.
HANDLERS = {
    "train": ("gedi_fast.train.commands", "train"),
    "eval": ("gedi_fast.train.commands", "evaluate"),
    "assign": ("gedi_fast.train.commands", "assign_command"),
    "export": ("gedi_fast.train.commands", "export_command"),
    "triad": ("gedi_fast.experiments.commands", "triad_command"),
    "study": ("gedi_fast.experiments.commands", "study_command"),
    "images": ("gedi_fast.experiments.commands", "images_command"),
}


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1 (a count of seeds or jobs)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expects an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="gedi-fast", description=__doc__)
    root.add_argument("--version", action="version", version=version_line())
    commands = root.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="train GEDI on a dataset and write DIR/metrics.json "
                              "(under torchrun: DDP, one rank per process)")
    run.add_argument("--dataset", choices=sorted(LOADERS), help="default: moons")
    run.add_argument("--out", required=True, help="run folder (checkpoint, metrics.json)")
    run.add_argument("--steps", type=int, help="training steps in all (default: TrainConfig.steps); with "
                     "--resume, a larger number extends the run")
    run.add_argument("--seed", type=int, help="default: 0")
    run.add_argument("--device", help="default: cpu")
    run.add_argument("--data-root", help="folder holding file-based datasets (cifar10, cifar100, svhn, ...)")
    run.add_argument("--resume", nargs="?", const="yes", choices=("yes", "auto"),
                     help=f"continue the run saved in --out (it must be there); `--resume auto`: continue it when "
                          f"there is one, else start it, so one command line serves the first start and every "
                          f"restart (torchrun --max-restarts). A resumed run keeps its dataset, seed and settings "
                          f"except {', '.join(RESUME_CHANGEABLE)}")
    run.add_argument("--config", metavar="FILE",
                     help="settings from a JSON or YAML file (a mapping of --set keys, or a run's metrics.json to "
                          "train that run again); --dataset, --seed, --device, --set and --steps override it")
    run.add_argument("--overwrite", action="store_true",
                     help="start a new run in an --out that holds one, removing its checkpoints and metrics "
                          "(without it, such an --out is refused)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help=f"a TrainConfig setting (default; image data: a --preset on top), one of: {settings_help()}")
    run.add_argument("--preset", choices=PRESET_CHOICES, default="auto",
                     help="settings for image data, under --set and --steps: cpu-images (about 10 min on 2 CPU "
                          "cores), paper-images (the paper's network and SGLD, for a GPU); auto (default): "
                          "paper-images on a CUDA --device, cpu-images otherwise, none for vector data")
    check = commands.add_parser("eval", help="evaluate the checkpoint saved in a run folder; --ood: "
                                "out-of-distribution AUROCs against another dataset")
    check.add_argument("--out", required=True)
    check.add_argument("--ood", choices=sorted(LOADERS), metavar="DATASET",
                       help="a dataset of the same input shape whose test split is the out-of-distribution class "
                            f"(one of {', '.join(sorted(LOADERS))})")
    check.add_argument("--data-root", help="folder holding the --ood dataset when it is file-based "
                       "(default: the run's --data-root)")
    check.add_argument("--fid", action="store_true",
                       help="image runs: Fréchet distances of the run's SGLD samples, its replay buffer, uniform "
                            "noise and the training split to the test split, in an evaluation classifier's "
                            f"features (trained once per dataset split and cached under ${CACHE_ENV}, default "
                            "~/.cache/gedi_fast)")
    assign = commands.add_parser("assign", help="cluster new data with a trained run: cluster ids, probabilities "
                                 "p(k|x) and energies of each row")
    assign.add_argument("--out", required=True, help="the run folder")
    assign.add_argument("--input", required=True, metavar="FILE",
                        help="rows in the units of the run's raw data (.npy array or .pt tensor): vectors N x D; "
                             "images as 0..255 values, N x C x H x W or N x H x W")
    assign.add_argument("--output", required=True, metavar="FILE",
                        help="where the result goes; .npz or .pt (arrays cluster, probabilities, energy) or .csv "
                             "(cluster, energy, p0..pK-1 per row)")
    assign.add_argument("--batch-size", type=positive_int, default=4096, help="rows per forward pass")
    exporting = commands.add_parser("export", help="write a trained run's clusterer for use without gedi_fast")
    exporting.add_argument("--out", required=True, help="the run folder")
    exporting.add_argument("--output", required=True, metavar="FILE", help="where the exported program goes")
    exporting.add_argument("--format", choices=EXPORT_FORMATS, default="torch.export",
                           help="torch.export (default; load with torch.export.load) or torchscript (torch.jit.load)")
    triad = commands.add_parser("triad", help="full GEDI, its ablations and k-means over seeds; a Markdown table")
    triad.add_argument("--datasets", nargs="+", default=list(TRIAD_DATASETS), choices=sorted(LOADERS))
    triad.add_argument("--seeds", type=positive_int, default=5)
    triad.add_argument("--steps", type=int, help="training steps per run (default: TrainConfig.steps)")
    triad.add_argument("--out", default="runs/triad", help="folder for the runs")
    triad.add_argument("--report", help="where the Markdown table goes (default: OUT/RESULTS.md; the curated "
                       "docs/RESULTS.md changes only by hand)")
    triad.add_argument("--jobs", type=positive_int, default=1, help="runs trained at once, one CPU thread each")
    triad.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help=f"a TrainConfig setting for every run (default), one of: {settings_help()}")
    study = commands.add_parser("study", help="a study beyond the paper (" + ", ".join(
        f"{name}: {s.question}" for name, s in STUDIES.items()) + "); a Markdown table, its figures beside it and "
        "results.json (every run's scores) under --out")
    study.add_argument("name", choices=sorted(STUDIES))
    study.add_argument("--seeds", type=positive_int, help="seeds per variant (default: the study's, 3)")
    study.add_argument("--steps", type=int, help="training steps per run (default: TrainConfig.steps)")
    study.add_argument("--out", help="folder for the runs (default: runs/study_NAME)")
    study.add_argument("--report", help="where the Markdown table goes, its figures beside it (default: OUT/NAME.md; "
                       "docs/studies/ changes only by hand)")
    study.add_argument("--jobs", type=positive_int, default=1, help="runs trained at once, one CPU thread each")
    study.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help=f"a TrainConfig setting for every run (default), one of: {settings_help()}")
    images = commands.add_parser("images", help="GEDI with and without gen on MNIST-5k and Fashion-MNIST, k-means, "
                                 "OOD of each against the other, over seeds; Markdown tables")
    images.add_argument("--datasets", nargs="+", default=list(IMAGE_EXPERIMENT_DATASETS),
                        choices=IMAGE_EXPERIMENT_DATASETS)
    images.add_argument("--seeds", type=positive_int, default=3)
    images.add_argument("--out", default="runs/images", help="folder for the runs")
    images.add_argument("--report", help="where the Markdown tables go (default: OUT/RESULTS.md)")
    images.add_argument("--jobs", type=positive_int, default=1, help="runs trained at once, one CPU thread each")
    images.add_argument("--device", default="cpu")
    images.add_argument("--data-root", help="folder holding Fashion-MNIST's IDX files when not Debian's")
    images.add_argument("--preset", choices=PRESET_CHOICES, default="auto", help="as for train")
    images.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainConfig setting for every run, over the preset")
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.argv = argv
    if args.command != "train" and launch.torchrun_world_size() > 1:
        print(f"gedi-fast: error: only train runs under torchrun; run {args.command} as one process", file=sys.stderr)
        return 2
    try:
        module, function = HANDLERS[args.command]
        return getattr(importlib.import_module(module), function)(args)
    except (DatasetUnavailable, OSError, ValueError, TypeError) as err:
        print(f"gedi-fast: error: {err}", file=sys.stderr)
        return 2
    except (FloatingPointError, TrainingStopped) as err:
        print(f"gedi-fast: training failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outside the training loop (loading data, evaluating): nothing to save
        print("\ngedi-fast: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
