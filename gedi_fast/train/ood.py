"""Out-of-distribution detection with a trained clusterer: the energy score against the max-softmax
baseline, each scored by AUROC with the other dataset's held-out split as the positive class.

Energy E(x) = -logsumexp(z / T): a model trained with the generative term gives its data low energy,
so a high energy flags an input as foreign. Max-softmax (max_k softmax(z / T)_k, the same T the
clusters use) flags low-confidence inputs; it needs no generative term, which is what makes it the
baseline the energy score must beat.
"""
from __future__ import annotations

import pathlib

import torch
from torch import nn

from gedi_fast.reference import energy
from gedi_fast.train import metrics
from gedi_fast.train.data import Dataset

EVAL_ROWS = 1024  # rows per forward when scoring a split: bounds memory on 10k-image test sets


@torch.no_grad()
def batched_logits(model: nn.Module, x: torch.Tensor, device: torch.device, rows: int = EVAL_ROWS) -> torch.Tensor:
    """model(x) in eval mode, `rows` at a time on `device`; float32 logits on the CPU."""
    model.eval()
    return torch.cat([model(x[i:i + rows].to(device)).float().cpu() for i in range(0, len(x), rows)])


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
