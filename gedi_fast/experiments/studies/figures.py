"""What the studies' figures share (matplotlib, Agg). A study's figures function imports this module
when it draws, so that naming the studies stays light; it takes (study, results, runs folder, path
stem) and returns the PNGs it wrote, named STEM_WHAT.png; points are means over seeds, bars one std."""
from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402,F401 (the studies draw with it)

from gedi_fast.experiments.report import mean_std  # noqa: E402
from gedi_fast.train.plots import save_figure  # noqa: E402


def seed_mean_std(runs: list[dict], key: str) -> tuple[float, float]:
    """The mean and std over seeds of scores[key], among the runs that have it; (nan, nan) for none."""
    return mean_std(r[key] for r in runs if key in r)


def save(fig, stem: pathlib.Path, what: str) -> pathlib.Path:
    """`fig` as STEM_WHAT.png."""
    return save_figure(fig, stem.with_name(f"{stem.name}_{what}.png"))


def log_x(ax, ticks: list, xlabel: str, base: int = 10, labels: list | None = None) -> None:
    """A log x axis marked only at `ticks` (named by `labels`, else by the ticks themselves)."""
    ax.set_xscale("log", base=base)
    ax.set_xticks(ticks, [str(t) for t in (ticks if labels is None else labels)])
    ax.minorticks_off()
    ax.set_xlabel(xlabel)
