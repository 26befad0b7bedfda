"""Two gloo ranks on CPU: the distributed loss and Sinkhorn-Knopp equal one process on all ranks' rows.

One spawned pair of ranks runs every case (one start-up for the module). The parent draws each case's
inputs, the ranks take their own rows (batch sizes differ between them), and the parent compares
what each rank returns with one process on the concatenated rows, in float64: the same loss and terms
on every rank, and each rank's gradient for its own rows equal to world size x the single-process one.
"""
from __future__ import annotations


import pytest
import torch
import torch.distributed as dist

from gedi_fast import GEDILoss, reference, sinkhorn_knopp
from gloo_ranks import WORLD, run_ranks

K = 7
TIGHT = dict(rtol=1e-11, atol=1e-13)
SETTINGS = dict(temperature=0.4, gen_weight=0.7, inv_weight=1.3, prior_weight=0.9, energy_reg=0.05, backend="torch")
# name: (GEDILoss settings, view rows per rank, sample rows per rank or None for no zn)
LOSS_CASES = {
    "softmax": (SETTINGS, (3, 5), (2, 4)),
    "softmax_one_row_no_samples": (SETTINGS, (1, 6), None),
    "sinkhorn": ({**SETTINGS, "assignment": "sinkhorn", "sinkhorn_eps": 0.3, "sinkhorn_iters": 4}, (4, 2), (3, 3)),
}
# name: (rows per rank, score scale, eps, iters); "huge" overflows SwAV's exp(scores / eps)
SINKHORN_CASES = {"iters1": ((3, 5), 1.0, 0.05, 1), "iters3": ((3, 5), 1.0, 0.05, 3), "huge": ((6, 1), 1e3, 0.01, 3)}
DIFFERENTIABLE = ("loss", *reference.TERM_NAMES)


def _rows(gen: torch.Generator, counts: tuple[int, ...], scale: float = 2.0) -> list[torch.Tensor]:
    return list((torch.randn(sum(counts), K, generator=gen, dtype=torch.float64) * scale).split(counts))


def _draw_cases() -> dict:
    gen = torch.Generator().manual_seed(20261201)
    cases = {"loss": {}, "sinkhorn": {}}
    for name, (settings, batches, samples) in LOSS_CASES.items():
        cases["loss"][name] = (settings, _rows(gen, batches), _rows(gen, batches),
                               None if samples is None else _rows(gen, samples))
    for name, (batches, scale, eps, iters) in SINKHORN_CASES.items():
        cases["sinkhorn"][name] = (_rows(gen, batches, scale), eps, iters)
    cases["ddp"] = ([torch.randn(n, 5, generator=gen, dtype=torch.float64) for n in (3, 5)],
                    [torch.randn(n, 5, generator=gen, dtype=torch.float64) for n in (2, 1)])
    return cases


def _loss_and_grads(loss_fn: GEDILoss, z1: torch.Tensor, z2: torch.Tensor, zn: torch.Tensor | None) -> dict:
    """Loss, terms and, for each differentiable entry, its gradients for (z1, z2[, zn]).

    Zeros where an input is unused, or for the constant gen without samples.
    """
    inputs = [t.clone().requires_grad_(True) for t in (z1, z2) + (() if zn is None else (zn,))]
    loss, terms = loss_fn(*inputs[:2], inputs[2] if zn is not None else None, return_terms=True)
    values = {"loss": loss, **terms}
    grads = {}
    for name in DIFFERENTIABLE:
        got = [None] * len(inputs)
        if values[name].requires_grad:
            got = torch.autograd.grad(values[name], inputs, retain_graph=True, allow_unused=True)
        grads[name] = [torch.zeros_like(t) if g is None else g for g, t in zip(got, inputs)]
    return {"values": {k: v.detach() for k, v in values.items()}, "grads": grads}


def _ddp_grads(xs: torch.Tensor, xn: torch.Tensor, wrap) -> list[torch.Tensor]:
    """Parameter gradients of a seeded linear clusterer after one backward of the loss on (views, samples)."""
    torch.manual_seed(0)
    model = wrap(torch.nn.Linear(5, K).double())
    x = torch.cat([xs, xs.flip(1), xn])
    z = model(x)
    rows = xs.shape[0]
    GEDILoss(**SETTINGS)(z[:rows], z[rows:2 * rows], z[2 * rows:]).backward()
    return [p.grad for p in model.parameters()]


def _rank_work(rank: int, cases: dict) -> dict:
    both = dist.new_group([0, 1])
    solo = [dist.new_group([r]) for r in range(WORLD)][rank]  # every rank joins every new_group call
    out = {"loss": {}, "sinkhorn": {}, "world1": {}}
    for name, (settings, z1, z2, zn) in cases["loss"].items():
        mine = (z1[rank], z2[rank], None if zn is None else zn[rank])
        out["loss"][name] = _loss_and_grads(GEDILoss(**settings), *mine)
        out["world1"][name] = (_loss_and_grads(GEDILoss(**settings, process_group=solo), *mine),
                               _loss_and_grads(GEDILoss(**settings, distributed=False), *mine))
    for name, (scores, eps, iters) in cases["sinkhorn"].items():
        out["sinkhorn"][name] = (sinkhorn_knopp(scores[rank], eps, iters, process_group=both),
                                 sinkhorn_knopp(scores[rank], eps, iters, distributed=True),
                                 sinkhorn_knopp(scores[rank], eps, iters, process_group=solo))
    xs, xn = cases["ddp"]
    out["ddp"] = _ddp_grads(xs[rank], xn[rank], torch.nn.parallel.DistributedDataParallel)
    try:
        GEDILoss(distributed=False, process_group=both)
    except ValueError as error:
        out["group_without_distributed"] = str(error)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    """(the cases, what each rank returned)."""
    cases = _draw_cases()
    return cases, run_ranks(_rank_work, cases, tmp_path_factory.mktemp("distributed"))


