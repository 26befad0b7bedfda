"""The GEDI terms in plain torch: statistics, batch sums, terms, their analytic gradients (docs/DESIGN.md)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from gedi_fast.reference.logits import energy, scaled_log_softmax
from gedi_fast.reference.sinkhorn import sinkhorn_knopp

if TYPE_CHECKING:
    from gedi_fast.distributed import Ranks

TERM_NAMES = ("gen", "inv", "prior", "energy_reg")
DIAGNOSTIC_NAMES = ("energy_data", "energy_neg", "cluster_entropy")
# The fused kernels return every value in one vector, in this order.
TERM_VECTOR = ("loss", *TERM_NAMES, *DIAGNOSTIC_NAMES)
ASSIGNMENTS = ("softmax", "sinkhorn")


def _times_log(t: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """t * log_q with 0 log 0 = 0 (and no NaN in the gradient there): a -inf logit is a cluster of
    probability 0, and its entries add nothing to a cross-entropy or an entropy."""
    return t * torch.where(t > 0, log_q, torch.zeros_like(log_q))


def gedi_statistics(
    z1: torch.Tensor,
    z2: torch.Tensor,
    zn: torch.Tensor | None,
    temperature: float,
    targets: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor | None]:
    """The per-row and per-cluster quantities every GEDI term is built from (the fused kernels save these).

    "lse1", "lse2" (B), "lse_n" (M, or None): row logsumexp of z / temperature;
    "cross1" = sum_k t2 log q1, "cross2" = sum_k t1 log q2 (B), with t = q when targets is None;
    "log_columns" (K): log of the column sums sum_i q_ik over the 2B view rows, taken in the log
    domain (2B pbar: the prior's batch mean before the division).
    """
    log_q1, lse1 = scaled_log_softmax(z1, temperature)
    log_q2, lse2 = scaled_log_softmax(z2, temperature)
    t1, t2 = (log_q1.exp(), log_q2.exp()) if targets is None else (t.to(log_q1.dtype) for t in targets)
    return {
        "lse1": lse1,
        "lse2": lse2,
        "lse_n": None if zn is None else -energy(zn, temperature),
        "cross1": _times_log(t2, log_q1).sum(1),
        "cross2": _times_log(t1, log_q2).sum(1),
        "log_columns": torch.logsumexp(torch.cat([log_q1, log_q2]), dim=0),
    }


def batch_sums(stats: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor | int | None]:
    """The row counts and sums over rows that every term is a ratio of.

    Added up over ranks ("log_columns" by logsumexp) they give the terms of all ranks' rows at once.
    "views" = 2B and "samples" = M are counts; "lse_n", "lse_n_sq" are None without samples.
    """
    views = torch.cat([stats["lse1"], stats["lse2"]])
    lse_n = stats["lse_n"]
    return {
        "views": views.shape[0],
        "lse": views.sum(),
        "lse_sq": views.square().sum(),
        "cross": stats["cross1"].sum() + stats["cross2"].sum(),
        "samples": 0 if lse_n is None else lse_n.shape[0],
        "lse_n": None if lse_n is None else lse_n.sum(),
        "lse_n_sq": None if lse_n is None else lse_n.square().sum(),
        "log_columns": stats["log_columns"],
    }


def terms_from_sums(sums: dict[str, torch.Tensor | int | None]) -> dict[str, torch.Tensor]:
    """The unweighted terms and detached diagnostics of docs/DESIGN.md from batch_sums' output.

    Counts are ints on one process and tensors once all-reduced across ranks (never read back).
    """
    views = sums["views"]
    energy_data = -sums["lse"] / views
    energy_reg = sums["lse_sq"] / views
    if sums["lse_n"] is None:
        gen = energy_data.new_zeros(())
        energy_neg = energy_data.new_full((), math.nan)
    else:
        energy_neg = -sums["lse_n"] / sums["samples"]
        gen = energy_data - energy_neg
        energy_reg = energy_reg + sums["lse_n_sq"] / sums["samples"]
    log_columns = sums["log_columns"]
    queue_rows = sums.get("queue_rows")
    prior_rows = views if queue_rows is None else views + queue_rows
    log_pbar = log_columns - (prior_rows.log() if isinstance(prior_rows, torch.Tensor) else math.log(prior_rows))
    prior = -math.log(log_pbar.shape[0]) - log_pbar.mean()
    if queue_rows is not None:  # the batch's gradient at its own scale: the queue only sharpens pbar's estimate
        prior = prior + (prior_rows / views - 1) * (prior - prior.detach())
    return {
        "gen": gen,
        "inv": -sums["cross"] / views,
        "prior": prior,
        "energy_reg": energy_reg,
        "energy_data": energy_data.detach(),
        "energy_neg": energy_neg.detach(),
        "cluster_entropy": -_times_log(log_pbar.exp(), log_pbar).sum().detach(),
    }


def queue_sums(sums: dict[str, torch.Tensor | int | None], queue: tuple[torch.Tensor, torch.Tensor],
               temperature: float) -> dict[str, torch.Tensor | int | None]:
    """batch_sums with the queued rows of both views in the prior's column sums (constants, no gradient).

    "queue_rows" counts them; the prior's pbar is then the mean over the queued and the batch's rows,
    and its gradient for the batch's rows is scaled back up by (queued + batch rows) / batch rows.
    """
    log_q, _ = scaled_log_softmax(torch.cat(queue).detach(), temperature)
    queued_columns = torch.logsumexp(log_q.to(sums["log_columns"].dtype), dim=0)
    return {**sums, "log_columns": torch.logaddexp(sums["log_columns"], queued_columns), "queue_rows": log_q.shape[0]}


def terms_from_statistics(stats: dict[str, torch.Tensor | None]) -> dict[str, torch.Tensor]:
    """The unweighted terms and detached diagnostics of docs/DESIGN.md from gedi_statistics' output."""
    return terms_from_sums(batch_sums(stats))


def assignment_targets(
    z1: torch.Tensor, z2: torch.Tensor, assignment: str, sinkhorn_eps: float, sinkhorn_iters: int,
    ranks: Ranks | None = None, queue: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The inv term's targets: None for "softmax" (t = q, with gradient), Sinkhorn-Knopp per view otherwise.

    With a `queue` of past rows per view, each view is balanced together with its queued rows and
    keeps the targets of its own rows, as SwAV does.
    """
    if assignment == "softmax":
        return None
    if assignment == "sinkhorn":
        queued = (None, None) if queue is None else queue
        return tuple(_balanced(z, rows, sinkhorn_eps, sinkhorn_iters, ranks) for z, rows in zip((z1, z2), queued))
    raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")


def _balanced(z: torch.Tensor, queued: torch.Tensor | None, eps: float, iters: int,
              ranks: Ranks | None) -> torch.Tensor:
    if queued is None:
        return sinkhorn_knopp(z, eps, iters, ranks)
    return sinkhorn_knopp(torch.cat([queued.to(z.dtype), z.detach()]), eps, iters, ranks)[queued.shape[0]:]


def gedi_terms(
    z1: torch.Tensor,
    z2: torch.Tensor,
    zn: torch.Tensor | None,
    temperature: float,
    assignment: str = "softmax",
    sinkhorn_eps: float = 0.05,
    sinkhorn_iters: int = 3,
    ranks: Ranks | None = None,
    queue: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """The unweighted GEDI terms and detached diagnostics for views z1, z2 (B x K), samples zn (M x K).

    Returns 0-dim tensors: "gen", "inv", "prior", "energy_reg" (differentiable) and "energy_data",
    "energy_neg" (NaN without samples), "cluster_entropy" (detached). With `ranks`, the terms of all
    ranks' rows together, the same on every rank; each rank's gradient is for its own rows, times the
    world size (see gedi_fast.distributed). `queue` holds past rows of each view (gedi_fast.queue):
    the prior's column means and the Sinkhorn targets then cover them too; every other term is the
    batch's own.
    """
    targets = assignment_targets(z1, z2, assignment, sinkhorn_eps, sinkhorn_iters, ranks, queue)
    sums = batch_sums(gedi_statistics(z1, z2, zn, temperature, targets))
    if queue is not None:
        sums = queue_sums(sums, queue, temperature)
    if ranks is not None:
        sums = {**ranks.sum_rows(sums), "log_columns": ranks.logsumexp(sums["log_columns"])}
    return terms_from_sums(sums)


def gedi_gradients(
    grad_vector: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    zn: torch.Tensor | None,
    temperature: float,
    weights: list[float],
    targets: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Analytic gradients of the TERM_VECTOR entries (loss weighted by `weights`) for upstream grad_vector.

    The formulas the fused backward kernel evaluates; tests check them against autograd. With
    N = 2B and g_t the upstream weight of term t, for view 1 (view 2 swaps 1 and 2):
    ds1 = q1 (2 g_ereg lse1 - g_gen) / N - g_prior (q1 c - q1 sum_k q1 c), c_k = 1 / (K N pbar_k),
          - g_inv / N [(q2 - q1) + q1 (log q2 - sum_k q1 log q2)]   (softmax targets)
          - g_inv / N [t2 - q1 sum_k t2]                             (Sinkhorn targets, constants);
    samples: ds = q (g_gen + 2 g_ereg lse) / M. Each dz = ds / temperature.
    """
    stats = gedi_statistics(z1, z2, zn, temperature, targets)
    g = grad_vector.to(stats["lse1"].dtype)
    g_gen, g_inv, g_prior, g_ereg = (g[0] * w + g[1 + i] for i, w in enumerate(weights))
    if zn is None:
        g_gen = torch.zeros_like(g_gen)
    log_q1, log_q2 = (scaled_log_softmax(z, temperature)[0] for z in (z1, z2))
    q1, q2 = log_q1.exp(), log_q2.exp()
    n_views = 2 * z1.shape[0]
    log_share = stats["log_columns"] + math.log(z1.shape[1])

    def view_grad(q, log_q, lse, q_other, log_q_other, cross_other, target_other):
        share = (log_q - log_share).exp()
        ds = q * ((2 * g_ereg * lse - g_gen) / n_views).unsqueeze(1)
        ds = ds - g_prior * (share - q * share.sum(1, keepdim=True))
        if target_other is None:
            inv = (q_other - q) + q * (log_q_other - cross_other.unsqueeze(1))
        else:
            inv = target_other - q * target_other.sum(1, keepdim=True)
        return ds - g_inv / n_views * inv

    t1, t2 = (None, None) if targets is None else (t.to(q1.dtype) for t in targets)
    ds1 = view_grad(q1, log_q1, stats["lse1"], q2, log_q2, stats["cross2"], t2)
    ds2 = view_grad(q2, log_q2, stats["lse2"], q1, log_q1, stats["cross1"], t1)
    dzn = None
    if zn is not None:
        lse_n = stats["lse_n"]
        qn = (zn.to(lse_n.dtype) / temperature - lse_n.unsqueeze(1)).exp()
        dzn = (qn * ((g_gen + 2 * g_ereg * lse_n) / zn.shape[0]).unsqueeze(1) / temperature).to(zn.dtype)
    return (ds1 / temperature).to(z1.dtype), (ds2 / temperature).to(z2.dtype), dzn


def weighted_loss(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """sum over TERM_NAMES of weights[name] * terms[name]; a term of weight 0 is left out, not multiplied by
    0, so that it cannot turn the loss into NaN when it overflows (0 * inf)."""
    weighted = [weights[name] * terms[name] for name in TERM_NAMES if weights[name] != 0]
    return sum(weighted[1:], weighted[0]) if weighted else terms["inv"] * 0.0
