"""Study `collapse`: why GEDI avoids representational collapse without the generative term, and
whether some setting removing it does collapse; collapse probes (gedi_fast.experiments.probes) traced
during training."""
from __future__ import annotations

import math
import pathlib

import numpy as np

from gedi_fast.experiments import probes
from gedi_fast.experiments.runner import Case, Results, cases, run_folder
from gedi_fast.experiments.studies.study import WITHOUT_GEN, Column, Study
from gedi_fast.train.data import view_noise
from gedi_fast.train.presets import PRESETS

VARIANTS = {
    "GEDI (full)": {},
    "without gen": WITHOUT_GEN,
    "without gen, energy_reg kept": {"gen_weight": 0.0},
    "without gen, K = 50": {**WITHOUT_GEN, "clusters": 50},
    "without gen, prior 1": {**WITHOUT_GEN, "prior_weight": 1.0},
    "without gen, without prior": {**WITHOUT_GEN, "prior_weight": 0.0},
}


def _cases(datasets: tuple[str, ...]) -> tuple[Case, ...]:
    """VARIANTS on each dataset, with "without gen, views 1/10" (a tenth of the dataset's view noise)
    after "without gen"."""
    result = []
    for case in cases(datasets, VARIANTS):
        result.append(case)
        if case.method == "without gen":
            result.append(Case(case.group, "without gen, views 1/10",
                               {**case.settings, "view_noise": view_noise(case.group) / 10}))
    return tuple(result)


SHOWN_LAYERS = 4  # layers drawn in the per-layer gradient panel
TRACED = ("feature_effective_rank", "feature_variance", "logit_spread", "largest_cluster_share", "cos/inv-prior")
TRACE_TITLES = {"feature_effective_rank": "feature effective rank (test)",
                "feature_variance": "feature variance (test, mean per dimension)",
                "logit_spread": "logit spread, std of z/T over test rows", "largest_cluster_share": "largest cluster share (test)",
                "cos/inv-prior": "cos(inv, prior) gradients"}
LOG_SCALED = ("feature_variance", "logit_spread")


def _traces(runs: pathlib.Path, group: str, method: str, seeds: int) -> list[list[dict]]:
    folders = [run_folder(runs, group, method, seed) for seed in range(seeds)]
    return [probes.read_trace(f) for f in folders if (f / probes.TRACE_NAME).exists()]


def _trace_mean(traces: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array([p["step"] for p in traces[0]])
    values = np.array([[p.get(key, math.nan) for p in trace] for trace in traces])
    return steps, values.mean(0)


def collapse_figures(study: Study, results: Results, runs: pathlib.Path, stem: pathlib.Path) -> list[pathlib.Path]:
    """Per group: the probes' traces (mean over seeds) for every method, and for full GEDI and the
    run without gen each weighted term's gradient norm, in all and per layer."""
    from gedi_fast.experiments.studies.figures import plt, save

    written = []
    seeds = max(len(r) for r in results.values())
    for group in study.groups:
        fig, axes = plt.subplots(2, 4, figsize=(20, 8))
        traced = [*axes[0], axes[1][2]]
        for index, method in enumerate(study.methods(group)):
            traces = _traces(runs, group, method, seeds)
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
            traces = _traces(runs, group, method, seeds)
            for index, term in enumerate(("gen", "inv", "prior", "energy_reg")):
                steps, mean = _trace_mean(traces, f"grad/{term}")
                if not np.isnan(mean).all():
                    axes[1][0].plot(steps, mean, style, color=f"C{index}", label=f"{term}, {method}")
        axes[1][0].set_yscale("log")
        axes[1][0].set_title("weighted term's gradient norm (all layers)")
        axes[1][0].legend(fontsize=7)
        traces = _traces(runs, group, "without gen", seeds)
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
            for seed, trace in enumerate(_traces(runs, group, method, seeds)):
                axes[1][3].plot([p["step"] for p in trace], [p["logit_spread"] for p in trace], style, color=f"C{seed}",
                                label=f"{method}, seed {seed}")
        axes[1][3].set_yscale("log")
        axes[1][3].set_title("logit spread per seed")
        axes[1][3].legend(fontsize=7)
        for ax in axes.flat:
            ax.set_xlabel("training step")
        fig.suptitle(f"{group}: collapse probes, mean over {seeds} seeds")
        written.append(save(fig, stem, group))
    return written


STUDY = Study(
    "Why does GEDI avoid representational collapse without the generative term, and is there a setting "
    "where removing it does collapse?",
    (*_cases(("moons", "digits")),
     *cases(("mnist5k",), {"GEDI (full)": PRESETS["cpu-images"], "without gen": {**PRESETS["cpu-images"], **WITHOUT_GEN}})),
    train=probes.train_with_probes,
    columns=(Column("feature effective rank", "feature_effective_rank", 1),
             Column("feature variance", "feature_variance", 4),
             Column("lowest effective rank in training", "min_effective_rank", 1),
             Column("logit spread", "logit_spread", 2),
             Column("cos(inv, prior) gradients", "cos_inv_prior", 2)),
    figures=collapse_figures,
)
