"""Studies beyond the paper: a named question, the GEDI variants that answer it, datasets and seeds.

`gedi-fast study NAME` trains every variant on every dataset for every seed (gedi_fast.triad's runner,
k-means beside them) and writes one Markdown table: a row per dataset and variant with NMI, ACC,
cluster balance and training wall time.
"""
from __future__ import annotations

import dataclasses
import statistics


@dataclasses.dataclass(frozen=True)
class Study:
    question: str
    datasets: tuple[str, ...]
    variants: dict[str, dict]  # name: TrainConfig settings on top of the base config
    seeds: int = 3


SMALL_BATCH = {"batch_size": 32}
STUDIES: dict[str, Study] = {
    "queue": Study(
        "Does a SwAV-style queue of past logits (queue_size) help balanced targets and the prior at batch 32?",
        ("moons", "blobs", "digits"),
        {
            "softmax, batch 32": SMALL_BATCH,
            "softmax, batch 32, queue 512": {**SMALL_BATCH, "queue_size": 512},
            "Sinkhorn, batch 32": {**SMALL_BATCH, "assignment": "sinkhorn"},
            "Sinkhorn, batch 32, queue 512": {**SMALL_BATCH, "assignment": "sinkhorn", "queue_size": 512},
        },
    ),
}


def markdown_table(study: Study, results: dict[tuple[str, str], list[dict]]) -> str:
    """One row per dataset and method (the study's variants, then k-means), mean +- std over seeds."""
    from gedi_fast.triad import mean_std  # triad pulls in scikit-learn: only when a table is made

    lines = ["| dataset | method | seeds | NMI | ACC | largest cluster (worst seed) | usage entropy / log K "
             "| train wall s |", "|---|---|---|---|---|---|---|---|"]
    for dataset in study.datasets:
        for method in [*study.variants, "k-means"]:
            runs = results.get((method, dataset), [])
            if not runs:
                lines.append(f"| {dataset} | {method} | 0 | not run | not run | not run | not run | not run |")
                continue
            largest = max(r["largest_cluster_share"] for r in runs)
            lines.append(f"| {dataset} | {method} | {len(runs)} | {mean_std([r['nmi'] for r in runs])} "
                         f"| {mean_std([r['acc'] for r in runs])} | {largest:.2f} "
                         f"| {mean_std([r['usage_entropy'] / r['usage_entropy_max'] for r in runs])} "
                         f"| {statistics.mean(r['train_wall_s'] for r in runs):.0f} |")
    return "\n".join(lines)
