"""Clustering, representation, out-of-distribution and sample-quality metrics, computed on held-out data.

scipy and scikit-learn are imported by the functions that use them: the trainer imports this module,
and a rank's start or `gedi-fast train --help` should not pay for them."""
from __future__ import annotations

import json
import math
import pathlib
from types import ModuleType

import numpy as np
import torch

from gedi_fast.reference.logits import compute_dtype


def sk_metrics() -> ModuleType:
    """scikit-learn's metrics module, imported on first use."""
    from sklearn import metrics

    return metrics


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
    from scipy.optimize import linear_sum_assignment

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
        "nmi": float(sk_metrics().normalized_mutual_info_score(y, c)),
        "ari": float(sk_metrics().adjusted_rand_score(y, c)),
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


def logit_spread(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """How much a batch's scaled logits z / T differ between its rows: their standard deviation over the
    rows, averaged over the clusters. Near 0 the network gives every input the same prediction (the
    uniform plateau an image run can sit on before it clusters); a tensor, so reading it needs no sync."""
    if z.ndim != 2 or len(z) < 2:
        raise ValueError(f"z must be a 2-D batch of logits with at least 2 rows, got shape {tuple(z.shape)}")
    return (z.to(compute_dtype(z)) / temperature).std(0).mean()


def ood_auroc(energy_in: torch.Tensor | np.ndarray, energy_out: torch.Tensor | np.ndarray) -> float:
    """AUROC of telling out-of-distribution inputs by a score such as the energy (higher = more likely
    OOD): the chance that a random OOD input scores above a random in-distribution one, ties half."""
    e_in = np.asarray(energy_in.detach().cpu() if isinstance(energy_in, torch.Tensor) else energy_in, dtype=np.float64)
    e_out = np.asarray(energy_out.detach().cpu() if isinstance(energy_out, torch.Tensor) else energy_out, dtype=np.float64)
    if e_in.size == 0 or e_out.size == 0:
        raise ValueError("energy_in and energy_out must both be non-empty")
    scores = np.concatenate([e_in.ravel(), e_out.ravel()])
    is_out = np.concatenate([np.zeros(e_in.size), np.ones(e_out.size)])
    return float(sk_metrics().roc_auc_score(is_out, scores))


def _feature_matrix(x: torch.Tensor | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(x.detach().cpu().double() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise ValueError(f"{name} must be an N x D array of features with N >= 2, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} holds NaN or infinite features")
    return array


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric positive semi-definite matrix (rounding's negative
    eigenvalues read as 0)."""
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(features_a: torch.Tensor | np.ndarray, features_b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two N x D feature sets (the FID when the features
    come from a classifier): |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2).

    Computed in float64 through symmetric eigendecompositions, so the trace term is real and exact
    to rounding even for singular covariances (fewer rows than dimensions), where a general matrix
    square root of S_a S_b turns complex. Covariances are unbiased (N - 1).
    """
    a, b = _feature_matrix(features_a, "features_a"), _feature_matrix(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_b must have features_a's {a.shape[1]} columns, got {b.shape[1]}")
    cov_a, cov_b = np.cov(a, rowvar=False, ddof=1).reshape(a.shape[1], -1), np.cov(b, rowvar=False, ddof=1).reshape(
        b.shape[1], -1)
    root_a = _psd_sqrt(cov_a)
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0.0, None)).sum()
    distance = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)
    return max(distance, 0.0)


def class_coverage(predicted: torch.Tensor | np.ndarray, classes: int) -> float:
    """Entropy of the histogram of predicted classes over log(classes): 1 when every class is
    predicted equally often, 0 when one class takes everything."""
    counts = np.bincount(_labels(predicted, "predicted"), minlength=classes).astype(np.float64)
    share = counts[counts > 0] / counts.sum()
    return float(-(share * np.log(share)).sum() / math.log(classes))


def merge_into_metrics_json(path: pathlib.Path, key: str, entries: dict) -> None:
    """metrics_json[key].update(entries) in a run's metrics.json (created if missing): what evaluations
    add (OOD reports, sample quality) lives beside the training scores without replacing them."""
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved.setdefault(key, {}).update(entries)
    path.write_text(json.dumps(saved, indent=2))
