"""Study `clusters`: how GEDI scales with the number of clusters K, true clusters on the many-blob sets
and over-clustering on digits."""
from __future__ import annotations

import math
import pathlib

import numpy as np

from gedi_fast.experiments.runner import Case, Results, cases
from gedi_fast.experiments.studies.study import Column, Study
from gedi_fast.train.data import MANY_BLOBS

METHODS = {"GEDI (full)": {}, "GEDI, Sinkhorn targets": {"assignment": "sinkhorn"}}


def _cases() -> tuple[Case, ...]:
    blobs = cases([f"blobs{k}" for k in MANY_BLOBS], METHODS)
    digits = [Case(f"digits, K = {k}", method, {"dataset": "digits", "clusters": k, **settings})
              for k in (10, 20, 50) for method, settings in METHODS.items()]
    return (*blobs, *digits)


def _clusters(runs: list[dict]) -> int:
    """K of a run, from its scores (usage_entropy_max is log K)."""
    return round(math.exp(runs[0]["usage_entropy_max"]))


def cluster_figures(study: Study, results: Results, runs: pathlib.Path, stem: pathlib.Path) -> list[pathlib.Path]:
    """NMI and the share of clusters used against K: true clusters (blobs), over-clustering (digits)."""
    from gedi_fast.experiments.studies.figures import log_x, plt, save, seed_mean_std

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = {"blobs: K = true clusters": [g for g in study.groups if g.startswith("blobs")],
              "digits: K >= 10 classes": [g for g in study.groups if g.startswith("digits")]}
    for ax, (title, groups) in zip(axes, panels.items()):
        blobs = title.startswith("blobs")
        for index, method in enumerate([*study.methods(groups[0]), "k-means"]):
            scored = [results[(method, g)] for g in groups if results.get((method, g))]
            k = np.array([_clusters(runs) for runs in scored])
            nmi = np.array([seed_mean_std(runs, "nmi") for runs in scored])
            ax.errorbar(k, nmi[:, 0], nmi[:, 1], marker="o", capsize=3, color=f"C{index}", label=method)
            used = np.array([seed_mean_std(runs, "clusters_used")[0] for runs in scored])
            axes[2].plot(k, used / k, marker="o" if blobs else "s", linestyle="-" if blobs else "--", color=f"C{index}",
                         label=f"{title.split(':')[0]}, {method}")
        ax.set(title=title, ylabel="test NMI")
        ax.legend(fontsize=8)
    for ax, groups in zip(axes, [*panels.values(), study.groups]):
        log_x(ax, sorted({_clusters(results[(m, g)]) for (m, g) in results if g in groups}), "K")
    axes[2].set(title="cluster usage", ylabel="clusters holding a test point / K")
    axes[2].legend(fontsize=7)
    return [save(fig, stem, "k")]


STUDY = Study(
    "How does GEDI scale with the number of clusters K (true clusters on blobs, over-clustering on digits)?",
    _cases(),
    columns=(Column("clusters used", "clusters_used", 1),),
    figures=cluster_figures,
)
