"""Running an experiment's cases: each case (a group of table rows, a method, its TrainConfig settings)
trained for every seed, in worker processes when asked, k-means beside each group, every run in a
folder of its own (run_folder); and a finished run scored against an out-of-distribution dataset
(ood_of_run), as the image experiment and the sgld study do."""
from __future__ import annotations

import dataclasses
import math
import multiprocessing
import pathlib
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import torch

from gedi_fast.train import metrics
from gedi_fast.train.data import load_dataset
from gedi_fast.train.ood import score_ood
from gedi_fast.train.trainer import GEDITrainer, TrainConfig
from gedi_fast.validation import require_int

# What run_cases gives: {(method, group): [scores per seed]}.
Results = dict[tuple[str, str], list[dict]]


@dataclasses.dataclass(frozen=True)
class Case:
    """One table group and method: `settings` are TrainConfig settings (fields or flat SGLD names),
    the dataset among them; `group` names the rows (a dataset, or a dataset with its K)."""

    group: str
    method: str
    settings: dict


def cases(datasets, variants: dict[str, dict]) -> list[Case]:
    """Every variant on every dataset, grouped by dataset."""
    return [Case(dataset, variant, {"dataset": dataset, **overrides})
            for dataset in datasets for variant, overrides in variants.items()]


def kmeans_scores(dataset: str, seed: int, root: str | None = None, clusters: int = 0) -> dict[str, float]:
    """k-means with `clusters` centres (0: the number of classes) on the raw inputs (image pixels
    flattened), fitted on the training split, scored on the test split."""
    from sklearn.cluster import KMeans

    ds = load_dataset(dataset, root, seed=seed)
    clusters = clusters or ds.num_classes
    started = time.perf_counter()
    model = KMeans(n_clusters=clusters, n_init=10, random_state=seed).fit(ds.train_x.flatten(1).numpy())
    predicted = model.predict(ds.test_x.flatten(1).numpy())
    wall_s = time.perf_counter() - started
    return {**metrics.clustering_scores(ds.test_y.numpy(), predicted),
            **metrics.cluster_usage(predicted, clusters), "train_wall_s": wall_s}


def train_one(config: TrainConfig, folder: pathlib.Path, threads: int | None = None) -> dict[str, float]:
    """One run's held-out scores and training wall time, its checkpoint and metrics.json left in
    `folder`; `threads` caps torch's intra-op threads (one per worker process)."""
    if threads is not None:
        torch.set_num_threads(threads)
    trainer = GEDITrainer(config, folder)
    started = time.perf_counter()
    trainer.train()
    wall_s = time.perf_counter() - started
    scores = trainer.evaluate()
    trainer.write_metrics(scores, wall_s)
    return {**scores, **start_scores(trainer.history), "train_wall_s": wall_s}


START_STEPS = {"logit_spread": 100, "inv": 300}  # what start_scores reads, and at which step


def start_scores(history: list[dict]) -> dict[str, float]:
    """How a run started, from its log records: the logit spread at step 100 (near 0: flat outputs) and
    inv at step 300 (near log K: still on the uniform plateau), each from the last record at or before
    that step; NaN where the run logged nothing that early."""
    scores = {}
    for name, step in START_STEPS.items():
        records = [r for r in history if "event" not in r and r["step"] <= step and name in r]
        scores[f"{name}_at_{step}"] = records[-1][name] if records else math.nan
    return scores


def ood_of_run(folder: pathlib.Path, outside: str) -> dict:
    """What `gedi-fast eval --out folder --ood outside` records (the OOD report, into metrics.json too,
    and the OOD histograms), plus the run's PNGs."""
    from gedi_fast.train.plots import plot_run

    trainer = GEDITrainer.resume(folder)
    plot_run(trainer)
    report, _ = score_ood(trainer, outside)
    return report


def run_folder(out: str | pathlib.Path, group: str, method: str, seed: int) -> pathlib.Path:
    """Where run_cases() trains `method` of `group` with `seed`."""
    name = lambda text: "_".join(text.replace(",", "").replace("=", "").replace("/", " ").split())  # noqa: E731
    return pathlib.Path(out) / name(group) / name(method) / f"seed{seed}"


def run_cases(study_cases: list[Case], seeds=range(5), steps: int | None = None,
              out: str | pathlib.Path = "runs/triad", base: TrainConfig | None = None, log=print, jobs: int = 1,
              train: Callable[[TrainConfig, pathlib.Path, int | None], dict] = train_one,
              ) -> Results:
    """{(method, group): [scores per seed]} for every case, and ("k-means", group) with the K of the
    group's first case.

    `train(config, folder, threads)` trains one run (default train_one; a module-level function, so
    worker processes can take it). jobs > 1 trains that many runs at once in worker processes of one
    thread each; every run is seeded on its own, so jobs changes the scores only by the last bits a
    different thread count can move.
    """
    base = base or TrainConfig()
    jobs = require_int(jobs, "jobs", minimum=1)
    runs = []
    for case in study_cases:
        for seed in seeds:
            config = base.with_settings(**case.settings | {"seed": seed} | ({"steps": steps} if steps else {}))
            runs.append((case, config, run_folder(out, case.group, case.method, seed)))
    results: Results = {}

    def record(case: Case, config: TrainConfig, scores: dict) -> None:
        results.setdefault((case.method, case.group), []).append(scores)
        log(f"{case.group} | {case.method} | seed {config.seed}: nmi={scores['nmi']:.3f} acc={scores['acc']:.3f} "
            f"largest cluster={scores['largest_cluster_share']:.2f}")

    if jobs == 1:
        for case, config, folder in runs:
            record(case, config, train(config, folder))
    else:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(train, config, folder, 1) for _, config, folder in runs]
            for (case, config, _), future in zip(runs, futures):
                record(case, config, future.result())
    groups: dict[str, Case] = {}
    for case in study_cases:
        groups.setdefault(case.group, case)
    for group, case in groups.items():
        config = base.with_settings(**case.settings)
        for seed in seeds:
            results.setdefault(("k-means", group), []).append(
                kmeans_scores(config.dataset, seed, config.data_root, config.clusters))
    return results
