"""The two forms of the objective (GEDILoss form=): "author" is the GEDI author's generative-free loss,
exactly, against an independent float64 reading of its formula; both forms' analytic gradients match
autograd; the author's form keeps the log-domain prior where its linear form overflows."""
from __future__ import annotations

import pytest
import torch

from gedi_fast import GEDILoss, reference

BETA = 0.1
SHAPES = [(1, 3), (7, 11), (33, 5), (64, 2048)]  # B = 1, odd K, the author's K = 2048


def author_loss(h1: torch.Tensor, h2: torch.Tensor, beta: float, temperature: float = 0.1) -> torch.Tensor:
    """The author's code read literally: softmax of the tempered head outputs, a one-way cross-entropy
    with view 2 the target (gradient kept), uniformity over view 1 summed over clusters, halves."""
    q1, q2 = torch.softmax(h1 / temperature, 1), torch.softmax(h2 / temperature, 1)
    inv = -(q2 * torch.log(q1)).sum(1).mean()
    uniformity = -torch.log(q1.mean(0)).sum()
    return 0.5 * uniformity + 0.5 * beta * inv


def head_outputs(batch: int, clusters: int, scale: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return tuple((torch.randn(batch, clusters, generator=generator, dtype=torch.float64) * scale).requires_grad_()
                 for _ in range(2))


@pytest.mark.parametrize("batch, clusters", SHAPES)
@pytest.mark.parametrize("scale", [0.5, 8.0])  # 8: logits / T spread over ~500, still finite in float64
def test_the_authors_form_is_the_authors_loss(batch, clusters, scale):
    h1, h2 = head_outputs(batch, clusters, scale, seed=batch * 1000 + clusters)
    ours = GEDILoss(temperature=0.1, form="author", gen_weight=0, inv_weight=0.5 * BETA, prior_weight=0.5,
                    energy_reg=0, backend="torch")(h1, h2)
    theirs = author_loss(h1, h2, BETA)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    # Absolute 1e-12: with logits / T spread over hundreds a gradient entry is a difference of O(1)
    # pieces (q / pbar), which float64 cancels to ~1e-14 in either reading.
    for mine, want in zip(torch.autograd.grad(ours, (h1, h2)), torch.autograd.grad(theirs, (h1, h2))):
        torch.testing.assert_close(mine, want, rtol=1e-12, atol=1e-12)


def test_the_forms_differ_and_the_symmetric_form_stays_the_default():
    h1, h2 = head_outputs(9, 6, 1.0, seed=5)
    default, symmetric, author = (GEDILoss(backend="torch", **kwargs) for kwargs in ({}, {"form": "symmetric"},
                                                                                     {"form": "author"}))
    assert default.form == "symmetric" and default(h1, h2).item() == symmetric(h1, h2).item()
    _, sym_terms = symmetric(h1, h2, return_terms=True)
    _, author_terms = author(h1, h2, return_terms=True)
    # Same rows, other reading: the prior is K (KL + log K) of view 1's pbar, inv one-way.
    q1 = torch.softmax(h1.detach() / 0.1, 1)
    kl = -torch.log(torch.tensor(6.0, dtype=torch.float64)) - torch.log(q1.mean(0)).mean()
    torch.testing.assert_close(author_terms["prior"], 6 * (kl + torch.log(torch.tensor(6.0, dtype=torch.float64))))
    assert abs(author_terms["inv"].item() - sym_terms["inv"].item()) > 1e-3
    for name in ("energy_reg", "energy_data"):  # both views' rows in both forms
        torch.testing.assert_close(author_terms[name], sym_terms[name])


def test_a_collapsed_batch_overflows_the_linear_form_but_not_ours():
    """One cluster's logit ahead by 200 in every row (float32): the linear uniformity takes log 0."""
    h1, h2 = (torch.zeros(16, 8) for _ in range(2))
    h1[:, 0] = h2[:, 0] = 200.0
    h1, h2 = h1.requires_grad_(), h2.requires_grad_()
    linear = author_loss(h1, h2, BETA)
    linear_grads = torch.autograd.grad(linear, (h1, h2))
    assert not linear.isfinite() and not all(g.isfinite().all() for g in linear_grads)  # log 0: inf, 0 x inf: NaN

    ours = GEDILoss(temperature=0.1, form="author", gen_weight=0, inv_weight=0.5 * BETA, prior_weight=0.5,
                    energy_reg=0, backend="torch")(h1, h2)
    grads = torch.autograd.grad(ours, (h1, h2))
    assert ours.isfinite() and all(g.isfinite().all() for g in grads)
    # The float64 log-domain value: pbar1 = (1, e^-2000, ...), so -sum log pbar = 7 * 2000.
    expected = GEDILoss(temperature=0.1, form="author", gen_weight=0, inv_weight=0.5 * BETA, prior_weight=0.5,
                        energy_reg=0, backend="torch")(h1.detach().double(), h2.detach().double())
    torch.testing.assert_close(ours.double(), expected, rtol=1e-6, atol=0)
    assert expected.item() > 0.5 * 7 * 2000 - 1


@pytest.mark.parametrize("form", reference.FORMS)
@pytest.mark.parametrize("assignment", reference.ASSIGNMENTS)
@pytest.mark.parametrize("queued", [False, True])
@pytest.mark.parametrize("batch, clusters", [(1, 3), (6, 7), (5, 64)])
def test_analytic_gradients_match_autograd_in_both_forms(form, assignment, queued, batch, clusters):
    """reference.gedi_gradients (what the fused backward evaluates) against autograd, queue included."""
    generator = torch.Generator().manual_seed(clusters + 10 * batch)
    z1, z2, zn = ((torch.randn(rows, clusters, generator=generator, dtype=torch.float64) * 3).requires_grad_()
                  for rows in (batch, batch, 4))
    queue = tuple(torch.randn(5, clusters, generator=generator, dtype=torch.float64) * 3 for _ in range(2))
    queue = queue if queued else None
    targets = reference.assignment_targets(z1, z2, assignment, 0.1, 3, queue=queue)
    temperature, weights = 0.4, [0.7, 1.3, 0.9, 0.05]
    stats = reference.gedi_statistics(z1, z2, zn, temperature, targets, form)
    sums = reference.batch_sums(stats, form)
    queued_columns = None if queue is None else reference.queue_columns(queue, temperature, form)
    if queued_columns is not None:
        sums = reference.with_queue(sums, *queued_columns)
    terms = reference.terms_from_sums(sums, form)
    terms["loss"] = reference.weighted_loss(terms, dict(zip(reference.TERM_NAMES, weights)))
    vector = torch.stack([terms[name] for name in reference.TERM_VECTOR[:5]])
    upstream = torch.tensor([1.0, 0.3, -0.2, 0.5, 0.1], dtype=torch.float64)
    want = torch.autograd.grad(vector, (z1, z2, zn), upstream)
    got = reference.gedi_gradients(upstream, z1.detach(), z2.detach(), zn.detach(), temperature, weights,
                                   targets, form, queued_columns)
    for have, expected in zip(got, want):
        torch.testing.assert_close(have, expected, rtol=1e-10, atol=1e-12)


def test_the_form_is_checked():
    with pytest.raises(ValueError, match="form must be one of"):
        GEDILoss(form="both")


def test_a_training_run_takes_the_form_from_its_config(tmp_path):
    from gedi_fast.train.config import TrainConfig
    from gedi_fast.train.trainer import GEDITrainer

    with pytest.raises(ValueError, match="form must be one of"):
        TrainConfig(form="one-way")
    trainer = GEDITrainer(TrainConfig(dataset="blobs", form="author", steps=2, batch_size=16, hidden=8,
                                      sgld={"steps": 1, "buffer_size": 32}), tmp_path)
    assert trainer.loss_fn.form == "author" and TrainConfig().form == "symmetric"
    trainer.train()
    assert trainer.history[-1]["step"] == 2
