"""Two gloo ranks on CPU: the distributed loss and Sinkhorn-Knopp equal one process on all ranks' rows,
on the reference backend (float64) and on the Triton kernels (float32, interpreter lane).

One spawned pair of ranks per backend runs every case (one start-up for the module). The parent draws
each case's inputs, the ranks take their own rows (batch sizes differ between them), and the parent
compares what each rank returns with one process on the concatenated rows, in float64: the same loss
and terms on every rank, and each rank's gradient for its own rows equal to world size x the
single-process one. The ranks of the interpreter lane inherit TRITON_INTERPRET=1 before importing triton.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from backends import LOSS_BACKENDS, REFERENCE
from gloo_ranks import WORLD, run_ranks

from gedi_fast import GEDILoss, reference, sinkhorn_knopp
from gedi_fast.kernels import gedi_terms as fused

K = 7
# How close each backend's ranks come to one float64 process: exact up to rounding on the reference,
# the float32 kernels' error on the Triton backend.
TOLERANCE = {"torch": dict(rtol=1e-11, atol=1e-13), "triton": dict(rtol=2e-5, atol=2e-5)}
INPUT_DTYPE = {"torch": torch.float64, "triton": torch.float32}
SETTINGS = dict(temperature=0.4, gen_weight=0.7, inv_weight=1.3, prior_weight=0.9, energy_reg=0.05)
# name: (GEDILoss settings, clusters, view rows per rank, sample rows per rank or None for no zn,
#        force the kernels' many-program paths (nothing to force on the reference))
LOSS_CASES = {
    "softmax": (SETTINGS, K, (3, 5), (2, 4), False),
    "softmax_one_row_no_samples": (SETTINGS, K, (1, 6), None, False),
    "sinkhorn": ({**SETTINGS, "assignment": "sinkhorn", "sinkhorn_eps": 0.3, "sinkhorn_iters": 4}, K, (4, 2), (3, 3),
                 False),
    "author": ({**SETTINGS, "form": "author"}, K, (3, 5), (2, 4), False),
    "author_sinkhorn": ({**SETTINGS, "form": "author", "assignment": "sinkhorn", "sinkhorn_eps": 0.3}, K, (4, 2),
                        None, False),
    "chunked_many_programs": (SETTINGS, 37, (9, 4), (1, 2), True),
}
# name: (GEDILoss settings, view rows per rank, queued rows per rank): a queue on each rank (rank 1's
# empty, as after resuming on more ranks), against one process whose queue holds every rank's rows.
QUEUE_CASES = {
    "queue_symmetric_sinkhorn": ({**SETTINGS, "assignment": "sinkhorn", "sinkhorn_eps": 0.3}, (3, 5), (6, 0)),
    "queue_author": ({**SETTINGS, "form": "author"}, (4, 2), (3, 2)),
}
# name: (rows per rank, score scale, eps, iters); "huge" overflows SwAV's exp(scores / eps)
SINKHORN_CASES = {"iters1": ((3, 5), 1.0, 0.05, 1), "iters3": ((3, 5), 1.0, 0.05, 3), "huge": ((6, 1), 1e3, 0.01, 3)}
DIFFERENTIABLE = ("loss", *reference.TERM_NAMES)


def _draw_cases(backend: str) -> dict:
    gen = torch.Generator().manual_seed(20261201)
    dtype = INPUT_DTYPE[backend]

    def rows(counts: tuple[int, ...], clusters: int = K, scale: float = 2.0) -> list[torch.Tensor]:
        return list((torch.randn(sum(counts), clusters, generator=gen, dtype=torch.float64) * scale).to(dtype)
                    .split(counts))

    cases = {"backend": backend, "loss": {}, "sinkhorn": {}, "queue": {}}
    for name, (settings, clusters, batches, samples, _) in LOSS_CASES.items():
        cases["loss"][name] = ({**settings, "backend": backend}, rows(batches, clusters), rows(batches, clusters),
                               None if samples is None else rows(samples, clusters))
    for name, (settings, batches, queued) in QUEUE_CASES.items():
        cases["queue"][name] = ({**settings, "backend": backend}, rows(batches), rows(batches), rows(queued),
                                rows(queued))
    for name, (batches, scale, eps, iters) in SINKHORN_CASES.items():
        cases["sinkhorn"][name] = (rows(batches, K, scale), eps, iters)
    cases["ddp"] = ([torch.randn(n, 5, generator=gen, dtype=torch.float64) for n in (3, 5)],
                    [torch.randn(n, 5, generator=gen, dtype=torch.float64) for n in (2, 1)])
    return cases


def _force_many_programs() -> None:
    """Column chunks, several programs and the separate combine kernel (test_gedi_terms_kernel's settings)."""
    fused.SINGLE_CHUNK_MAX, fused.CHUNK_COLUMNS, fused.CHUNK_ROWS, fused.COMBINE_IN_FINALIZE_MAX = 16, 16, 4, 0


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
    GEDILoss(**SETTINGS, backend="torch")(z[:rows], z[rows:2 * rows], z[2 * rows:]).backward()
    return [p.grad for p in model.parameters()]


def _queued_loss(settings: dict, queued1: torch.Tensor, queued2: torch.Tensor) -> GEDILoss:
    """A GEDILoss whose queue holds these rows, filled directly (a loss call would be a collective)."""
    loss = GEDILoss(**settings, queue_size=max(len(queued1), 1))
    if len(queued1):
        loss.queue.push(queued1, queued2)
    return loss


def _rank_work(rank: int, cases: dict) -> dict:
    backend = cases["backend"]
    both = dist.new_group([0, 1])
    solo = [dist.new_group([r]) for r in range(WORLD)][rank]  # every rank joins every new_group call
    out = {"loss": {}, "sinkhorn": {}, "world1": {}, "queue": {}}
    for name, (settings, z1, z2, queued1, queued2) in cases["queue"].items():
        out["queue"][name] = _loss_and_grads(_queued_loss(settings, queued1[rank], queued2[rank]), z1[rank], z2[rank],
                                             None)
    for name, (settings, z1, z2, zn) in cases["loss"].items():  # the forced case last: its settings stay
        if LOSS_CASES[name][4] and backend == "triton":
            _force_many_programs()
        mine = (z1[rank], z2[rank], None if zn is None else zn[rank])
        out["loss"][name] = _loss_and_grads(GEDILoss(**settings), *mine)
        out["world1"][name] = (_loss_and_grads(GEDILoss(**settings, process_group=solo), *mine),
                               _loss_and_grads(GEDILoss(**settings, distributed=False), *mine))
    for name, (scores, eps, iters) in cases["sinkhorn"].items():
        out["sinkhorn"][name] = (sinkhorn_knopp(scores[rank], eps, iters, backend=backend, process_group=both),
                                 sinkhorn_knopp(scores[rank], eps, iters, backend=backend, distributed=True),
                                 sinkhorn_knopp(scores[rank], eps, iters, backend=backend, process_group=solo))
    if backend == "torch":
        xs, xn = cases["ddp"]
        out["ddp"] = _ddp_grads(xs[rank], xn[rank], torch.nn.parallel.DistributedDataParallel)
        try:
            GEDILoss(distributed=False, process_group=both)
        except ValueError as error:
            out["group_without_distributed"] = str(error)
    return out


@pytest.fixture(scope="module", params=LOSS_BACKENDS)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    """(the cases, what each rank returned) for one backend."""
    cases = _draw_cases(request.param)
    return cases, run_ranks(_rank_work, cases, tmp_path_factory.mktemp(f"distributed-{request.param}"))


def _split(t: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    return list(t.split(counts))


def _one_process(settings: dict) -> GEDILoss:
    """The oracle: the reference backend in float64 (the ranks' inputs are upcast)."""
    return GEDILoss(**{**settings, "backend": "torch"})


@pytest.mark.parametrize("name", LOSS_CASES)
def test_loss_terms_and_gradients_equal_one_process_on_all_rows(run, name):
    cases, ranks = run
    tolerance = TOLERANCE[cases["backend"]]
    settings, z1, z2, zn = cases["loss"][name]
    whole = _loss_and_grads(_one_process(settings), *(None if t is None else torch.cat(t).double() for t in (z1, z2, zn)))
    counts = [[t.shape[0] for t in z1], [t.shape[0] for t in z2]] + ([] if zn is None else [[t.shape[0] for t in zn]])
    for rank, got in enumerate(ranks):
        result = got["loss"][name]
        assert set(result["values"]) == set(whole["values"])
        for term, value in whole["values"].items():
            torch.testing.assert_close(result["values"][term].double(), value, equal_nan=True, **tolerance,
                                       msg=f"{name} {term}")
            same = result["values"][term].nan_to_num(), ranks[0]["loss"][name]["values"][term].nan_to_num()
            assert torch.equal(*same), f"{name}: {term} differs between ranks"
        for term in DIFFERENTIABLE:
            for got_grad, full, rows in zip(result["grads"][term], whole["grads"][term], counts):
                torch.testing.assert_close(got_grad.double() / WORLD, _split(full, rows)[rank], **tolerance,
                                           msg=f"{name}: d {term} on rank {rank}")


@pytest.mark.parametrize("name", QUEUE_CASES)
def test_queues_on_every_rank_equal_one_process_holding_all_their_rows(run, name):
    cases, ranks = run
    tolerance = TOLERANCE[cases["backend"]]
    settings, z1, z2, queued1, queued2 = cases["queue"][name]
    oracle = _queued_loss({**settings, "backend": "torch"}, torch.cat(queued1).double(), torch.cat(queued2).double())
    whole = _loss_and_grads(oracle, torch.cat(z1).double(), torch.cat(z2).double(), None)
    counts = [t.shape[0] for t in z1]
    for rank, got in enumerate(ranks):
        result = got["queue"][name]
        for term, value in whole["values"].items():
            torch.testing.assert_close(result["values"][term].double(), value, equal_nan=True, **tolerance,
                                       msg=f"{name} {term}")
        for term in DIFFERENTIABLE:
            for got_grad, full in zip(result["grads"][term], whole["grads"][term]):
                torch.testing.assert_close(got_grad.double() / WORLD, _split(full, counts)[rank], **tolerance,
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
        want = _one_process(settings)(z1[rank].double(), z2[rank].double(), zn[rank].double())
        torch.testing.assert_close(got["world1"]["softmax"][1]["values"]["loss"].double(), want.detach(),
                                   **TOLERANCE[cases["backend"]])
        assert (got["loss"]["softmax"]["values"]["loss"] - want).abs() > 1e-3  # the ranks really were coupled


@pytest.mark.parametrize("name", SINKHORN_CASES)
def test_sinkhorn_equals_one_process_on_the_concatenated_batch(run, name):
    cases, ranks = run
    backend = cases["backend"]
    scores, eps, iters = cases["sinkhorn"][name]
    whole = sinkhorn_knopp(torch.cat(scores).double(), eps, iters, backend="torch")
    rows = [t.shape[0] for t in scores]
    for rank, got in enumerate(ranks):
        explicit, default_group, alone = got["sinkhorn"][name]
        torch.testing.assert_close(explicit.double(), _split(whole, rows)[rank], **TOLERANCE[backend])
        assert torch.equal(default_group, explicit)
        assert torch.equal(alone, sinkhorn_knopp(scores[rank], eps, iters, backend=backend))


@pytest.mark.parametrize("run", [REFERENCE], indirect=True)
def test_ddp_parameter_gradients_equal_single_process_large_batch(run):
    cases, ranks = run
    xs, xn = cases["ddp"]
    want = _ddp_grads(torch.cat(xs), torch.cat(xn), lambda module: module)
    for got in ranks:
        for got_grad, want_grad in zip(got["ddp"], want):
            torch.testing.assert_close(got_grad, want_grad, **TOLERANCE["torch"])


@pytest.mark.parametrize("run", [REFERENCE], indirect=True)
def test_process_group_with_distributed_false_is_an_error(run):
    assert all("distributed=False" in got["group_without_distributed"] for got in run[1])


def test_without_a_process_group_every_setting_is_single_process(gen):
    assert not dist.is_initialized()
    z1, z2, zn = (torch.randn(n, K, generator=gen, dtype=torch.float64) for n in (4, 4, 3))
    want = GEDILoss(**SETTINGS, backend="torch", distributed=False)(z1, z2, zn)
    for distributed in ("auto", True):
        assert torch.equal(GEDILoss(**SETTINGS, backend="torch", distributed=distributed)(z1, z2, zn), want)
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
