"""Studies beyond the paper: a named question, the runs that answer it, and how their table reads.

`gedi-fast study NAME` trains every case (a group of rows, a method, its TrainConfig settings) for
every seed through gedi_fast.experiments.triad's runner, k-means beside each group, and writes one Markdown
table (a row per group and method: NMI, ACC, cluster balance, training wall time and the study's own
columns), the study's summary lines and its figures (gedi_fast.experiments.studies.figures).
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import statistics
from typing import Callable

from gedi_fast.experiments import images
from gedi_fast.experiments.probes import train_with_probes
from gedi_fast.experiments.studies import figures
from gedi_fast.experiments.triad import VARIANTS, Case, cases, mean_std, train_one
from gedi_fast.train.config import TrainConfig
from gedi_fast.train.data import MANY_BLOBS
from gedi_fast.train.presets import PRESETS

# Results as triad.run_cases gives them: {(method, group): [scores per seed]}.
Results = dict[tuple[str, str], list[dict]]
# Vector datasets of the same input shape: each one's out-of-distribution partner.
VECTOR_OOD_PARTNERS = {"moons": "circles", "circles": "moons"}


@dataclasses.dataclass(frozen=True)
class Column:
    """An extra table column: the mean +- std over seeds of scores[key], "n/a" where a run lacks it."""

    header: str
    key: str
    digits: int = 3


@dataclasses.dataclass(frozen=True)
class Study:
    """A question and the runs that answer it; `gedi-fast study NAME` trains `cases` x `seeds` with
    `train` and reports the table (with `columns`), the `summary` lines and the `figures`."""

    question: str
    cases: tuple[Case, ...]
    seeds: int = 3
    train: Callable[..., dict] = train_one  # (config, folder, threads) -> scores; module-level, for --jobs
    columns: tuple[Column, ...] = ()
    summary: Callable[[Study, Results], str] | None = None  # Markdown lines under the table
    figures: Callable[..., list[pathlib.Path]] | None = None  # (study, results, runs, stem) -> PNGs written

    @property
    def groups(self) -> list[str]:
        return list(dict.fromkeys(case.group for case in self.cases))

    def methods(self, group: str) -> list[str]:
        return [case.method for case in self.cases if case.group == group]


def train_timed(config: TrainConfig, folder: pathlib.Path, threads: int | None = None) -> dict:
    """train_one, plus ms_per_step (the training wall time per step) and what the run's precision and
    memory format resolved to on this machine (metrics.json's ran_with)."""
    scores = train_one(config, folder, threads)
    ran_with = json.loads((folder / "metrics.json").read_text())["ran_with"]
    return {**scores, "ms_per_step": 1000 * scores["train_wall_s"] / config.steps, **ran_with}


def train_scoring_ood(config: TrainConfig, folder: pathlib.Path, threads: int | None = None) -> dict:
    """train_timed, then (for a dataset with a VECTOR_OOD_PARTNERS entry) the energy and
    max-softmax AUROCs of telling the partner's test split from this one's, as `gedi-fast eval
    --ood` records them."""
    scores = train_timed(config, folder, threads)
    partner = VECTOR_OOD_PARTNERS.get(config.dataset)
    if partner is not None:
        report = images.ood_of_run(folder, partner)
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


def runs_side_by_side(study: Study, results: Results) -> str:
    """Per group: every seed's NMI, ACC and wall time under each method, what the method ran with, and
    the change of the median NMI from the group's first method (the one compared against)."""
    lines = []
    for group in study.groups:
        methods = [m for m in study.methods(group) if results.get((m, group))]
        if not methods:
            continue
        first = statistics.median(r["nmi"] for r in results[(methods[0], group)])
        lines.append(f"\n{group}:\n\n| method | ran with | seed | NMI | ACC | train wall | ms/step |\n|---|---|---|---|---|---|---|")
        for method in methods:
            runs = results[(method, group)]  # in seed order
            for seed, r in enumerate(runs):
                lines.append(f"| {method} | {r.get('precision', '?')}, {r.get('memory_format', '?')} | {seed} | "
                             f"{r['nmi']:.3f} | {r['acc']:.3f} | {r['train_wall_s'] / 60:.1f} min | {r['ms_per_step']:.0f} |")
            median = statistics.median(r["nmi"] for r in runs)
            lines.append(f"| {method}: median | | | {median:.3f} ({median - first:+.3f}) | "
                         f"{statistics.median(r['acc'] for r in runs):.3f} | | |")
    return "\n".join(lines)


WITHOUT_GEN = VARIANTS["without gen"]
# The cpu-images step as it ran before "auto" (fp32, contiguous) against what "auto" picks on the machine at hand.
PRECISION_VARIANTS = {
    "fp32, contiguous": {**PRESETS["cpu-images"], "precision": "fp32", "memory_format": "contiguous"},
    "auto": dict(PRESETS["cpu-images"]),
}
SMALL_BATCH = {"batch_size": 32}
# Each SGLD variant's settings: the chain's length at 64 samples, samples at 20 steps, chains from noise.
SGLD_VARIANTS = {
    **{f"{steps} SGLD steps": {"sgld_steps": steps} for steps in (0, 1, 5, 10, 20, 40)},
    **{f"20 steps, {samples} samples": {"sgld_samples": samples} for samples in (16, 256)},
    **{f"{steps} steps from noise": {"sgld_steps": steps, "reinit_prob": 1.0} for steps in (5, 20)},
    "without gen": WITHOUT_GEN,
}
COLLAPSE_VARIANTS = {
    "GEDI (full)": {},
    "without gen": WITHOUT_GEN,
    "without gen, energy_reg kept": {"gen_weight": 0.0},
    "without gen, K = 50": {**WITHOUT_GEN, "clusters": 50},
    "without gen, prior 1": {**WITHOUT_GEN, "prior_weight": 1.0},
    "without gen, without prior": {**WITHOUT_GEN, "prior_weight": 0.0},
}
# The datasets' own view noise (gedi_fast.train.data: a test checks these), for the "views 1/10" variant.
VIEW_NOISE = {"moons": 0.15, "digits": 1.0}


def _collapse_cases(datasets: tuple[str, ...]) -> tuple[Case, ...]:
    """COLLAPSE_VARIANTS on each dataset, with "without gen, views 1/10" after "without gen"."""
    result = []
    for case in cases(datasets, COLLAPSE_VARIANTS):
        result.append(case)
        if case.method == "without gen":
            result.append(Case(case.group, "without gen, views 1/10",
                               {**case.settings, "view_noise": VIEW_NOISE[case.group] / 10}))
    return tuple(result)


def _cluster_cases() -> tuple[Case, ...]:
    methods = {"GEDI (full)": {}, "GEDI, Sinkhorn targets": {"assignment": "sinkhorn"}}
    blobs = cases([f"blobs{k}" for k in MANY_BLOBS], methods)
    digits = [Case(f"digits, K = {k}", method, {"dataset": "digits", "clusters": k, **settings})
              for k in (10, 20, 50) for method, settings in methods.items()]
    return (*blobs, *digits)


STUDIES: dict[str, Study] = {
    "queue": Study(
        "Does a SwAV-style queue of past logits (queue_size) help balanced targets and the prior at batch 32?",
        tuple(cases(("moons", "blobs", "digits"), {
            "softmax, batch 32": SMALL_BATCH,
            "softmax, batch 32, queue 512": {**SMALL_BATCH, "queue_size": 512},
            "Sinkhorn, batch 32": {**SMALL_BATCH, "assignment": "sinkhorn"},
            "Sinkhorn, batch 32, queue 512": {**SMALL_BATCH, "assignment": "sinkhorn", "queue_size": 512},
        })),
    ),
    "collapse": Study(
        "Why does GEDI avoid representational collapse without the generative term, and is there a setting "
        "where removing it does collapse?",
        (*_collapse_cases(("moons", "digits")),
         *cases(("mnist5k",), {"GEDI (full)": PRESETS["cpu-images"], "without gen": {**PRESETS["cpu-images"], **WITHOUT_GEN}})),
        train=train_with_probes,
        columns=(Column("feature effective rank", "feature_effective_rank", 1),
                 Column("feature variance", "feature_variance", 4),
                 Column("lowest effective rank in training", "min_effective_rank", 1),
                 Column("logit spread", "logit_spread", 2),
                 Column("cos(inv, prior) gradients", "cos_inv_prior", 2)),
        figures=figures.collapse_figures,
    ),
    "clusters": Study(
        "How does GEDI scale with the number of clusters K (true clusters on blobs, over-clustering on digits)?",
        _cluster_cases(),
        columns=(Column("clusters used", "clusters_used", 1),),
        figures=figures.cluster_figures,
    ),
    "precision": Study(
        "Does the fast path (precision and memory_format 'auto') learn what fp32 learns, and how much sooner?",
        tuple(cases(("mnist5k", "fashion-mnist"), PRECISION_VARIANTS)),
        train=train_timed,
        columns=(Column("ms/step", "ms_per_step", 0),),
        summary=runs_side_by_side,
    ),
    "sgld": Study(
        "What do SGLD steps buy (NMI, out-of-distribution AUROC), and at what cost per step?",
        tuple(cases(("moons", "digits"), SGLD_VARIANTS)),
        train=train_scoring_ood,
        columns=(Column("ms/step", "ms_per_step", 1), Column("OOD energy AUROC", "ood_energy_auroc"),
                 Column("OOD max-softmax AUROC", "ood_max_softmax_auroc")),
        summary=cheapest_within_best,
        figures=figures.sgld_figures,
    ),
}


def save_results(results: Results, path: pathlib.Path) -> None:
    """results.json beside a study's runs: the scores of every run, to redraw its table and figures."""
    path.write_text(json.dumps([{"method": m, "group": g, "runs": runs} for (m, g), runs in results.items()], indent=1))


def load_results(path: pathlib.Path) -> Results:
    """What save_results wrote, keyed again by (method, group)."""
    return {(entry["method"], entry["group"]): entry["runs"] for entry in json.loads(pathlib.Path(path).read_text())}


def markdown_table(study: Study, results: Results) -> str:
    """One row per group and method (the study's, then k-means), mean +- std over seeds."""
    headers = ["group", "method", "seeds", "NMI", "ACC", "largest cluster (worst seed)", "usage entropy / log K",
               "train wall s", *(column.header for column in study.columns)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for group in study.groups:
        for method in [*study.methods(group), "k-means"]:
            runs = results.get((method, group), [])
            if not runs:
                lines.append(f"| {group} | {method} | 0 | " + " | ".join(["not run"] * (len(headers) - 3)) + " |")
                continue
            largest = max(r["largest_cluster_share"] for r in runs)
            cells = [group, method, str(len(runs)), mean_std([r["nmi"] for r in runs]),
                     mean_std([r["acc"] for r in runs]), f"{largest:.2f}",
                     mean_std([r["usage_entropy"] / r["usage_entropy_max"] for r in runs]),
                     f"{statistics.mean(r['train_wall_s'] for r in runs):.0f}"]
            for column in study.columns:
                values = [r[column.key] for r in runs if column.key in r and not math.isnan(r[column.key])]
                cells.append(mean_std(values, column.digits) if len(values) == len(runs) else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
