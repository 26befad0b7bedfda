"""`gedi-fast` command line: train a clustering run, evaluate a saved one, assign new data with it, export it."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import signal
import sys
import tempfile
import time

import numpy as np
import torch

from gedi_fast.command import version_line
from gedi_fast.experiments.studies import STUDIES
from gedi_fast.train import launch, run_folder, stopping
from gedi_fast.train.clusterer import EXPORT_FORMATS, export, load_run
from gedi_fast.train.config import SETTINGS, SGLD_SETTINGS, setting_types
from gedi_fast.train.data import DATASET_KINDS, LOADERS, DatasetUnavailable, load_dataset
from gedi_fast.train.metrics import merge_into_metrics_json
from gedi_fast.train.ood import record_ood, require_same_shape
from gedi_fast.train.plots import plot_ood, plot_run
from gedi_fast.train.presets import CHOICES as PRESET_CHOICES
from gedi_fast.train.presets import preset_settings
from gedi_fast.train.sample_quality import CACHE_ENV, fid_report
from gedi_fast.train.trainer import (
    CHECKPOINT_NAME,
    RESUME_CHANGEABLE,
    GEDITrainer,
    TrainConfig,
    TrainingStopped,
)

ASSIGN_OUTPUTS = (".npz", ".pt", ".csv")
SUMMARY_KEYS = ("nmi", "ari", "acc", "largest_cluster_share", "usage_entropy", "view_agreement", "steps")


def parse_settings(pairs: list[str]) -> dict:
    """--set key=value pairs, typed like the TrainConfig setting they name ("none" clears an optional one)."""
    fields = setting_types()
    result = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set expects KEY=VALUE with KEY one of {', '.join(SETTINGS)}; got {pair!r}")
        annotation = fields[key]
        if "None" in annotation and text.lower() == "none":
            result[key] = None
            continue
        if annotation == "bool":
            if text.lower() not in ("true", "false"):
                raise ValueError(f"--set {key} expects true or false, got {text!r}")
            result[key] = text.lower() == "true"
            continue
        kind = next((k for k in (int, float) if annotation.startswith(k.__name__)), str)
        try:
            result[key] = kind(text)
        except ValueError:
            raise ValueError(f"--set {key} expects a {kind.__name__}, got {text!r}") from None
    return result


DATASET_CHOSEN = ("augmentation", "view_noise", "sgld_step_size", "sgld_noise")  # None: the dataset's choice


def read_config_file(path: str) -> dict:
    """Settings from a JSON or YAML file: a mapping of TrainConfig settings (fields, flat SGLD names or a
    nested "sgld"), or a run's metrics.json, whose "config" entry reproduces that run."""
    file = pathlib.Path(path)
    try:
        text = file.read_text()
    except OSError as err:
        raise ValueError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    if file.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"--config {path}: YAML needs PyYAML (pip install pyyaml); or write it as JSON") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"--config {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    else:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--config {path} is not valid JSON ({err})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("config"), dict):
        loaded = loaded["config"]
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {path} must hold a mapping of settings, got {type(loaded).__name__}")
    unknown = sorted(set(loaded) - {*SETTINGS, "sgld"})
    if unknown:
        raise ValueError(f"--config {path}: unknown settings {', '.join(unknown)} (known: {', '.join(SETTINGS)}, sgld)")
    return loaded


def settings_help() -> str:
    """Every --set key with its default ("dataset" where the dataset chooses, "none" for an unset option)."""
    defaults = TrainConfig()

    def shown(name: str) -> object:
        value = defaults.setting(name)
        return value if value is not None else "dataset" if name in DATASET_CHOSEN else "none"

    return ", ".join(f"{name}={shown(name)}" for name in SETTINGS)


