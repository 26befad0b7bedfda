"""The studies' figures (matplotlib, Agg): each takes (study, results, runs folder, path stem) and
returns the PNGs it wrote, named STEM_WHAT.png; points are means over seeds, bars one std."""
from __future__ import annotations

import math
import pathlib
from typing import TYPE_CHECKING

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from gedi_fast.experiments import probes, triad  # noqa: E402
from gedi_fast.train.config import TrainConfig  # noqa: E402
from gedi_fast.train.plots import save_figure  # noqa: E402

if TYPE_CHECKING:
    from gedi_fast.experiments.studies import Results, Study


def _clusters(runs: list[dict]) -> int:
    """K of a run, from its scores (usage_entropy_max is log K)."""
    return round(math.exp(runs[0]["usage_entropy_max"]))


def _mean_std(runs: list[dict], key: str) -> tuple[float, float]:
    values = [r[key] for r in runs if key in r]
    return (float(np.mean(values)), float(np.std(values))) if values else (math.nan, math.nan)


def cluster_figures(study: Study, results: Results, runs: pathlib.Path, stem: pathlib.Path) -> list[pathlib.Path]:
    """NMI and the share of clusters used against K: true clusters (blobs), over-clustering (digits)."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    panels = {"blobs: K = true clusters": [g for g in study.groups if g.startswith("blobs")],
              "digits: K >= 10 classes": [g for g in study.groups if g.startswith("digits")]}
    for ax, (title, groups) in zip(axes, panels.items()):
        blobs = title.startswith("blobs")
        for index, method in enumerate([*study.methods(groups[0]), "k-means"]):
            scored = [results[(method, g)] for g in groups if results.get((method, g))]
            k = np.array([_clusters(runs) for runs in scored])
            nmi = np.array([_mean_std(runs, "nmi") for runs in scored])
            ax.errorbar(k, nmi[:, 0], nmi[:, 1], marker="o", capsize=3, color=f"C{index}", label=method)
            used = np.array([_mean_std(runs, "clusters_used")[0] for runs in scored])
            axes[2].plot(k, used / k, marker="o" if blobs else "s", linestyle="-" if blobs else "--", color=f"C{index}",
                         label=f"{title.split(':')[0]}, {method}")
        ax.set_title(title)
        ax.set_ylabel("test NMI")
        ax.legend(fontsize=8)
    for ax, groups in zip(axes, [*panels.values(), study.groups]):
        ax.set_xscale("log")
        ticks = sorted({_clusters(results[(m, g)]) for (m, g) in results if g in groups})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("K")
    axes[2].set_ylabel("clusters holding a test point / K")
    axes[2].set_title("cluster usage")
    axes[2].legend(fontsize=7)
    return [save_figure(fig, stem.with_name(f"{stem.name}_k.png"))]


def sgld_figures(study: Study, results: Results, runs: pathlib.Path, stem: pathlib.Path) -> list[pathlib.Path]:
    """NMI, step time and OOD AUROC against the SGLD chain length (64 samples), NMI against samples
    per step (20 steps); chains restarted from noise and the run without gen as markers and lines."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    settings = {case.method: case.settings for case in study.cases if case.group == study.groups[0]}
    length = {m: s["sgld_steps"] for m, s in settings.items() if "sgld_steps" in s and "reinit_prob" not in s}
    from_noise = {m: s["sgld_steps"] for m, s in settings.items() if "reinit_prob" in s}
    samples = {m: s["sgld_samples"] for m, s in settings.items() if "sgld_samples" in s}
    samples |= {m: TrainConfig().sgld_samples for m, steps in length.items() if steps == 20}
    for index, group in enumerate(study.groups):
        color = f"C{index}"

        def curve(methods: dict[str, int], key: str) -> tuple[np.ndarray, ...]:
            points = sorted((x, *_mean_std(results[(m, group)], key)) for m, x in methods.items()
                            if results.get((m, group)))
            return tuple(map(np.array, zip(*points)))

        # log-ish x axis that keeps 0 steps: plot at steps + 1
        x, mean, std = curve(length, "nmi")
        axes[0].errorbar(x + 1, mean, std, marker="o", capsize=3, color=color, label=f"{group}, buffer")
        x, mean, std = curve(from_noise, "nmi")
        axes[0].errorbar(x + 1, mean, std, marker="x", capsize=3, color=color, linestyle=":",
                         label=f"{group}, from noise")
        if results.get(("without gen", group)):
            axes[0].axhline(_mean_std(results[("without gen", group)], "nmi")[0], color=color, linestyle="--",
                            label=f"{group}, without gen")
        x, mean, std = curve(length, "ms_per_step")
        axes[1].errorbar(x + 1, mean, std, marker="o", capsize=3, color=color, label=group)
        x, mean, std = curve(samples, "nmi")
        axes[3].errorbar(x, mean, std, marker="o", capsize=3, color=color, label=group)
        x, mean, std = curve(length, "ood_energy_auroc")
        if len(x) and not np.isnan(mean).all():
            axes[2].errorbar(x + 1, mean, std, marker="o", capsize=3, color=color, label=f"{group}: energy")
            x, mean, std = curve(length, "ood_max_softmax_auroc")
            axes[2].errorbar(x + 1, mean, std, marker="s", capsize=3, color=color, linestyle="--",
                             label=f"{group}: max-softmax")
    ticks = sorted(set(length.values()))
    for ax, ylabel, title in ((axes[0], "test NMI", "NMI"), (axes[1], "ms per training step (2 jobs, 1 thread each)",
                                                              "cost"), (axes[2], "AUROC", "OOD (circles as outliers)")):
        ax.set_xscale("log")
        ax.set_xticks([t + 1 for t in ticks], [str(t) for t in ticks])
        ax.set_xlabel("SGLD steps per training step (64 samples)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7)
    axes[3].set_xscale("log", base=2)
    axes[3].set_xticks(sorted(set(samples.values())), [str(s) for s in sorted(set(samples.values()))])
    axes[3].set_xlabel("SGLD samples per training step (20 steps)")
    axes[3].set_ylabel("test NMI")
    axes[3].set_title("NMI against samples")
    axes[3].legend(fontsize=7)
    return [save_figure(fig, stem.with_name(f"{stem.name}_steps.png"))]


SHOWN_LAYERS = 4  # layers drawn in the per-layer gradient panel
TRACED = ("feature_effective_rank", "feature_variance", "logit_spread", "largest_cluster_share", "cos/inv-prior")
TRACE_TITLES = {"feature_effective_rank": "feature effective rank (test)",
                "feature_variance": "feature variance (test, mean per dimension)",
                "logit_spread": "logit spread, std of z/T over test rows", "largest_cluster_share": "largest cluster share (test)",
                "cos/inv-prior": "cos(inv, prior) gradients"}
LOG_SCALED = ("feature_variance", "logit_spread")


def _traces(study: Study, runs: pathlib.Path, group: str, method: str, seeds: int) -> list[list[dict]]:
    folders = [triad.run_folder(runs, group, method, seed) for seed in range(seeds)]
    return [probes.read_trace(f) for f in folders if (f / probes.TRACE_NAME).exists()]


def _trace_mean(traces: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array([p["step"] for p in traces[0]])
    values = np.array([[p.get(key, math.nan) for p in trace] for trace in traces])
    return steps, values.mean(0)


def collapse_figures(study: Study, results: Results, runs: pathlib.Path, stem: pathlib.Path) -> list[pathlib.Path]:
    """Per group: the probes' traces (mean over seeds) for every method, and for full GEDI and the
    run without gen each weighted term's gradient norm, in all and per layer."""
    written = []
    seeds = max(len(r) for r in results.values())
    for group in study.groups:
        fig, axes = plt.subplots(2, 4, figsize=(20, 8))
        traced = [*axes[0], axes[1][2]]
        for index, method in enumerate(study.methods(group)):
            traces = _traces(study, runs, group, method, seeds)
            for ax, key in zip(traced, TRACED):
                if traces:
                    ax.plot(*_trace_mean(traces, key), color=f"C{index}", label=method)
        for ax, key in zip(traced, TRACED):
            ax.set_title(TRACE_TITLES[key])
            if key in LOG_SCALED:
                ax.set_yscale("log")
        axes[0][0].legend(fontsize=7)
        axes[1][2].axhline(0, color="grey", linewidth=0.5)
        for method, style in (("GEDI (full)", "-"), ("without gen", "--")):
            traces = _traces(study, runs, group, method, seeds)
            for index, term in enumerate(("gen", "inv", "prior", "energy_reg")):
                steps, mean = _trace_mean(traces, f"grad/{term}")
                if not np.isnan(mean).all():
                    axes[1][0].plot(steps, mean, style, color=f"C{index}", label=f"{term}, {method}")
        axes[1][0].set_yscale("log")
        axes[1][0].set_title("weighted term's gradient norm (all layers)")
        axes[1][0].legend(fontsize=7)
        traces = _traces(study, runs, group, "without gen", seeds)
        layers = [k.split("/", 2)[2] for k in traces[0][0] if k.startswith("grad/inv/")]
        if len(layers) > SHOWN_LAYERS:  # a CNN's: the first, two between and the head
            layers = [layers[round(i * (len(layers) - 1) / (SHOWN_LAYERS - 1))] for i in range(SHOWN_LAYERS)]
        for index, layer in enumerate(layers):
            for term, style in (("inv", "-"), ("prior", "--")):
                axes[1][1].plot(*_trace_mean(traces, f"grad/{term}/{layer}"), style, color=f"C{index}",
                                label=f"{term}, {layer}")
        axes[1][1].set_yscale("log")
        axes[1][1].set_title("without gen: gradient norm per layer")
        axes[1][1].legend(fontsize=7)
        for method, style in (("GEDI (full)", "-"), ("without gen", "--")):  # a failing seed hides in a mean
            for seed, trace in enumerate(_traces(study, runs, group, method, seeds)):
                axes[1][3].plot([p["step"] for p in trace], [p["logit_spread"] for p in trace], style, color=f"C{seed}",
                                label=f"{method}, seed {seed}")
        axes[1][3].set_yscale("log")
        axes[1][3].set_title("logit spread per seed")
        axes[1][3].legend(fontsize=7)
        for ax in axes.flat:
            ax.set_xlabel("training step")
        fig.suptitle(f"{group}: collapse probes, mean over {seeds} seeds")
        written.append(save_figure(fig, stem.with_name(f"{stem.name}_{group}.png")))
    return written
