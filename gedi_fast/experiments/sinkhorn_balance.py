"""How balanced Sinkhorn-Knopp's targets are on a trained run's logits: each target matrix of a batch
should give every cluster B / K rows; after a few iterations it gives some more and some less.

`python -m gedi_fast.experiments.sinkhorn_balance RUN [RUN ...]` prints, per run, the cluster totals'
spread (smallest and largest total over B / K, worst of the batches) for the raw logits z (what
GEDILoss balances) and for z / T, at several iteration counts.
"""
from __future__ import annotations

import argparse
import pathlib

import torch

from gedi_fast import reference
from gedi_fast.train.clusterer import load_run
from gedi_fast.train.data import load_dataset
from gedi_fast.train.inference import batched_logits


def cluster_totals(scores: torch.Tensor, eps: float, iters: int) -> tuple[float, float]:
    """(smallest, largest) column total of Sinkhorn-Knopp's targets over its fair share B / K."""
    targets = reference.sinkhorn_knopp(scores.double(), eps, iters)
    share = targets.shape[0] / targets.shape[1]
    totals = targets.sum(0) / share
    return totals.min().item(), totals.max().item()


def balance(logits: torch.Tensor, temperature: float, batch: int, eps: float, iters: int, batches: int,
            seed: int = 0) -> dict[str, dict[str, float]]:
    """The worst (smallest, largest) cluster totals over `batches` random batches of `batch` rows, for the
    raw logits and for logits / temperature."""
    generator = torch.Generator().manual_seed(seed)
    result = {}
    for scale_name, scores in (("z", logits), ("z/T", logits / temperature)):
        low, high = float("inf"), 0.0
        for _ in range(batches):
            rows = torch.randperm(len(scores), generator=generator)[:batch]
            smallest, largest = cluster_totals(scores[rows], eps, iters)
            low, high = min(low, smallest), max(high, largest)
        result[scale_name] = {"smallest": low, "largest": high}
    return result


def run_logits(folder: pathlib.Path) -> tuple[torch.Tensor, float, int, float]:
    """(test-split logits, temperature, training batch size, sinkhorn_eps) of the run in `folder`."""
    run = load_run(folder)
    dataset = load_dataset(run.config.dataset, run.config.data_root, run.config.seed)
    logits = batched_logits(run.model, dataset.test_x, torch.device("cpu"))
    return logits, run.config.temperature, run.config.batch_size, run.config.sinkhorn_eps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=pathlib.Path)
    parser.add_argument("--iters", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args(argv)
    print("| run | logit spread (std) | iterations | z: smallest / largest total | z/T: smallest / largest total |")
    print("|---|---|---|---|---|")
    for folder in args.runs:
        logits, temperature, batch, eps = run_logits(folder)
        for iters in args.iters:
            result = balance(logits, temperature, batch, eps, iters, args.batches)
            cells = [f"{result[s]['smallest']:.2f} / {result[s]['largest']:.2f}" for s in ("z", "z/T")]
            print(f"| {folder.name} | {logits.std().item():.3g} | {iters} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
