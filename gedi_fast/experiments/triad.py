"""The paper's experiment on our data: full GEDI, its ablations and k-means, over seeds, as a Markdown table."""
from __future__ import annotations

import dataclasses
import multiprocessing
import pathlib
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import numpy as np
import torch
from sklearn.cluster import KMeans

from gedi_fast.train import metrics
from gedi_fast.train.data import load_dataset
from gedi_fast.train.trainer import GEDITrainer, TrainConfig
from gedi_fast.validation import require_int

# Each variant: its TrainConfig settings (fields or flat SGLD names) on top of the base config.
VARIANTS: dict[str, dict] = {
    "GEDI (full)": {},
    "without gen": {"gen_weight": 0.0, "energy_reg": 0.0},
    "without inv": {"inv_weight": 0.0},
    "without prior": {"prior_weight": 0.0},
    "GEDI, Sinkhorn targets": {"assignment": "sinkhorn"},
}
DATASETS = ("moons", "circles", "digits")


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
    return {**scores, "train_wall_s": wall_s}


def run_folder(out: str | pathlib.Path, group: str, method: str, seed: int) -> pathlib.Path:
    """Where run_cases() trains `method` of `group` with `seed`."""
    name = lambda text: "_".join(text.replace(",", "").replace("=", "").replace("/", " ").split())  # noqa: E731
    return pathlib.Path(out) / name(group) / name(method) / f"seed{seed}"


def run(datasets=DATASETS, seeds=range(5), steps: int | None = None, out: str | pathlib.Path = "runs/triad",
        base: TrainConfig | None = None, log=print, jobs: int = 1,
        variants: dict[str, dict] | None = None) -> dict[tuple[str, str], list[dict]]:
    """{(variant, dataset): [scores per seed]} for every GEDI variant (default: VARIANTS) on every
    dataset, and k-means (run_cases)."""
    return run_cases(cases(datasets, VARIANTS if variants is None else variants), seeds, steps, out, base, log, jobs)


def run_cases(study_cases: list[Case], seeds=range(5), steps: int | None = None,
              out: str | pathlib.Path = "runs/triad", base: TrainConfig | None = None, log=print, jobs: int = 1,
              train: Callable[[TrainConfig, pathlib.Path, int | None], dict] = train_one,
              ) -> dict[tuple[str, str], list[dict]]:
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
    results: dict[tuple[str, str], list[dict]] = {}

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


def markdown_table(results: dict[tuple[str, str], list[dict]], datasets=DATASETS,
                   variants: dict[str, dict] | None = None) -> str:
    """NMI and ACC as mean +- std (and median NMI, largest cluster share) per variant and dataset."""
    header = "| method | " + " | ".join(f"{d} NMI | {d} ACC" for d in datasets) + " |"
    lines = [header, "|---|" + "---|---|" * len(datasets)]
    for variant in [*(VARIANTS if variants is None else variants), "k-means"]:
        cells = []
        for dataset in datasets:
            runs = results.get((variant, dataset), [])
            if not runs:
                cells += ["not run", "not run"]
                continue
            nmi = [r["nmi"] for r in runs]
            acc = [r["acc"] for r in runs]
            largest = max(r["largest_cluster_share"] for r in runs)
            cells.append(f"{mean_std(nmi)} (median {statistics.median(nmi):.3f}, largest cluster <= {largest:.2f})")
            cells.append(mean_std(acc))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_std(values: list[float], digits: int = 3) -> str:
    """A table cell: mean +- standard deviation over seeds."""
    return f"{np.mean(values):.{digits}f} +- {np.std(values):.{digits}f}"
