"""Markdown reports of experiments: the title, the question, the command as typed (with portable
paths), the machine and the wall time; and the mean +- std over seeds their tables and figures show."""
from __future__ import annotations

import argparse
import datetime
import math
import os
import pathlib
import platform
import sys
from typing import Iterable

import numpy as np
import torch


def write_report(args: argparse.Namespace, path: str, title: str, minutes: float, body: str,
                 question: str = "") -> pathlib.Path:
    """A Markdown report: the title, the question asked, the command as typed, where and how long it ran."""
    command = " ".join(["gedi-fast", *map(portable, sys.argv[1:] if args.argv is None else args.argv)])
    lead = f"{question}\n\n" if question else ""
    report = pathlib.Path(path)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(f"# {title}\n\n{lead}Command: `{command}`\n\nRun: {machine()}; {minutes:.0f} min wall.\n\n"
                      f"{body}\n")
    return report


def portable(argument: str) -> str:
    """A command-line word as a report records it: a path under the working folder relative to it, one
    under the home folder as ~/..., so that a report names no user's or machine's folders."""
    key, sep, value = argument.partition("=")
    if not (sep and os.path.isabs(value)):  # not KEY=PATH (--out=PATH, --set data_root=PATH): the word itself
        key, sep, value = "", "", argument
    if os.path.isabs(value):
        path, here, home = pathlib.Path(value), pathlib.Path.cwd(), pathlib.Path.home()
        if path.is_relative_to(here):
            value = str(path.relative_to(here)) or "."
        elif path.is_relative_to(home):
            value = str(pathlib.Path("~") / path.relative_to(home))
    return f"{key}{sep}{value}"


def machine() -> str:
    """Where and with what a report was made: the date, the CPU, Python and torch."""
    return (f"{datetime.date.today()}, {platform.processor() or platform.machine()} with {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """The mean and the (population) standard deviation of `values`, over seeds; (nan, nan) for none."""
    values = list(values)
    return (float(np.mean(values)), float(np.std(values))) if values else (math.nan, math.nan)


def mean_std_cell(values: Iterable[float], digits: int = 3) -> str:
    """A table cell: mean +- standard deviation over seeds."""
    mean, std = mean_std(values)
    return f"{mean:.{digits}f} +- {std:.{digits}f}"
