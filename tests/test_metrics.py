"""Metrics on cases whose answers are known."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch

from gedi_fast.train import metrics


def test_perfect_clustering_up_to_a_permutation():
    true = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([2, 2, 0, 0, 1, 1])
    assert metrics.clustering_scores(true, predicted) == pytest.approx({"nmi": 1.0, "ari": 1.0, "acc": 1.0})


def test_accuracy_by_hand_with_more_clusters_than_classes():
    # Clusters 0 -> class 0 (2 right), 1 -> class 1 (2 right); cluster 2 is left unmatched: 4 of 6.
    true = torch.tensor([0, 0, 1, 1, 0, 1])
    predicted = torch.tensor([0, 0, 1, 1, 2, 2])
    assert metrics.clustering_accuracy(true, predicted) == pytest.approx(4 / 6)


def test_accuracy_with_fewer_clusters_than_classes():
    true = np.array([0, 1, 2, 3])
    predicted = np.array([0, 0, 0, 0])
    assert metrics.clustering_accuracy(true, predicted) == pytest.approx(1 / 4)


def test_collapsed_clustering_scores_zero_nmi_and_ari():
    true = np.repeat(np.arange(4), 25)
    scores = metrics.clustering_scores(true, np.zeros(100, dtype=np.int64))
    assert scores["nmi"] == pytest.approx(0.0) and scores["ari"] == pytest.approx(0.0)
    assert scores["acc"] == pytest.approx(0.25)


def test_cluster_usage():
    balanced = metrics.cluster_usage(np.arange(40) % 4, 4)
    assert balanced["usage_entropy"] == pytest.approx(math.log(4)) and balanced["largest_cluster_share"] == 0.25
    collapsed = metrics.cluster_usage(np.zeros(10, dtype=np.int64), 4)
    assert collapsed["usage_entropy"] == pytest.approx(0.0) and collapsed["largest_cluster_share"] == 1.0
    assert balanced["clusters_used"] == 4 and collapsed["clusters_used"] == 1
    assert metrics.cluster_usage(np.array([0, 6, 6, 2, 0]), 9)["clusters_used"] == 3  # over-clustered: 6 empty


def test_ood_auroc_known_cases():
    assert metrics.ood_auroc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert metrics.ood_auroc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 0.0
    assert metrics.ood_auroc(np.array([0.0, 2.0]), np.array([1.0, 3.0])) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: metrics.clustering_scores(np.zeros(3, dtype=int), np.zeros(4, dtype=int)), ValueError, "predicted must have"),
        (lambda: metrics.clustering_scores(np.zeros(3), np.zeros(3, dtype=int)), TypeError, "true must hold integer"),
        (lambda: metrics.clustering_accuracy(np.zeros((2, 2), dtype=int), np.zeros(4, dtype=int)), ValueError, "true must be"),
        (lambda: metrics.cluster_usage(np.array([0, 5]), 4), ValueError, r"must lie in \[0, 4\)"),
        (lambda: metrics.ood_auroc(np.array([]), np.array([1.0])), ValueError, "must both be non-empty"),
    ],
)
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_logit_spread_against_a_float64_loop():
    z = torch.randn(9, 5, dtype=torch.float64) * 30
    temperature = 0.1
    by_hand = sum(statistics.stdev((z[:, k] / temperature).tolist()) for k in range(5)) / 5
    assert metrics.logit_spread(z, temperature).item() == pytest.approx(by_hand, rel=1e-6)
    assert metrics.logit_spread(z[:1].expand(4, 5), temperature).item() == 0.0  # one prediction for every row
    for bad in (torch.randn(1, 5), torch.randn(5)):
        with pytest.raises(ValueError, match="at least 2 rows"):
            metrics.logit_spread(bad, temperature)
