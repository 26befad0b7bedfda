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
# How inv and prior read the two views (docs/DESIGN.md, "Two forms"): "symmetric" pools both views in
# both terms; "author" is the GEDI author's own code: inv one-way (view 2 the target of view 1), the
# prior over view 1 alone and summed over the clusters.
FORMS = ("symmetric", "author")


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
    form: str = "symmetric",
) -> dict[str, torch.Tensor | None]:
    """The per-row and per-cluster quantities every GEDI term is built from (the fused kernels save these).

    "lse1", "lse2" (B), "lse_n" (M, or None): row logsumexp of z / temperature;
    "cross1" = sum_k t2 log q1, "cross2" = sum_k t1 log q2 (B), with t = q when targets is None
    (the author's form reads cross1 only); "log_columns" (K): log of the column sums sum_i q_ik over the
    prior's rows (the 2B view rows; view 1's B rows in the author's form), taken in the log domain
    (rows x pbar: the prior's batch mean before the division).
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
        "log_columns": torch.logsumexp(log_q1 if form == "author" else torch.cat([log_q1, log_q2]), dim=0),
    }


def batch_sums(stats: dict[str, torch.Tensor | None], form: str = "symmetric") -> dict[str, torch.Tensor | int | None]:
    """The row counts and sums over rows that every term is a ratio of.

    Added up over ranks ("log_columns" by logsumexp) they give the terms of all ranks' rows at once.
    "views" = 2B, "samples" = M and "inv_rows" (the rows inv and the prior average over: 2B, or B in
    the author's form) are counts; "lse_n", "lse_n_sq" are None without samples.
    """
    views = torch.cat([stats["lse1"], stats["lse2"]])
    lse_n = stats["lse_n"]
    author = form == "author"
    return {
        "views": views.shape[0],
        "inv_rows": stats["lse1"].shape[0] if author else views.shape[0],
        "lse": views.sum(),
        "lse_sq": views.square().sum(),
        "cross": stats["cross1"].sum() + (0 if author else stats["cross2"].sum()),
        "samples": 0 if lse_n is None else lse_n.shape[0],
        "lse_n": None if lse_n is None else lse_n.sum(),
        "lse_n_sq": None if lse_n is None else lse_n.square().sum(),
        "log_columns": stats["log_columns"],
    }


def terms_from_sums(sums: dict[str, torch.Tensor | int | None], form: str = "symmetric") -> dict[str, torch.Tensor]:
    """The unweighted terms and detached diagnostics of docs/DESIGN.md from batch_sums' output.

    Counts are ints on one process and tensors once all-reduced across ranks (never read back).
    The prior is KL(uniform || pbar) = -log K - mean_k log pbar_k, or in the author's form
    -sum_k log pbar_k = K (KL(uniform || pbar) + log K); both in the log domain, finite on a collapsed batch.
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
    inv_rows = sums["inv_rows"]
    queue_rows = sums.get("queue_rows")
    prior_rows = inv_rows if queue_rows is None else inv_rows + queue_rows
    log_pbar = log_columns - (prior_rows.log() if isinstance(prior_rows, torch.Tensor) else math.log(prior_rows))
    prior = -log_pbar.sum() if form == "author" else -math.log(log_pbar.shape[0]) - log_pbar.mean()
    if queue_rows is not None:  # the batch's gradient at its own scale: the queue only sharpens pbar's estimate
        prior = prior + (prior_rows / inv_rows - 1) * (prior - prior.detach())
    return {
        "gen": gen,
        "inv": -sums["cross"] / inv_rows,
        "prior": prior,
        "energy_reg": energy_reg,
        "energy_data": energy_data.detach(),
        "energy_neg": energy_neg.detach(),
        "cluster_entropy": -_times_log(log_pbar.exp(), log_pbar).sum().detach(),
    }


def queue_columns(queue: tuple[torch.Tensor, torch.Tensor], temperature: float,
                  form: str = "symmetric") -> tuple[torch.Tensor, int]:
    """(log column sums of q over the queued rows the prior reads, their number): both views' queued
    rows, view 1's in the author's form; constants, no gradient."""
    log_q, _ = scaled_log_softmax((queue[0] if form == "author" else torch.cat(queue)).detach(), temperature)
    return torch.logsumexp(log_q, dim=0), log_q.shape[0]


def with_queue(sums: dict[str, torch.Tensor | int | None], log_columns: torch.Tensor,
               rows: int) -> dict[str, torch.Tensor | int | None]:
    """batch_sums with `rows` queued rows of column sums exp(log_columns) in the prior's columns.

    "queue_rows" counts them; the prior's pbar is then the mean over the queued and the batch's rows,
    and its gradient for the batch's rows is scaled back up by (queued + batch rows) / batch rows.
    """
    merged = torch.logaddexp(sums["log_columns"], log_columns.to(sums["log_columns"].dtype))
    return {**sums, "log_columns": merged, "queue_rows": rows}


def terms_from_statistics(stats: dict[str, torch.Tensor | None], form: str = "symmetric") -> dict[str, torch.Tensor]:
    """The unweighted terms and detached diagnostics of docs/DESIGN.md from gedi_statistics' output."""
    return terms_from_sums(batch_sums(stats, form), form)


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
    form: str = "symmetric",
) -> dict[str, torch.Tensor]:
    """The unweighted GEDI terms and detached diagnostics for views z1, z2 (B x K), samples zn (M x K).

    Returns 0-dim tensors: "gen", "inv", "prior", "energy_reg" (differentiable) and "energy_data",
    "energy_neg" (NaN without samples), "cluster_entropy" (detached). With `ranks`, the terms of all
    ranks' rows together, the same on every rank; each rank's gradient is for its own rows, times the
    world size (see gedi_fast.distributed). `queue` holds past rows of each view (gedi_fast.queue):
    the prior's column means and the Sinkhorn targets then cover them too; every other term is the
    batch's own. `form` (FORMS) says how inv and the prior read the views.
    """
    targets = assignment_targets(z1, z2, assignment, sinkhorn_eps, sinkhorn_iters, ranks, queue)
    sums = batch_sums(gedi_statistics(z1, z2, zn, temperature, targets, form), form)
    if queue is not None:
        sums = with_queue(sums, *queue_columns(queue, temperature, form))
    if ranks is not None:
        sums = {**ranks.sum_rows(sums), "log_columns": ranks.logsumexp(sums["log_columns"])}
    return terms_from_sums(sums, form)


