"""The queue of past logits (GEDILoss queue_size): a queued loss is the loss on the concatenated batch
for what the queue feeds (the prior's column means, the Sinkhorn targets; the prior's gradient at the
batch's scale) and the batch's own loss for the rest; the ring keeps the newest rows; checkpoints and
rollbacks carry it; under DDP it is global."""
from __future__ import annotations

import pytest
import torch
from gloo_ranks import WORLD, run_ranks

from gedi_fast import GEDILoss, reference
from gedi_fast.ops import ASSIGNMENTS
from gedi_fast.queue import LogitQueue
from gedi_fast.train.recovery import Recovery
from gedi_fast.train.trainer import GEDITrainer, TrainConfig

T = 0.3
SETTINGS = dict(temperature=T, gen_weight=0.7, inv_weight=1.3, prior_weight=0.9, energy_reg=0.05, sinkhorn_eps=0.2,
                sinkhorn_iters=4, backend="torch")


def _logits(rows: int, clusters: int, scale: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.randn(rows, clusters, generator=generator, dtype=torch.float64) * scale).requires_grad_()


def _filled(loss: GEDILoss, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> GEDILoss:
    for past1, past2 in batches:
        loss(past1, past2)
    return loss


@pytest.mark.parametrize("form", reference.FORMS)
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
@pytest.mark.parametrize("clusters, batch, past, size, scale", [
    (7, 1, [3, 2], 5, 1.0),     # B = 1, queue not yet full
    (7, 5, [4, 4, 4], 6, 2.0),  # wrapped ring
    (13, 3, [9], 4, 40.0),      # huge logits; a past batch larger than the queue
])
def test_queued_loss_equals_the_loss_on_the_concatenated_batch(form, assignment, clusters, batch, past, size, scale):
    generator = torch.Generator().manual_seed(clusters * 100 + batch)
    history = [(_logits(n, clusters, scale, generator).detach(), _logits(n, clusters, scale, generator).detach())
               for n in past]
    loss = _filled(GEDILoss(assignment=assignment, queue_size=size, form=form, **SETTINGS), history)
    queued1, queued2 = (torch.cat([h[view] for h in history])[-size:] for view in (0, 1))
    z1, z2, zn = (_logits(rows, clusters, scale, generator) for rows in (batch, batch, 4))
    _, terms = loss(z1, z2, zn, return_terms=True)

    c1, c2 = torch.cat([queued1, z1]), torch.cat([queued2, z2])
    concatenated = reference.gedi_terms(c1, c2, zn, T, assignment, SETTINGS["sinkhorn_eps"], SETTINGS["sinkhorn_iters"],
                                        form=form)
    targets = reference.assignment_targets(c1, c2, assignment, SETTINGS["sinkhorn_eps"], SETTINGS["sinkhorn_iters"])
    targets = None if targets is None else tuple(t[-batch:] for t in targets)
    own = reference.terms_from_statistics(reference.gedi_statistics(z1, z2, zn, T, targets, form), form)

    torch.testing.assert_close(terms["prior"], concatenated["prior"], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(terms["cluster_entropy"], concatenated["cluster_entropy"], rtol=1e-12, atol=1e-12)
    for name in ("gen", "inv", "energy_reg"):
        torch.testing.assert_close(terms[name], own[name], rtol=1e-12, atol=1e-12, msg=name)
    # The gradient is the concatenated batch's at the batch's own scale (docs/DESIGN.md, "The queue").
    scale = (len(queued1) + batch) / batch  # the prior's rows per view: the same ratio in both forms
    want = torch.autograd.grad(concatenated["prior"], (z1, z2), materialize_grads=True)  # author: none for z2
    have = torch.autograd.grad(terms["prior"], (z1, z2), retain_graph=True, materialize_grads=True)
    for have, expected in zip(have, want):
        torch.testing.assert_close(have, scale * expected, rtol=1e-10, atol=1e-12)
    assert loss.queue.filled == size and torch.equal(loss.queue.rows(z1)[0][-batch:], z1.detach())


def test_an_empty_queue_is_the_plain_loss_and_eval_mode_does_not_fill_it():
    generator = torch.Generator().manual_seed(3)
    z1, z2 = (_logits(4, 5, 1.0, generator) for _ in range(2))
    queued, plain = GEDILoss(queue_size=8, **SETTINGS).eval(), GEDILoss(**SETTINGS)
    assert queued(z1, z2).item() == plain(z1, z2).item()
    assert queued.queue.filled == 0
    queued.train()(z1, z2)
    assert queued.queue.filled == 4


def test_the_ring_keeps_the_newest_rows_in_order():
    queue = LogitQueue(5)
    pushed = [torch.arange(n * 2, dtype=torch.float32).reshape(n, 2) + 100 * i for i, n in enumerate((2, 3, 1, 7, 2))]
    for i, rows in enumerate(pushed):
        queue.push(rows, -rows)
        expected = torch.cat(pushed[:i + 1])[-5:]
        first, second = queue.rows(rows)
        assert torch.equal(first, expected) and torch.equal(second, -expected)
    copy = LogitQueue(5)
    copy.load_state_dict(queue.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(copy.rows(pushed[0]), queue.rows(pushed[0])))


def test_the_module_state_dict_carries_the_queue():
    generator = torch.Generator().manual_seed(5)
    loss = _filled(GEDILoss(queue_size=6, **SETTINGS), [(_logits(4, 5, 1.0, generator).detach(),) * 2] * 2)
    copy = GEDILoss(queue_size=6, **SETTINGS)
    copy.load_state_dict(loss.state_dict())
    like = torch.zeros(1, 5)
    assert copy.queue.filled == 6 and all(torch.equal(a, b) for a, b in zip(copy.queue.rows(like), loss.queue.rows(like)))
    with pytest.raises(ValueError, match="queue_size"):
        GEDILoss(**SETTINGS).load_state_dict(loss.state_dict())


@pytest.mark.parametrize("make, error", [
    (lambda: GEDILoss(queue_size=-1), ValueError),
    (lambda: GEDILoss(queue_size=2.5), TypeError),
    (lambda: TrainConfig(queue_size=-3), ValueError),
    (lambda: TrainConfig(queue_size=8, compile_step=True), ValueError),
    (lambda: LogitQueue(0), ValueError),
])
def test_bad_queue_settings_name_the_argument(make, error):
    with pytest.raises(error, match="queue_size"):
        make()


def test_a_queue_of_other_clusters_is_refused():
    queue = LogitQueue(4)
    queue.push(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="queue_size.*3 clusters"):
        queue.push(torch.zeros(2, 5), torch.zeros(2, 5))
    other = LogitQueue(6)
    with pytest.raises(ValueError, match="queue_size"):
        other.load_state_dict(queue.state_dict())


QUEUED_RUN = dict(steps=6, batch_size=16, hidden=32, assignment="sinkhorn", queue_size=40, log_every=2,
                  checkpoint_every=100, sgld=dict(steps=2, buffer_size=64), sgld_samples=8)


def test_resuming_a_queued_run_is_exact(tmp_path):
    straight = GEDITrainer(TrainConfig(**QUEUED_RUN), tmp_path / "straight")
    straight.train()
    broken = GEDITrainer(TrainConfig(**QUEUED_RUN), tmp_path / "broken")
    broken.train(until=3)  # 48 rows pushed into a queue of 40: wrapped before the checkpoint
    resumed = GEDITrainer.resume(tmp_path / "broken")
    assert resumed.loss_fn.queue.filled == 40
    resumed.train()
    for name, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[name]), name
    assert torch.equal(straight.loss_fn.queue.logits, resumed.loss_fn.queue.logits)
    assert straight.state_dict()["queues"][0]["filled"] == 40


def test_a_rollback_restores_the_queue(tmp_path):
    trainer = GEDITrainer(TrainConfig(**QUEUED_RUN), tmp_path)
    trainer.train(until=2)
    recovery = Recovery(trainer, max_retries=1)
    kept = trainer.loss_fn.queue.logits.clone()
    trainer.train(until=4)
    assert not torch.equal(trainer.loss_fn.queue.logits, kept)
    with pytest.warns(RuntimeWarning, match="step 4: test; rolled back to step 2"):
        assert recovery.rolled_back("test")
    assert torch.equal(trainer.loss_fn.queue.logits, kept) and trainer.loss_fn.queue.filled == 32


# --- DDP ----------------------------------------------------------------------------------------
K = 7
ROWS = (3, 5)         # batch rows per rank
QUEUED = (6, 0)       # queued rows per rank: rank 1's queue is empty (as after resuming on more ranks)
DDP_SETTINGS = {**SETTINGS, "assignment": "sinkhorn"}


def _rank_work(rank: int, cases: dict) -> dict:
    loss = GEDILoss(queue_size=8, **DDP_SETTINGS)
    past = cases["past"][rank]
    if len(past[0]):  # filled directly: a loss call would be a collective that rank 1 does not make
        loss.queue.push(*past)
    z1, z2 = (cases[view][rank].clone().requires_grad_() for view in ("z1", "z2"))
    value, terms = loss(z1, z2, return_terms=True)
    grads = torch.autograd.grad(value, (z1, z2))
    return {"loss": value.detach(), "prior": terms["prior"].detach(), "grads": grads}


def test_under_ddp_the_queue_is_global(tmp_path):
    generator = torch.Generator().manual_seed(11)
    cases = {view: [_logits(n, K, 2.0, generator).detach() for n in ROWS] for view in ("z1", "z2")}
    cases["past"] = [tuple(_logits(n, K, 2.0, generator).detach() for _ in range(2)) for n in QUEUED]
    ranks = run_ranks(_rank_work, cases, tmp_path)

    one = GEDILoss(queue_size=sum(QUEUED), **DDP_SETTINGS)
    one(*(torch.cat([past[view] for past in cases["past"]]) for view in (0, 1)))
    z1, z2 = (torch.cat(cases[view]).requires_grad_() for view in ("z1", "z2"))
    value, terms = one(z1, z2, return_terms=True)
    grads = [g.split(ROWS) for g in torch.autograd.grad(value, (z1, z2))]
    for rank, got in enumerate(ranks):
        torch.testing.assert_close(got["loss"], value.detach(), rtol=1e-11, atol=1e-13)
        torch.testing.assert_close(got["prior"], terms["prior"], rtol=1e-11, atol=1e-13)
        for have, want in zip(got["grads"], (grads[0][rank], grads[1][rank])):
            torch.testing.assert_close(have, WORLD * want, rtol=1e-10, atol=1e-12)