def _writable_folder(out: pathlib.Path) -> pathlib.Path:
    """--out, created if missing and shown writable now, before any training time is spent."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe, name = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(probe)
        os.unlink(name)
    except OSError as err:
        raise ValueError(f"--out {out} is not a writable folder ({err.strerror or err})") from None
    return out


def _resume_changes(args: argparse.Namespace, config: TrainConfig) -> dict:
    """What --resume may change (--steps to extend a run, --device, --set of RESUME_CHANGEABLE
    fields). A --dataset, --seed or other --set value equal to the run's is fine (so the first
    start's command line can restart the run); a different one is an error, not silently ignored."""
    for flag, given, saved in (("--dataset", args.dataset, config.dataset), ("--seed", args.seed, config.seed)):
        if given is not None and given != saved:
            raise ValueError(f"{flag} {given} differs from the resumed run's {saved}; a resumed run keeps it "
                             f"(start a new run in another --out)")
    changes = {key: value for key, value in parse_settings(args.set).items()
               if key in RESUME_CHANGEABLE or value != config.setting(key)}
    if args.steps is not None:
        changes["steps"] = args.steps
    if args.device is not None:
        changes["device"] = args.device
    return changes


def _summary(scores: dict) -> str:
    return "  ".join(f"{k}={scores[k]:.4g}" if isinstance(scores[k], float) else f"{k}={scores[k]}" for k in SUMMARY_KEYS)


def train(args: argparse.Namespace) -> int:
    """One process, or under torchrun one rank of a DDP run; rank 0 alone evaluates, plots and prints.
    Flags are checked before anything is written; what the run folder holds is checked under its lock."""
    out = pathlib.Path(args.out)
    resume = args.resume == "yes" or (args.resume == "auto" and GEDITrainer.has_checkpoint(out))
    changes = None
    if resume and args.config:
        raise ValueError(f"--config starts a new run; with --resume the run in {out} keeps its own settings")
    if resume:
        state, saved = GEDITrainer.saved_state(out)
        if args.steps is not None and args.steps < state["step"]:
            raise ValueError(f"--steps {args.steps} is below the step the run in {out} reached ({state['step']}); "
                             f"a resumed run can only be extended (--steps N with N > {state['step']})")
        changes = _resume_changes(args, saved)
        config = saved.with_settings(**changes)
    else:
        options = read_config_file(args.config) if args.config else {}
        given = dict(dataset=args.dataset, seed=args.seed, device=args.device, data_root=args.data_root)
        options |= {key: value for key, value in given.items() if value is not None}
        options = dict(dataset="moons", seed=0, device="cpu") | options
        preset = preset_settings(args.preset, DATASET_KINDS[options["dataset"]], options["device"])
        if "sgld" in options:  # a whole chain from the file: the preset's flat chain settings must not undo it
            preset = {key: value for key, value in preset.items() if key not in SGLD_SETTINGS}
        options = preset | options | parse_settings(args.set)
        if args.steps is not None:
            options["steps"] = args.steps
        config = TrainConfig.from_settings(**options)
    _writable_folder(out)
    with run_folder.exclusive(out, take=launch.torchrun_rank() == 0):
        if not resume:
            run_folder.refuse_to_replace(out, args.overwrite)
        return _train_in(out, config, changes)


