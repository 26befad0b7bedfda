"""What a study is (a question, its cases, how its table reads) and what several studies share; the
registry (gedi_fast.experiments.studies) and every study's module import it, and it imports none of them."""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Callable

from gedi_fast.experiments.runner import Case, Results, train_one
from gedi_fast.experiments.triad import VARIANTS
from gedi_fast.train.config import TrainConfig

WITHOUT_GEN = VARIANTS["without gen"]  # the triad's run without the generative term, which studies compare against


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
    # (study, results, runs, stem) -> PNGs written; it imports matplotlib when called, not the study's module
    figures: Callable[..., list[pathlib.Path]] | None = None

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
