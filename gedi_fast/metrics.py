"""Clustering, representation and out-of-distribution metrics, computed on held-out data."""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as sk_metrics


def _labels(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of labels, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must hold integer labels, got dtype {array.dtype}")
    return array


def _pair(true: torch.Tensor | np.ndarray, predicted: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, c = _labels(true, "true"), _labels(predicted, "predicted")
    if y.shape != c.shape:
        raise ValueError(f"predicted must have true's shape {y.shape}, got {c.shape}")
    return y, c


def clustering_accuracy(true: torch.Tensor | np.ndarray, predicted: torch.Tensor | np.ndarray) -> float:
    """Accuracy under the best one-to-one matching of clusters to classes (Hungarian).

    With more clusters than classes, unmatched clusters count as errors; with fewer, unmatched
    classes do. The matching is rectangular, so K != number of classes is safe.
    """
    y, c = _pair(true, predicted)
    _, y_index = np.unique(y, return_inverse=True)
    _, c_index = np.unique(c, return_inverse=True)
    counts = np.zeros((c_index.max() + 1, y_index.max() + 1), dtype=np.int64)
    np.add.at(counts, (c_index, y_index), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / y.size)


def clustering_scores(true: torch.Tensor | np.ndarray, predicted: torch.Tensor | np.ndarray) -> dict[str, float]:
    """NMI, ARI (scikit-learn) and Hungarian accuracy of predicted clusters against true classes."""
    y, c = _pair(true, predicted)
    return {
        "nmi": float(sk_metrics.normalized_mutual_info_score(y, c)),
        "ari": float(sk_metrics.adjusted_rand_score(y, c)),
        "acc": clustering_accuracy(y, c),
    }


def cluster_usage(predicted: torch.Tensor | np.ndarray, clusters: int) -> dict[str, float]:
    """Entropy of the cluster-size distribution (nats; log K when balanced), the largest cluster's share
    and how many of the K clusters hold any point (over-clustering leaves some empty)."""
    c = _labels(predicted, "predicted")
    if c.min() < 0 or c.max() >= clusters:
        raise ValueError(f"predicted labels must lie in [0, {clusters}), got range [{c.min()}, {c.max()}]")
    share = np.bincount(c, minlength=clusters) / c.size
    nonzero = share[share > 0]
    return {
        "usage_entropy": float(-(nonzero * np.log(nonzero)).sum()),
        "usage_entropy_max": math.log(clusters),
        "largest_cluster_share": float(share.max()),
        "clusters_used": int(nonzero.size),
    }


def representation_scores(features: torch.Tensor) -> dict[str, float]:
    """Mean per-dimension variance and effective rank (exp of the singular values' entropy) of N x D
    features: both fall (towards 0 and 1) when the representation collapses, whatever the clusters do."""
    centred = features - features.mean(0)
    singular = torch.linalg.svdvals(centred.double())
    spectrum = singular / singular.sum().clamp_min(1e-30)
    effective_rank = math.exp(-(spectrum * spectrum.clamp_min(1e-30).log()).sum().item())
    return {"feature_variance": centred.var(0).mean().item(), "feature_effective_rank": effective_rank}


def ood_auroc(energy_in: torch.Tensor | np.ndarray, energy_out: torch.Tensor | np.ndarray) -> float:
    """AUROC of telling out-of-distribution inputs by a score such as the energy (higher = more likely
    OOD): the chance that a random OOD input scores above a random in-distribution one, ties half."""
    e_in = np.asarray(energy_in.detach().cpu() if isinstance(energy_in, torch.Tensor) else energy_in, dtype=np.float64)
    e_out = np.asarray(energy_out.detach().cpu() if isinstance(energy_out, torch.Tensor) else energy_out, dtype=np.float64)
    if e_in.size == 0 or e_out.size == 0:
        raise ValueError("energy_in and energy_out must both be non-empty")
    scores = np.concatenate([e_in.ravel(), e_out.ravel()])
    is_out = np.concatenate([np.zeros(e_in.size), np.ones(e_out.size)])
    return float(sk_metrics.roc_auc_score(is_out, scores))
