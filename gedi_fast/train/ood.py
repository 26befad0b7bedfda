"""Out-of-distribution detection with a trained clusterer: the energy score against the max-softmax
baseline, each scored by AUROC with the other dataset's held-out split as the positive class.

Energy E(x) = -logsumexp(z / T): a model trained with the generative term gives its data low energy,
so a high energy flags an input as foreign. Max-softmax (max_k softmax(z / T)_k, the same T the
clusters use) flags low-confidence inputs; it needs no generative term, which is what makes it the
baseline the energy score must beat.
"""
from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING

import torch
from torch import nn

from gedi_fast.reference import energy
from gedi_fast.train import metrics
from gedi_fast.train.data import Dataset, load_dataset
from gedi_fast.train.inference import batched_logits

if TYPE_CHECKING:
    from gedi_fast.train.trainer import GEDITrainer


def ood_scores(logits: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """Per row, larger = more likely out of distribution: the energy and the negated max-softmax."""
    confidence = torch.softmax(logits.double() / temperature, dim=1).amax(1)
    return {"energy": energy(logits.double(), temperature), "neg_max_softmax": -confidence}


def require_same_shape(inside: Dataset, outside: Dataset) -> None:
    if inside.input_shape != outside.input_shape:
        raise ValueError(f"--ood {outside.name!r} has inputs of shape {outside.input_shape}, but the run's dataset "
                         f"{inside.name!r} has {inside.input_shape}: OOD detection needs the same input shape")


def ood_report(model: nn.Module, temperature: float, inside: Dataset, outside: Dataset,
               device: torch.device) -> tuple[dict[str, float | int | str], dict[str, torch.Tensor]]:
    """(AUROCs and counts, per-row scores) of telling `outside`'s test split from `inside`'s."""
    require_same_shape(inside, outside)
    scores_in = ood_scores(batched_logits(model, inside.test_x, device), temperature)
    scores_out = ood_scores(batched_logits(model, outside.test_x, device), temperature)
    report = {
        "in": inside.name,
        "out": outside.name,
        "rows_in": len(inside.test_x),
        "rows_out": len(outside.test_x),
        "energy_auroc": metrics.ood_auroc(scores_in["energy"], scores_out["energy"]),
        "max_softmax_auroc": metrics.ood_auroc(scores_in["neg_max_softmax"], scores_out["neg_max_softmax"]),
    }
    return report, {"energy_in": scores_in["energy"], "energy_out": scores_out["energy"],
                    "max_softmax_in": -scores_in["neg_max_softmax"], "max_softmax_out": -scores_out["neg_max_softmax"]}


def record_ood(model: nn.Module, temperature: float, inside: Dataset, outside: Dataset, device: torch.device,
               metrics_path: pathlib.Path) -> tuple[dict[str, float | int | str], dict[str, torch.Tensor]]:
    """ood_report, also stored in `metrics_path` (a run's metrics.json, created if missing) under
    "ood", one entry per out-of-distribution dataset."""
    report, per_row = ood_report(model, temperature, inside, outside, device)
    metrics.merge_into_metrics_json(metrics_path, "ood", {outside.name: report})
    return report, per_row


def ood_dataset(trainer: GEDITrainer, name: str, data_root: str | pathlib.Path | None = None) -> Dataset:
    """Dataset `name` as the out-of-distribution class of the trainer's run: loaded with the run's seed,
    from `data_root` (default: the run's), and checked to have the run's input shape."""
    outside = load_dataset(name, data_root or trainer.config.data_root, trainer.config.seed)
    require_same_shape(trainer.dataset, outside)
    return outside


def score_ood(trainer: GEDITrainer, outside: str | Dataset,
              data_root: str | pathlib.Path | None = None) -> tuple[dict[str, float | int | str], pathlib.Path]:
    """(the OOD report, the picture) of telling `outside` (a dataset, or its name, loaded as ood_dataset
    loads it) from the trainer's run: the report goes into the run folder's metrics.json (record_ood),
    the energy and max-softmax histograms into its ood_NAME.png."""
    from gedi_fast.train.plots import plot_ood  # matplotlib: only when a picture is drawn

    if isinstance(outside, str):
        outside = ood_dataset(trainer, outside, data_root)
    report, per_row = record_ood(trainer.model, trainer.config.temperature, trainer.dataset, outside, trainer.device,
                                 trainer.out / "metrics.json")
    return report, plot_ood(report, per_row, trainer.out / f"ood_{outside.name}.png")
