"""The experiment commands (`gedi-fast triad | study | images`): run the cases, write the report under --out."""
from __future__ import annotations

import argparse
import pathlib
import time

from gedi_fast.experiments import images, studies, triad
from gedi_fast.experiments.report import write_report
from gedi_fast.experiments.runner import run_cases
from gedi_fast.experiments.studies import STUDIES
from gedi_fast.train.config import TrainConfig, parse_settings
from gedi_fast.train.presets import preset_settings


def triad_command(args: argparse.Namespace) -> int:
    """Full GEDI, its ablations and k-means over seeds on the vector datasets: one Markdown table."""
    base = TrainConfig.from_settings(**parse_settings(args.set))
    started = time.perf_counter()
    results = triad.run(args.datasets, range(args.seeds), args.steps, args.out, base, jobs=args.jobs)
    minutes = (time.perf_counter() - started) / 60
    table = triad.markdown_table(results, args.datasets)
    report = write_report(args, args.report or f"{args.out}/RESULTS.md", "The failure-mode triad on our data",
                          minutes, table)
    print(table)
    print(f"table: {report}")
    return 0


def study_command(args: argparse.Namespace) -> int:
    """One study of gedi_fast.experiments.studies: its runs, results.json, a report and its figures."""
    study = STUDIES[args.name]
    seeds = study.seeds if args.seeds is None else args.seeds
    base = TrainConfig.from_settings(**parse_settings(args.set))
    runs = pathlib.Path(args.out or f"runs/study_{args.name}")
    started = time.perf_counter()
    results = run_cases(list(study.cases), range(seeds), args.steps, runs, base, jobs=args.jobs, train=study.train)
    minutes = (time.perf_counter() - started) / 60
    studies.save_results(results, runs / "results.json")
    report_path = pathlib.Path(args.report or runs / f"{args.name}.md")
    body = studies.markdown_table(study, results)
    if study.summary is not None:
        body += "\n\n" + study.summary(study, results)
    report = write_report(args, str(report_path), f"Study: {args.name}", minutes, body, study.question)
    if study.figures is not None:  # the table is written first: a failing plot loses no run
        pictures = study.figures(study, results, runs, report_path.parent / args.name)
        body += "\n\n" + "\n\n".join(f"![{p.stem}]({p.name})" for p in pictures)
        report = write_report(args, str(report_path), f"Study: {args.name}", minutes, body, study.question)
    print(body)
    print(f"table: {report}; runs and results.json under {runs}")
    return 0


def images_command(args: argparse.Namespace) -> int:
    """GEDI with and without gen on the image datasets, k-means and OOD of each against the other."""
    settings = preset_settings(args.preset, "image", args.device) | parse_settings(args.set)
    base = TrainConfig.from_settings(**settings | {"device": args.device, "data_root": args.data_root})
    started = time.perf_counter()
    results, ood = images.run(range(args.seeds), args.out, base, args.jobs, args.datasets)
    minutes = (time.perf_counter() - started) / 60
    tables = f"{images.clustering_table(results, args.datasets)}\n\n{images.ood_table(ood, args.datasets)}"
    report = write_report(args, args.report or f"{args.out}/RESULTS.md", "GEDI on images", minutes, tables)
    print(tables)
    print(f"tables: {report}; runs (metrics.json, PNGs) under {args.out}")
    return 0
