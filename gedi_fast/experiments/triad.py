"""The paper's experiment on our data: full GEDI, its ablations and k-means, over seeds, as a Markdown table."""
from __future__ import annotations

import pathlib
import statistics

from gedi_fast.experiments.report import mean_std_cell
from gedi_fast.experiments.runner import Results, cases, run_cases
from gedi_fast.train.trainer import TrainConfig

# Each variant: its TrainConfig settings (fields or flat SGLD names) on top of the base config.
VARIANTS: dict[str, dict] = {
    "GEDI (full)": {},
    "without gen": {"gen_weight": 0.0, "energy_reg": 0.0},
    "without inv": {"inv_weight": 0.0},
    "without prior": {"prior_weight": 0.0},
    "GEDI, Sinkhorn targets": {"assignment": "sinkhorn"},
}
DATASETS = ("moons", "circles", "digits")


def run(datasets=DATASETS, seeds=range(5), steps: int | None = None, out: str | pathlib.Path = "runs/triad",
        base: TrainConfig | None = None, log=print, jobs: int = 1,
        variants: dict[str, dict] | None = None) -> Results:
    """{(variant, dataset): [scores per seed]} for every GEDI variant (default: VARIANTS) on every
    dataset, and k-means (runner.run_cases)."""
    return run_cases(cases(datasets, VARIANTS if variants is None else variants), seeds, steps, out, base, log, jobs)


def markdown_table(results: Results, datasets=DATASETS, variants: dict[str, dict] | None = None) -> str:
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
            cells.append(f"{mean_std_cell(nmi)} (median {statistics.median(nmi):.3f}, largest cluster <= {largest:.2f})")
            cells.append(mean_std_cell(acc))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