def gedi_gradients(
    grad_vector: torch.Tensor,
    z1: torch.Tensor,
    z2: torch.Tensor,
    zn: torch.Tensor | None,
    temperature: float,
    weights: list[float],
    targets: tuple[torch.Tensor, torch.Tensor] | None = None,
    form: str = "symmetric",
    queued: tuple[torch.Tensor, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Analytic gradients of the TERM_VECTOR entries (loss weighted by `weights`) for upstream grad_vector.

    The formulas the fused backward kernel evaluates; tests check them against autograd. With
    N = 2B and g_t the upstream weight of term t, for view 1 (view 2 swaps 1 and 2):
    ds1 = q1 (2 g_ereg lse1 - g_gen) / N - g_prior (q1 c - q1 sum_k q1 c), c_k = 1 / (K N pbar_k),
          - g_inv / N [(q2 - q1) + q1 (log q2 - sum_k q1 log q2)]   (softmax targets)
          - g_inv / N [t2 - q1 sum_k t2]                             (Sinkhorn targets, constants);
    samples: ds = q (g_gen + 2 g_ereg lse) / M. Each dz = ds / temperature.
    In the author's form inv and the prior average over B rows and take c_k = 1 / (B pbar1_k); view 1
    is only the prediction (its bracket keeps the first part) and the prior's rows, view 2 only the
    target (its bracket keeps the second part; nothing with Sinkhorn targets) and no prior.
    `queued` (queue_columns' output) adds queued rows to the columns: c_k = 1 / (K N pbar_k) over all
    P prior rows, times P / N (the batch's gradient at its own scale, as terms_from_sums scales it).
    """
    stats = gedi_statistics(z1, z2, zn, temperature, targets, form)
    g = grad_vector.to(stats["lse1"].dtype)
    g_gen, g_inv, g_prior, g_ereg = (g[0] * w + g[1 + i] for i, w in enumerate(weights))
    if zn is None:
        g_gen = torch.zeros_like(g_gen)
    log_q1, log_q2 = (scaled_log_softmax(z, temperature)[0] for z in (z1, z2))
    q1, q2 = log_q1.exp(), log_q2.exp()
    author = form == "author"
    n_views = 2 * z1.shape[0]
    n_inv = z1.shape[0] if author else n_views
    log_share = stats["log_columns"] + (0.0 if author else math.log(z1.shape[1]))
    if queued is not None:
        log_columns, rows = queued
        merged = torch.logaddexp(stats["log_columns"], log_columns.to(stats["log_columns"].dtype))
        log_share = log_share - stats["log_columns"] + merged + math.log(n_inv / (n_inv + rows))

    def view_grad(q, log_q, lse, q_other, log_q_other, cross_other, target_other, predicts, targets_other, prior):
        ds = q * ((2 * g_ereg * lse - g_gen) / n_views).unsqueeze(1)
        if prior:
            share = (log_q - log_share).exp()
            ds = ds - g_prior * (share - q * share.sum(1, keepdim=True))
        inv = torch.zeros_like(q)
        if target_other is not None:
            if predicts:
                inv = target_other - q * target_other.sum(1, keepdim=True)
        else:
            if predicts:
                inv = inv + (q_other - q)
            if targets_other:
                inv = inv + q * (log_q_other - cross_other.unsqueeze(1))
        return ds - g_inv / n_inv * inv

    t1, t2 = (None, None) if targets is None else (t.to(q1.dtype) for t in targets)
    ds1 = view_grad(q1, log_q1, stats["lse1"], q2, log_q2, stats["cross2"], t2, True, not author, True)
    ds2 = view_grad(q2, log_q2, stats["lse2"], q1, log_q1, stats["cross1"], t1, not author, True, not author)
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