def _split(t: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    return list(t.split(counts))


@pytest.mark.parametrize("name", LOSS_CASES)
def test_loss_terms_and_gradients_equal_one_process_on_all_rows(run, name):
    cases, ranks = run
    settings, z1, z2, zn = cases["loss"][name]
    whole = _loss_and_grads(GEDILoss(**settings), torch.cat(z1), torch.cat(z2), None if zn is None else torch.cat(zn))
    counts = [[t.shape[0] for t in z1], [t.shape[0] for t in z2]] + ([] if zn is None else [[t.shape[0] for t in zn]])
    for rank, got in enumerate(ranks):
        result = got["loss"][name]
        assert set(result["values"]) == set(whole["values"])
        for term, value in whole["values"].items():
            torch.testing.assert_close(result["values"][term], value, equal_nan=True, **TIGHT, msg=f"{name} {term}")
            same = result["values"][term].nan_to_num(), ranks[0]["loss"][name]["values"][term].nan_to_num()
            assert torch.equal(*same), f"{name}: {term} differs between ranks"
        for term in DIFFERENTIABLE:
            for got_grad, full, rows in zip(result["grads"][term], whole["grads"][term], counts):
                torch.testing.assert_close(got_grad / WORLD, _split(full, rows)[rank], **TIGHT,
                                           msg=f"{name}: d {term} on rank {rank}")


@pytest.mark.parametrize("name", LOSS_CASES)
def test_world_size_one_equals_no_process_group(run, name):
    for got in run[1]:
        alone, local = got["world1"][name]
        for term in local["values"]:
            assert torch.equal(alone["values"][term].nan_to_num(), local["values"][term].nan_to_num()), term
        for term in DIFFERENTIABLE:
            assert all(torch.equal(a, b) for a, b in zip(alone["grads"][term], local["grads"][term])), term


def test_distributed_false_keeps_each_rank_to_its_own_rows(run):
    cases, ranks = run
    settings, z1, z2, zn = cases["loss"]["softmax"]
    for rank, got in enumerate(ranks):
        want = GEDILoss(**settings)(z1[rank], z2[rank], zn[rank])
        torch.testing.assert_close(got["world1"]["softmax"][1]["values"]["loss"], want.detach(), **TIGHT)
        assert (got["loss"]["softmax"]["values"]["loss"] - want).abs() > 1e-3  # the ranks really were coupled


@pytest.mark.parametrize("name", SINKHORN_CASES)
def test_sinkhorn_equals_one_process_on_the_concatenated_batch(run, name):
    cases, ranks = run
    scores, eps, iters = cases["sinkhorn"][name]
    whole = sinkhorn_knopp(torch.cat(scores), eps, iters)
    rows = [t.shape[0] for t in scores]
    for rank, got in enumerate(ranks):
        explicit, default_group, alone = got["sinkhorn"][name]
        torch.testing.assert_close(explicit, _split(whole, rows)[rank], **TIGHT)
        torch.testing.assert_close(default_group, explicit, **TIGHT)
        assert torch.equal(alone, sinkhorn_knopp(scores[rank], eps, iters))


def test_ddp_parameter_gradients_equal_single_process_large_batch(run):
    cases, ranks = run
    xs, xn = cases["ddp"]
    want = _ddp_grads(torch.cat(xs), torch.cat(xn), lambda module: module)
    for got in ranks:
        for got_grad, want_grad in zip(got["ddp"], want):
            torch.testing.assert_close(got_grad, want_grad, **TIGHT)


def test_process_group_with_distributed_false_is_an_error(run):
    assert all("distributed=False" in got["group_without_distributed"] for got in run[1])


def test_without_a_process_group_every_setting_is_single_process(gen):
    assert not dist.is_initialized()
    z1, z2, zn = (torch.randn(n, K, generator=gen, dtype=torch.float64) for n in (4, 4, 3))
    want = GEDILoss(**SETTINGS, distributed=False)(z1, z2, zn)
    for distributed in ("auto", True):
        assert torch.equal(GEDILoss(**SETTINGS, distributed=distributed)(z1, z2, zn), want)
        assert torch.equal(sinkhorn_knopp(z1, distributed=distributed), sinkhorn_knopp(z1, distributed=False))


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(distributed="yes"), ValueError, "distributed must be 'auto', True or False"),
        (dict(distributed=1), ValueError, "distributed must be 'auto', True or False"),
        (dict(process_group="world"), TypeError, "process_group must be a torch.distributed.ProcessGroup"),
    ],
)
def test_bad_distributed_settings_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        GEDILoss(**kwargs)
    with pytest.raises(error, match=match):
        sinkhorn_knopp(torch.zeros(3, 2), **kwargs)