def _train_in(out: pathlib.Path, config: TrainConfig, changes: dict | None) -> int:
    """Train `config` into `out`: a new run, or with `changes` (what --resume may change) the saved one."""
    resume = changes is not None
    with launch.torchrun_process_group(config.device, config.collective_timeout):
        trainer = GEDITrainer.resume(out, **changes) if resume else GEDITrainer(config, out)
        if resume and trainer.rank == 0:
            print(f"gedi-fast: resuming {out} from step {trainer.step}", file=sys.stderr, flush=True)
        if trainer.step >= trainer.config.steps and trainer.rank == 0:
            print(f"gedi-fast: {out} is already at step {trainer.step} (steps={trainer.config.steps}); "
                  f"pass --steps N with N > {trainer.step} to train on", file=sys.stderr)
        started = time.perf_counter()
        terminal = sys.stderr.isatty()
        with stopping.stop_on_signals() as request:
            trainer.train(progress=terminal, log_lines=not terminal, stop=request.requested)
        wall_s = time.perf_counter() - started
        trainer.leave_process_group()
        if trainer.stopped_at is not None:
            if trainer.rank == 0:
                print(f"gedi-fast: interrupted at step {trainer.stopped_at} of {trainer.config.steps}, checkpoint "
                      f"written; resume with: gedi-fast train --out {out} --resume", file=sys.stderr, flush=True)
            return request.exit_status
        if trainer.rank != 0:
            return 0
    scores = trainer.evaluate()
    path = trainer.write_metrics(scores, wall_s)
    pictures = plot_run(trainer)
    print(f"{trainer.config.dataset}: {_summary(scores)}")
    print(f"metrics: {path}; checkpoint: {out / CHECKPOINT_NAME}; plots: {', '.join(p.name for p in pictures)} in {out}")
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """Score the saved run's held-out split; with --ood, also tell another dataset's from it: the AUROCs
    go into metrics.json (under "ood", one entry per dataset) and the histograms into ood_DATASET.png;
    with --fid, the sample-quality report goes into metrics.json under "fid"."""
    out = pathlib.Path(args.out)
    if not GEDITrainer.has_checkpoint(out):
        raise ValueError(f"--out {out}: {CHECKPOINT_NAME} not found; train a run there first")
    trainer = GEDITrainer.resume(out)
    if args.fid and trainer.dataset.kind != "image":
        raise ValueError(f"--fid scores image samples; the run's dataset {trainer.dataset.name!r} holds vectors")
    outside = None
    if args.ood is not None:
        outside = load_dataset(args.ood, args.data_root or trainer.config.data_root, trainer.config.seed)
        require_same_shape(trainer.dataset, outside)
    scores = trainer.evaluate()
    print(f"{trainer.config.dataset}: {_summary(scores)}")
    path = out / "metrics.json"
    if args.fid:
        fid = fid_report(trainer)
        merge_into_metrics_json(path, "fid", fid)
        print(f"fid ({fid['rows']} images against the test split; evaluation classifier accuracy "
              f"{fid['accuracy']:.4f}): " + "  ".join(
                  f"{key}={fid[key]:.2f}" if fid[key] is not None else f"{key}=none (no SGLD sampler)"
                  for key in ("floor", "samples", "buffer", "noise")))
    if outside is None:
        if args.fid:
            print(f"metrics: {path}")
        return 0
    report, per_row = record_ood(trainer.model, trainer.config.temperature, trainer.dataset, outside, trainer.device,
                                 path)
    picture = plot_ood(report, per_row, out / f"ood_{outside.name}.png")
    print(f"ood {trainer.dataset.name} (in) vs {outside.name} (out): energy_auroc={report['energy_auroc']:.4f}  "
          f"max_softmax_auroc={report['max_softmax_auroc']:.4f}")
    print(f"metrics: {path}; plot: {picture}")
    return 0


def assign_command(args: argparse.Namespace) -> int:
    """Cluster ids, probabilities and energies of the rows in --input under the run in --out, into --output."""
    output = pathlib.Path(args.output)
    if output.suffix not in ASSIGN_OUTPUTS:
        raise ValueError(f"--output {output}: the suffix says the format, one of {', '.join(ASSIGN_OUTPUTS)}")
    run = load_run(args.out)
    result = run.clusterer.assign(_read_rows(pathlib.Path(args.input)), args.batch_size, name=f"--input {args.input}")
    columns = {"cluster": result.clusters, "probabilities": result.probabilities, "energy": result.energies}
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix == ".pt":
        torch.save(columns, output)
    elif output.suffix == ".npz":
        np.savez(output, **{name: column.numpy() for name, column in columns.items()})
    else:
        header = ["cluster", "energy", *(f"p{k}" for k in range(result.probabilities.shape[1]))]
        rows = torch.cat([result.clusters[:, None].double(), result.energies[:, None].double(),
                          result.probabilities.double()], 1).tolist()
        output.write_text(",".join(header) + "\n" + "".join(
            f"{int(row[0])}," + ",".join(f"{value:.9g}" for value in row[1:]) + "\n" for row in rows))
    sizes = torch.bincount(result.clusters, minlength=result.probabilities.shape[1]).tolist()
    print(f"assigned {len(result.clusters)} rows to {len(sizes)} clusters (rows per cluster: {sizes}) with the run "
          f"in {args.out} (step {run.step}): {output}")
    return 0


