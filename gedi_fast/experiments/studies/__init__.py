"""Studies beyond the paper: a named question, the runs that answer it, and how their table reads.

`gedi-fast study NAME` trains every case (a group of rows, a method, its TrainConfig settings) for
every seed through gedi_fast.experiments.runner, k-means beside each group, and writes one Markdown
table (a row per group and method: NMI, ACC, cluster balance, training wall time and the study's own
columns), the study's summary lines and its figures.

Each study is a module of this package holding its STUDY (cases, columns, summary, figures); this
module is the registry, STUDIES, with the table and results.json every study shares. What a Study is
lives in .study, which imports no study; naming the studies imports neither scikit-learn nor matplotlib
(a study's figures import matplotlib when they draw).
"""
from __future__ import annotations

import json
import math
import pathlib
import statistics

from gedi_fast.experiments.report import mean_std_cell
from gedi_fast.experiments.runner import Results
from gedi_fast.experiments.studies import clusters, collapse, forms, precision, queue, sgld
from gedi_fast.experiments.studies.study import Column, Study

__all__ = ["STUDIES", "Column", "Results", "Study", "load_results", "markdown_table", "save_results"]

STUDIES: dict[str, Study] = {
    "queue": queue.STUDY,
    "collapse": collapse.STUDY,
    "clusters": clusters.STUDY,
    "precision": precision.STUDY,
    "sgld": sgld.STUDY,
    "forms": forms.STUDY,
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
            cells = [group, method, str(len(runs)), mean_std_cell([r["nmi"] for r in runs]),
                     mean_std_cell([r["acc"] for r in runs]), f"{largest:.2f}",
                     mean_std_cell([r["usage_entropy"] / r["usage_entropy_max"] for r in runs]),
                     f"{statistics.mean(r['train_wall_s'] for r in runs):.0f}"]
            for column in study.columns:
                values = [r[column.key] for r in runs if column.key in r and not math.isnan(r[column.key])]
                cells.append(mean_std_cell(values, column.digits) if len(values) == len(runs) else "n/a")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
