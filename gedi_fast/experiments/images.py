"""The image experiment: GEDI with and without its generative term on MNIST-5k and Fashion-MNIST
(the cpu-images preset unless told otherwise), k-means on raw pixels, and out-of-distribution
detection of each dataset's test split against the other's, over seeds; Markdown tables.
"""
from __future__ import annotations

import pathlib
import statistics

import numpy as np

from gedi_fast.experiments import triad
from gedi_fast.experiments.runner import ood_of_run, run_folder
from gedi_fast.train.data import OOD_PARTNERS
from gedi_fast.train.presets import PRESETS
from gedi_fast.train.trainer import TrainConfig

DATASETS = ("mnist5k", "fashion-mnist")  # each the other's OOD partner (gedi_fast.train.data.OOD_PARTNERS)
VARIANTS = {"GEDI (full)": {}, "without gen": dict(triad.VARIANTS["without gen"])}


def run(seeds=range(3), out: str | pathlib.Path = "runs/images", base: TrainConfig | None = None, jobs: int = 1,
        datasets=DATASETS, log=print) -> tuple[dict, dict]:
    """(clustering results as triad.run gives them, {(variant, dataset): [OOD reports per seed]});
    `base` defaults to the cpu-images preset."""
    base = base or TrainConfig.from_settings(**PRESETS["cpu-images"])
    results = triad.run(datasets, seeds, None, out, base, log=log, jobs=jobs, variants=VARIANTS)
    ood: dict[tuple[str, str], list[dict]] = {}
    for dataset in datasets:
        for variant in VARIANTS:
            for seed in seeds:
                report = ood_of_run(run_folder(out, dataset, variant, seed), OOD_PARTNERS[dataset])
                ood.setdefault((variant, dataset), []).append(report)
                log(f"{dataset} vs {OOD_PARTNERS[dataset]} | {variant} | seed {seed}: energy AUROC "
                    f"{report['energy_auroc']:.3f}, max-softmax AUROC {report['max_softmax_auroc']:.3f}")
    return results, ood


def clustering_table(results: dict, datasets=DATASETS) -> str:
    """Per method and dataset: median NMI and ACC over seeds (each seed's value listed), the largest
    cluster's share (worst seed), how each seed started (runner.start_scores: the uniform plateau shows
    as a spread near 0 and inv near log K) and the median wall time of one run."""
    lines = ["| method | dataset | NMI median (seeds) | ACC median (seeds) | largest cluster (worst) | logit spread at "
             "step 100 (seeds) | inv at step 300 (seeds) | wall per run |", "|---|---|---|---|---|---|---|---|"]
    for variant in [*VARIANTS, "k-means"]:
        for dataset in datasets:
            runs = results.get((variant, dataset), [])
            if not runs:
                continue
            cells = [_median_of(runs, "nmi"), _median_of(runs, "acc"),
                     f"{max(r['largest_cluster_share'] for r in runs):.2f}",
                     *(_seeds_of(runs, key) for key in ("logit_spread_at_100", "inv_at_300")),
                     f"{statistics.median(r['train_wall_s'] for r in runs) / 60:.1f} min"]
            lines.append(f"| {variant} | {dataset} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ood_table(ood: dict, datasets=DATASETS) -> str:
    """Per method and direction: median AUROC of the energy score and of max-softmax (each seed's listed)."""
    lines = ["| method | in (held-out) | out | energy AUROC median (seeds) | max-softmax AUROC median (seeds) |",
             "|---|---|---|---|---|"]
    for variant in VARIANTS:
        for dataset in datasets:
            reports = ood.get((variant, dataset), [])
            if reports:
                lines.append(f"| {variant} | {dataset} | {reports[0]['out']} | {_median_of(reports, 'energy_auroc')} "
                             f"| {_median_of(reports, 'max_softmax_auroc')} |")
    return "\n".join(lines)


def _seeds_of(rows: list[dict], key: str) -> str:
    """Each seed's value, or "-" for rows without it (k-means)."""
    return ", ".join(f"{r[key]:.2f}" for r in rows) if all(key in r for r in rows) else "-"


def _median_of(rows: list[dict], key: str) -> str:
    values = [r[key] for r in rows]
    return f"{np.median(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})"