def _read_rows(path: pathlib.Path) -> object:
    """The array in a .npy file or the tensor in a .pt file (loaded without running any pickled code)."""
    if not path.is_file():
        raise FileNotFoundError(f"--input {path}: no such file")
    if path.suffix == ".npy":
        try:
            return np.load(path, allow_pickle=False)
        except ValueError as err:
            raise ValueError(f"--input {path} is not a numeric .npy array ({err})") from None
    if path.suffix == ".pt":
        try:
            rows = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"--input {path} is not a torch.save file of a tensor ({str(err).splitlines()[0]})") from None
        if not isinstance(rows, torch.Tensor):
            raise ValueError(f"--input {path} must hold one tensor, got a {type(rows).__name__}")
        return rows
    raise ValueError(f"--input {path}: expected a .npy or .pt file")


def export_command(args: argparse.Namespace) -> int:
    """The run's clusterer as a torch.export program or TorchScript, usable without gedi_fast."""
    run = load_run(args.out)
    path = export(run.clusterer, args.output, args.format)
    loader = "torch.export.load(PATH).module()" if args.format == "torch.export" else "torch.jit.load(PATH)"
    print(f"exported the clusterer of {args.out} (step {run.step}) as {args.format}: {path}\n"
          f"use: {loader}(raw float32 rows of shape (N, {', '.join(map(str, run.clusterer.input_shape))})) -> "
          f"(clusters, probabilities, energies)")
    return 0


def _write_report(args: argparse.Namespace, path: str, title: str, minutes: float, body: str,
                  question: str = "") -> pathlib.Path:
    """A Markdown report: the title, the question asked, the command as typed, where and how long it ran."""
    command = " ".join(["gedi-fast", *map(_portable, sys.argv[1:] if args.argv is None else args.argv)])
    lead = f"{question}\n\n" if question else ""
    report = pathlib.Path(path)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(f"# {title}\n\n{lead}Command: `{command}`\n\nRun: {_machine()}; {minutes:.0f} min wall.\n\n"
                      f"{body}\n")
    return report


def _portable(argument: str) -> str:
    """A command-line word as a report records it: a path under the working folder relative to it, one
    under the home folder as ~/..., so that a report names no user's or machine's folders."""
    key, sep, value = argument.partition("=")
    if not (sep and os.path.isabs(value)):  # not KEY=PATH (--out=PATH, --set data_root=PATH): the word itself
        key, sep, value = "", "", argument
    if os.path.isabs(value):
        path, here, home = pathlib.Path(value), pathlib.Path.cwd(), pathlib.Path.home()
        if path.is_relative_to(here):
            value = str(path.relative_to(here)) or "."
        elif path.is_relative_to(home):
            value = str(pathlib.Path("~") / path.relative_to(home))
    return f"{key}{sep}{value}"


def triad_command(args: argparse.Namespace) -> int:
    from gedi_fast.experiments import triad

    base = TrainConfig.from_settings(**parse_settings(args.set))
    started = time.perf_counter()
    results = triad.run(args.datasets, range(args.seeds), args.steps, args.out, base, jobs=args.jobs)
    minutes = (time.perf_counter() - started) / 60
    table = triad.markdown_table(results, args.datasets)
    report = _write_report(args, args.report or f"{args.out}/RESULTS.md", "The failure-mode triad on our data",
                           minutes, table)
    print(table)
    print(f"table: {report}")
    return 0


def study_command(args: argparse.Namespace) -> int:
    from gedi_fast.experiments import studies, triad

    study = STUDIES[args.name]
    seeds = study.seeds if args.seeds is None else args.seeds
    base = TrainConfig.from_settings(**parse_settings(args.set))
    runs = pathlib.Path(args.out or f"runs/study_{args.name}")
    started = time.perf_counter()
    results = triad.run_cases(list(study.cases), range(seeds), args.steps, runs, base, jobs=args.jobs,
                              train=study.train)
    minutes = (time.perf_counter() - started) / 60
    studies.save_results(results, runs / "results.json")
    report_path = pathlib.Path(args.report or runs / f"{args.name}.md")
    body = studies.markdown_table(study, results)
    if study.summary is not None:
        body += "\n\n" + study.summary(study, results)
    report = _write_report(args, str(report_path), f"Study: {args.name}", minutes, body, study.question)
    if study.figures is not None:  # the table is written first: a failing plot loses no run
        pictures = study.figures(study, results, runs, report_path.parent / args.name)
        body += "\n\n" + "\n\n".join(f"![{p.stem}]({p.name})" for p in pictures)
        report = _write_report(args, str(report_path), f"Study: {args.name}", minutes, body, study.question)
    print(body)
    print(f"table: {report}; runs and results.json under {runs}")
    return 0


