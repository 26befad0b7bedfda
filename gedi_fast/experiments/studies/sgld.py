"""Study `sgld`: what SGLD steps buy (NMI, out-of-distribution AUROC) and what they cost per step."""
from __future__ import annotations

import pathlib
import statistics

import numpy as np

from gedi_fast.experiments.runner import Results, cases, ood_of_run
from gedi_fast.experiments.studies.study import WITHOUT_GEN, Column, Study, train_timed
from gedi_fast.train.config import TrainConfig
from gedi_fast.train.data import OOD_PARTNERS

# Each SGLD variant's settings: the chain's length at 64 samples, samples at 20 steps, chains from noise.
VARIANTS = {
    **{f"{steps} SGLD steps": {"sgld_steps": steps} for steps in (0, 1, 5, 10, 20, 40)},
    **{f"20 steps, {samples} samples": {"sgld_samples": samples} for samples in (16, 256)},
    **{f"{steps} steps from noise": {"sgld_steps": steps, "reinit_prob": 1.0} for steps in (5, 20)},
    "without gen": WITHOUT_GEN,
}


def train_scoring_ood(config: TrainConfig, folder: pathlib.Path, threads: int | None = None) -> dict:
    """train_timed, then (for a dataset with an OOD partner, gedi_fast.train.data.OOD_PARTNERS) the
    energy and max-softmax AUROCs of telling the partner's test split from this one's, as `gedi-fast
    eval --ood` records them."""
    scores = train_timed(config, folder, threads)
    partner = OOD_PARTNERS.get(config.dataset)
    if partner is not None:
        report = ood_of_run(folder, partner)
        scores |= {"ood_energy_auroc": report["energy_auroc"], "ood_max_softmax_auroc": report["max_softmax_auroc"]}
    return scores


def cheapest_within_best(study: Study, results: Results, tolerance: float = 0.01) -> str:
    """Per group: the best mean NMI among the study's methods and the cheapest method (ms per step)
    whose mean NMI is within `tolerance` of it."""
    lines = []
    for group in study.groups:
        scored = {m: results[(m, group)] for m in study.methods(group) if results.get((m, group))}
        if not scored:
            continue
        nmi = {m: statistics.mean(r["nmi"] for r in runs) for m, runs in scored.items()}
        cost = {m: statistics.mean(r["ms_per_step"] for r in runs) for m, runs in scored.items()}
        best = max(nmi, key=nmi.get)
        near = [m for m in scored if nmi[m] >= nmi[best] - tolerance]
        cheapest = min(near, key=cost.get)
        lines.append(f"- **{group}**: best mean NMI {nmi[best]:.3f} ({best}, {cost[best]:.1f} ms/step); cheapest "
                     f"within {tolerance} of it: {cheapest} (NMI {nmi[cheapest]:.3f}, {cost[cheapest]:.1f} ms/step)")
    return "\n".join(lines)


def sgld_figures(study: Study, results: Results, runs: pathlib.Path, stem: pathlib.Path) -> list[pathlib.Path]:
    """NMI, step time and OOD AUROC against the SGLD chain length (64 samples), NMI against samples
    per step (20 steps); chains restarted from noise and the run without gen as markers and lines."""
    from gedi_fast.experiments.studies.figures import log_x, plt, save, seed_mean_std

    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    settings = {case.method: case.settings for case in study.cases if case.group == study.groups[0]}
    length = {m: s["sgld_steps"] for m, s in settings.items() if "sgld_steps" in s and "reinit_prob" not in s}
    from_noise = {m: s["sgld_steps"] for m, s in settings.items() if "reinit_prob" in s}
    samples = {m: s["sgld_samples"] for m, s in settings.items() if "sgld_samples" in s}
    samples |= {m: TrainConfig().sgld_samples for m, steps in length.items() if steps == 20}
    for index, group in enumerate(study.groups):
        color = f"C{index}"

        def curve(methods: dict[str, int], key: str) -> tuple[np.ndarray, ...]:
            points = sorted((x, *seed_mean_std(results[(m, group)], key)) for m, x in methods.items()
                            if results.get((m, group)))
            return tuple(map(np.array, zip(*points)))

        # log-ish x axis that keeps 0 steps: plot at steps + 1
        x, mean, std = curve(length, "nmi")
        axes[0].errorbar(x + 1, mean, std, marker="o", capsize=3, color=color, label=f"{group}, buffer")
        x, mean, std = curve(from_noise, "nmi")
        axes[0].errorbar(x + 1, mean, std, marker="x", capsize=3, color=color, linestyle=":",
                         label=f"{group}, from noise")
        if results.get(("without gen", group)):
            axes[0].axhline(seed_mean_std(results[("without gen", group)], "nmi")[0], color=color, linestyle="--",
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
        log_x(ax, [t + 1 for t in ticks], "SGLD steps per training step (64 samples)", labels=ticks)
        ax.set(title=title, ylabel=ylabel)
        ax.legend(fontsize=7)
    log_x(axes[3], sorted(set(samples.values())), "SGLD samples per training step (20 steps)", base=2)
    axes[3].set(title="NMI against samples", ylabel="test NMI")
    axes[3].legend(fontsize=7)
    return [save(fig, stem, "steps")]


STUDY = Study(
    "What do SGLD steps buy (NMI, out-of-distribution AUROC), and at what cost per step?",
    tuple(cases(("moons", "digits"), VARIANTS)),
    train=train_scoring_ood,
    columns=(Column("ms/step", "ms_per_step", 1), Column("OOD energy AUROC", "ood_energy_auroc"),
             Column("OOD max-softmax AUROC", "ood_max_softmax_auroc")),
    summary=cheapest_within_best,
    figures=sgld_figures,
)
