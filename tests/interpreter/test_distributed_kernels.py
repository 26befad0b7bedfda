"""The Triton backend on two gloo ranks (interpreter, CPU): equal to the float64 reference on all rows.

One spawned pair of ranks runs every case; each inherits TRITON_INTERPRET=1 before importing triton.
The ranks hold different numbers of rows; the loss, terms and Sinkhorn assignments must be those of
one process on the concatenated rows, and each rank's gradient for its own rows, divided by the world
size, the single-process gradient (fp32 kernels against the float64 oracle, as in test_gedi_terms_kernel).
"""
from __future__ import annotations


import pytest
import torch

from gedi_fast import GEDILoss, sinkhorn_knopp
from gedi_fast.kernels import gedi_terms as fused
from gloo_ranks import WORLD, run_ranks

RTOL = 2e-5
SETTINGS = dict(temperature=0.5, gen_weight=0.7, inv_weight=1.3, prior_weight=0.9, energy_reg=0.01)
# name: (GEDILoss settings, clusters, view rows per rank, sample rows per rank, force the many-program paths)
LOSS_CASES = {
    "softmax": (SETTINGS, 7, (3, 5), (2, 4), False),
    "sinkhorn": ({**SETTINGS, "assignment": "sinkhorn", "sinkhorn_eps": 0.5}, 7, (4, 1), (3, 3), False),
    "chunked_many_programs": (SETTINGS, 37, (9, 4), (1, 2), True),
}


def _draw_cases() -> dict:
    gen = torch.Generator().manual_seed(20261202)

    def rows(counts, clusters, scale=3.0):
        return list(((torch.rand(sum(counts), clusters, generator=gen) * 2 - 1) * scale).split(counts))

    cases = {name: (settings, rows(views, k), rows(views, k), rows(samples, k), force)
             for name, (settings, k, views, samples, force) in LOSS_CASES.items()}
    cases["public_sinkhorn"] = rows((3, 5), 11, 1.0)
    return cases


def _loss_and_grads(settings: dict, z1, z2, zn, backend: str) -> tuple[dict, list[torch.Tensor]]:
    inputs = [t.clone().requires_grad_(True) for t in (z1, z2, zn)]
    loss, terms = GEDILoss(**settings, backend=backend)(*inputs, return_terms=True)
    loss.backward()
    return {"loss": loss.detach(), **terms}, [t.grad for t in inputs]


def _force_many_programs() -> None:
    """Column chunks, several programs and the separate combine kernel (test_gedi_terms_kernel's settings)."""
    fused.SINGLE_CHUNK_MAX, fused.CHUNK_COLUMNS, fused.CHUNK_ROWS, fused.COMBINE_IN_FINALIZE_MAX = 16, 16, 4, 0


def _rank_work(rank: int, cases: dict) -> dict:
    out = {}
    for name in LOSS_CASES:  # the forced case last: its settings stay for the rest of the process
        settings, z1, z2, zn, force = cases[name]
        if force:
            _force_many_programs()
        out[name] = _loss_and_grads(settings, z1[rank], z2[rank], zn[rank], "triton")
    out["public_sinkhorn"] = sinkhorn_knopp(cases["public_sinkhorn"][rank], 0.05, 3, backend="triton")
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    cases = _draw_cases()
    return cases, run_ranks(_rank_work, cases, tmp_path_factory.mktemp("distributed"))


@pytest.mark.parametrize("name", LOSS_CASES)
def test_triton_loss_and_gradients_equal_one_process_on_all_rows(run, name):
    cases, ranks = run
    settings, z1, z2, zn, _ = cases[name]
    whole = [torch.cat(t).double() for t in (z1, z2, zn)]
    want_values, want_grads = _loss_and_grads(settings, *whole, "torch")
    for rank, got in enumerate(ranks):
        values, grads = got[name]
        for term, value in want_values.items():
            torch.testing.assert_close(values[term].double(), value, rtol=RTOL, atol=RTOL, msg=f"{name} {term}")
            assert torch.equal(values[term], ranks[0][name][0][term]), f"{term} differs between ranks"
        for got, full, parts in zip(grads, want_grads, (z1, z2, zn)):
            want = full.split([t.shape[0] for t in parts])[rank]
            err = (got.double() / WORLD - want).abs().max().item()
            assert err <= RTOL * want.abs().max().item() + 1e-7, f"{name}: gradient error {err:.3g} on rank {rank}"


def test_triton_sinkhorn_equals_one_process_on_the_concatenated_batch(run):
    cases, ranks = run
    scores = cases["public_sinkhorn"]
    whole = sinkhorn_knopp(torch.cat(scores).double(), 0.05, 3, backend="torch")
    for rank, got in enumerate(ranks):
        want = whole.split([t.shape[0] for t in scores])[rank]
        torch.testing.assert_close(got["public_sinkhorn"].double(), want, atol=1e-5, rtol=0)
