"""The paper's experiment on our data: full GEDI, its ablations and k-means, over seeds, as a Markdown table."""
from __future__ import annotations

import multiprocessing
import pathlib
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from sklearn.cluster import KMeans

from gedi_fast import metrics
from gedi_fast.data import load_dataset
from gedi_fast.trainer import GEDITrainer, TrainConfig
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


def kmeans_scores(dataset: str, seed: int, root: str | None = None) -> dict[str, float]:
    """k-means on the raw inputs (image pixels flattened), fitted on the training split, scored on the test split."""
    ds = load_dataset(dataset, root, seed=seed)
    started = time.perf_counter()
    model = KMeans(n_clusters=ds.num_classes, n_init=10, random_state=seed).fit(ds.train_x.flatten(1).numpy())
    predicted = model.predict(ds.test_x.flatten(1).numpy())
    wall_s = time.perf_counter() - started
    return {**metrics.clustering_scores(ds.test_y.numpy(), predicted),
            **metrics.cluster_usage(predicted, ds.num_classes), "train_wall_s": wall_s}


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


def run_folder(out: str | pathlib.Path, dataset: str, variant: str, seed: int) -> pathlib.Path:
    """Where run() trains `variant` of GEDI on `dataset` with `seed`."""
    return pathlib.Path(out) / dataset / variant.replace(" ", "_").replace(",", "") / f"seed{seed}"


def run(datasets=DATASETS, seeds=range(5), steps: int | None = None, out: str | pathlib.Path = "runs/triad",
        base: TrainConfig | None = None, log=print, jobs: int = 1,
        variants: dict[str, dict] | None = None) -> dict[tuple[str, str], list[dict]]:
    """{(variant, dataset): [scores per seed]} for every GEDI variant (default: VARIANTS) and k-means.

    jobs > 1 trains that many runs at once in worker processes of one thread each; every run is
    seeded on its own, so jobs changes the scores only by the last bits a different thread count
    can move.
    """
    base = base or TrainConfig()
    jobs = require_int(jobs, "jobs", minimum=1)
    runs = []
    for dataset in datasets:
        for variant, overrides in (VARIANTS if variants is None else variants).items():
            for seed in seeds:
                config = base.with_settings(dataset=dataset, seed=seed, **overrides,
                                            **({"steps": steps} if steps else {}))
                runs.append((variant, config, run_folder(out, dataset, variant, seed)))
    results: dict[tuple[str, str], list[dict]] = {}

    def record(variant: str, config: TrainConfig, scores: dict) -> None:
        results.setdefault((variant, config.dataset), []).append(scores)
        log(f"{config.dataset} | {variant} | seed {config.seed}: nmi={scores['nmi']:.3f} acc={scores['acc']:.3f} "
            f"largest cluster={scores['largest_cluster_share']:.2f}")

    if jobs == 1:
        for variant, config, folder in runs:
            record(variant, config, train_one(config, folder))
    else:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(train_one, config, folder, 1) for _, config, folder in runs]
            for (variant, config, _), future in zip(runs, futures):
                record(variant, config, future.result())
    for dataset in datasets:
        for seed in seeds:
            results.setdefault(("k-means", dataset), []).append(kmeans_scores(dataset, seed, base.data_root))
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


def mean_std(values: list[float]) -> str:
    """A table cell: mean +- standard deviation over seeds."""
    return f"{np.mean(values):.3f} +- {np.std(values):.3f}"
