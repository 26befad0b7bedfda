"""Every random stream of a run comes from its one seed; each offset lives here, so that no two streams
share a seed by accident and a new stream is added in one place."""
from __future__ import annotations

# Rank r's SGLD seed is seed + r * this (mod 2**63): odd, so distinct ranks never share a Philox key.
RANK_STRIDE = 0x9E3779B97F4A7C15
# After n divergence rollbacks the SGLD seed moves on by n * this (mod 2**63): a fresh buffer and noise stream.
RESEED_STRIDE = 0xBF58476D1CE4E5B9
TRAINING_DRAWS = 1  # the batch rows and their views, the same stream on every rank
EVALUATION_VIEWS = 2  # the views evaluate() compares: its own stream, so evaluating never shifts training
PROBE_BATCH = 7919  # the experiments' collapse probe batch
FRESH_CHAINS = 1  # a fork of a trained sampler for fresh chains (plots, FID): the sampler's seed + this


def sampler_seed(seed: int, rank: int, rollbacks: int) -> int:
    """Rank `rank`'s SGLD seed after `rollbacks` divergence rollbacks."""
    return (seed + rank * RANK_STRIDE + rollbacks * RESEED_STRIDE) % 2**63
