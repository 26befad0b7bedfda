"""The Sinkhorn balance measurement (gedi_fast.experiments.sinkhorn_balance) on logits whose answer is known."""
from __future__ import annotations

import torch

from gedi_fast.experiments.sinkhorn_balance import balance, cluster_totals


def test_cluster_totals_read_the_targets_column_sums_against_the_fair_share():
    # Four rows sure of cluster 0, two sure of cluster 1: one iteration cannot move them far from 4 : 2.
    sure = torch.tensor([[20.0, 0.0]] * 4 + [[0.0, 20.0]] * 2)
    smallest, largest = cluster_totals(sure, eps=1.0, iters=1)
    assert 0.6 < smallest < 0.7 and 1.3 < largest < 1.4  # 2 / 3 and 4 / 3 of the share of 3 rows
    # Flat rows are balanced at once.
    assert all(abs(total - 1) < 1e-12 for total in cluster_totals(torch.zeros(6, 3), eps=0.05, iters=1))
    # More iterations balance the sure rows further.
    assert cluster_totals(sure, eps=1.0, iters=50)[0] > smallest


def test_balance_reports_both_scales_and_the_sharper_scale_balances_less():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(200, 5, generator=generator)
    result = balance(logits, temperature=0.1, batch=64, eps=0.05, iters=3, batches=4)
    assert set(result) == {"z", "z/T"}
    for totals in result.values():
        assert 0 < totals["smallest"] <= 1 <= totals["largest"]
    assert result["z/T"]["largest"] >= result["z"]["largest"]
