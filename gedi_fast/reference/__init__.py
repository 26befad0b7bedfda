"""The GEDI objective in plain torch: the formulas of docs/DESIGN.md, written once, one module per op.

This package is the test oracle every kernel is checked against and the CPU runtime path. It works
in float64 when given float64 and in float32 otherwise (fp16/bf16 inputs are upcast first), and it
stays finite for every finite input: log-probabilities come from logsumexp, the prior's batch mean is
taken in the log domain, and Sinkhorn-Knopp runs on log-scaled matrices. Given `ranks`
(gedi_fast.distributed), the batch is every rank's rows together: the same formulas over sums that
are all-reduced across ranks.

logits: softmax, energy and its gradient; gedi: the GEDI terms and their gradients; sinkhorn:
balanced assignments; sgld: the SGLD update, buffer draw and informative starts (their random numbers: gedi_fast.rng).
"""
from gedi_fast.reference.gedi import (
    ASSIGNMENTS,
    DIAGNOSTIC_NAMES,
    FORMS,
    TERM_NAMES,
    TERM_VECTOR,
    assignment_targets,
    batch_sums,
    gedi_gradients,
    gedi_statistics,
    gedi_terms,
    queue_columns,
    terms_from_statistics,
    terms_from_sums,
    weighted_loss,
    with_queue,
)
from gedi_fast.reference.logits import compute_dtype, energy, energy_grad, scaled_log_softmax
from gedi_fast.reference.sgld import (
    buffer_draw,
    copula_from_uniform,
    darken_rows,
    fit_copula_start,
    fit_gaussian_start,
    fit_mixture_start,
    gaussian_from_uniform,
    mixture_from_uniform,
    sgld_step,
    split_last_uniform,
)
from gedi_fast.reference.sinkhorn import sinkhorn_knopp
from gedi_fast.rng import philox4x32_10, philox_normal

__all__ = [
    "ASSIGNMENTS", "DIAGNOSTIC_NAMES", "FORMS", "TERM_NAMES", "TERM_VECTOR", "assignment_targets", "batch_sums", "buffer_draw",
    "compute_dtype", "copula_from_uniform", "darken_rows", "energy", "energy_grad", "fit_copula_start", "fit_gaussian_start", "fit_mixture_start", "gaussian_from_uniform", "gedi_gradients", "gedi_statistics", "gedi_terms", "mixture_from_uniform", "philox4x32_10",
    "queue_columns", "philox_normal", "scaled_log_softmax", "sgld_step", "sinkhorn_knopp", "split_last_uniform", "terms_from_statistics", "terms_from_sums",
    "weighted_loss", "with_queue",
]
