"""The training application's commands (`gedi-fast train | eval | assign | export`): what each does once
gedi_fast.cli has parsed its flags."""
from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
import time

import numpy as np
import torch

from gedi_fast.train import launch, run_folder, stopping
from gedi_fast.train.clusterer import export, load_run
from gedi_fast.train.config import RESUME_CHANGEABLE, SGLD_SETTINGS, TrainConfig, parse_settings, read_config_file
from gedi_fast.train.data import DATASET_KINDS
from gedi_fast.train.metrics import merge_into_metrics_json
from gedi_fast.train.ood import ood_dataset, score_ood
from gedi_fast.train.plots import plot_run
from gedi_fast.train.presets import preset_settings
from gedi_fast.train.sample_quality import fid_report
from gedi_fast.train.trainer import CHECKPOINT_NAME, GEDITrainer

ASSIGN_OUTPUTS = (".npz", ".pt", ".csv")


SUMMARY_KEYS = ("nmi", "ari", "acc", "largest_cluster_share", "usage_entropy", "view_agreement", "steps")


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
    changes = saved = None
    if resume and args.config:
        raise ValueError(f"--config starts a new run; with --resume the run in {out} keeps its own settings")
    if resume:
        saved = GEDITrainer.saved_state(out)
        state, saved_config = saved
        if args.steps is not None and args.steps < state["step"]:
            raise ValueError(f"--steps {args.steps} is below the step the run in {out} reached ({state['step']}); "
                             f"a resumed run can only be extended (--steps N with N > {state['step']})")
        changes = _resume_changes(args, saved_config)
        config = saved_config.with_settings(**changes)
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
        return _train_in(out, config, changes, saved)


def _train_in(out: pathlib.Path, config: TrainConfig, changes: dict | None,
              saved: tuple[dict, TrainConfig] | None) -> int:
    """Train `config` into `out`: a new run, or with `changes` (what --resume may change) the `saved` one."""
    resume = changes is not None
    with launch.torchrun_process_group(config.device, config.collective_timeout):
        trainer = GEDITrainer.resume(out, saved=saved, **changes) if resume else GEDITrainer(config, out)
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
        outside = ood_dataset(trainer, args.ood, args.data_root)  # loaded and checked before any scoring
    scores = trainer.evaluate()
    print(f"{trainer.config.dataset}: {_summary(scores)}")
    path = out / "metrics.json"
    if args.fid:
        fid = fid_report(trainer)
        merge_into_metrics_json(path, "fid", fid)
        print(f"fid ({fid['rows']} images against the test split; evaluation classifier accuracy "
              f"{fid['accuracy']:.4f}): " + "  ".join(
                  f"{key}={fid[key]:.2f}" if fid[key] is not None else f"{key}=none (no SGLD sampler)"
                  for key in ("floor", "samples", "buffer", "noise", "samples_mix_floor")))
    if outside is None:
        if args.fid:
            print(f"metrics: {path}")
        return 0
    report, picture = score_ood(trainer, outside)
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
