"""Study `precision`: whether the fast path (precision and memory_format "auto") learns what fp32
learns, and how much sooner, on the image datasets."""
from __future__ import annotations

import statistics

from gedi_fast.experiments.runner import Results, cases
from gedi_fast.experiments.studies.study import Column, Study, train_timed
from gedi_fast.train.presets import PRESETS

# The cpu-images step as it ran before "auto" (fp32, contiguous) against what "auto" picks on the machine at hand.
VARIANTS = {
    "fp32, contiguous": {**PRESETS["cpu-images"], "precision": "fp32", "memory_format": "contiguous"},
    "auto": dict(PRESETS["cpu-images"]),
}


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


STUDY = Study(
    "Does the fast path (precision and memory_format 'auto') learn what fp32 learns, and how much sooner?",
    tuple(cases(("mnist5k", "fashion-mnist"), VARIANTS)),
    train=train_timed,
    columns=(Column("ms/step", "ms_per_step", 0),),
    summary=runs_side_by_side,
)