def images_command(args: argparse.Namespace) -> int:
    from gedi_fast.experiments import images

    settings = preset_settings(args.preset, "image", args.device) | parse_settings(args.set)
    base = TrainConfig.from_settings(**settings | {"device": args.device, "data_root": args.data_root})
    started = time.perf_counter()
    results, ood = images.run(range(args.seeds), args.out, base, args.jobs, args.datasets)
    minutes = (time.perf_counter() - started) / 60
    tables = f"{images.clustering_table(results, args.datasets)}\n\n{images.ood_table(ood, args.datasets)}"
    report = _write_report(args, args.report or f"{args.out}/RESULTS.md", "GEDI on images", minutes, tables)
    print(tables)
    print(f"tables: {report}; runs (metrics.json, PNGs) under {args.out}")
    return 0


def _machine() -> str:
    return (f"{datetime.date.today()}, {platform.processor() or platform.machine()} with {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


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
    run.set_defaults(handler=train)
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
    check.set_defaults(handler=evaluate)
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
    assign.set_defaults(handler=assign_command)
    exporting = commands.add_parser("export", help="write a trained run's clusterer for use without gedi_fast")
    exporting.add_argument("--out", required=True, help="the run folder")
    exporting.add_argument("--output", required=True, metavar="FILE", help="where the exported program goes")
    exporting.add_argument("--format", choices=EXPORT_FORMATS, default="torch.export",
                           help="torch.export (default; load with torch.export.load) or torchscript (torch.jit.load)")
    exporting.set_defaults(handler=export_command)
    triad = commands.add_parser("triad", help="full GEDI, its ablations and k-means over seeds; a Markdown table")
    triad.add_argument("--datasets", nargs="+", default=["moons", "circles", "digits"], choices=sorted(LOADERS))
    triad.add_argument("--seeds", type=positive_int, default=5)
    triad.add_argument("--steps", type=int, help="training steps per run (default: TrainConfig.steps)")
    triad.add_argument("--out", default="runs/triad", help="folder for the runs")
    triad.add_argument("--report", help="where the Markdown table goes (default: OUT/RESULTS.md; the curated "
                       "docs/RESULTS.md changes only by hand)")
    triad.add_argument("--jobs", type=positive_int, default=1, help="runs trained at once, one CPU thread each")
    triad.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help=f"a TrainConfig setting for every run (default), one of: {settings_help()}")
    triad.set_defaults(handler=triad_command)
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
    study.set_defaults(handler=study_command)
    images = commands.add_parser("images", help="GEDI with and without gen on MNIST-5k and Fashion-MNIST, k-means, "
                                 "OOD of each against the other, over seeds; Markdown tables")
    images.add_argument("--datasets", nargs="+", default=["mnist5k", "fashion-mnist"],
                        choices=["mnist5k", "fashion-mnist"])
    images.add_argument("--seeds", type=positive_int, default=3)
    images.add_argument("--out", default="runs/images", help="folder for the runs")
    images.add_argument("--report", help="where the Markdown tables go (default: OUT/RESULTS.md)")
    images.add_argument("--jobs", type=positive_int, default=1, help="runs trained at once, one CPU thread each")
    images.add_argument("--device", default="cpu")
    images.add_argument("--data-root", help="folder holding Fashion-MNIST's IDX files when not Debian's")
    images.add_argument("--preset", choices=PRESET_CHOICES, default="auto", help="as for train")
    images.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a TrainConfig setting for every run, over the preset")
    images.set_defaults(handler=images_command)
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
    except (FloatingPointError, TrainingStopped) as err:
        print(f"gedi-fast: training failed: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # outside the training loop (loading data, evaluating): nothing to save
        print("\ngedi-fast: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
