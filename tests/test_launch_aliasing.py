"""Every launch gives each argument its kernel writes memory of its own.

torch.compile functionalizes a user kernel's written arguments into copies of their own, so two
arguments sharing memory would leave the result to whichever copy is written back last (with
aot_eager, possibly uninitialised). Which arguments a kernel writes is found here by running each
recorded launch under the interpreter on private copies of its arguments and seeing which change.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks import sm90
from gedi_fast.kernels import gedi_terms, sinkhorn
from gedi_fast.ops import ASSIGNMENTS

pytestmark = pytest.mark.interpreter

PROBLEMS = [(5, 7), (1, 2), (3, 11)]


def _memory(t: torch.Tensor) -> tuple[int, int, int] | None:
    """(storage, first byte, end byte) of t's elements, None for an empty tensor (no memory)."""
    if t.numel() == 0:
        return None
    start = t.storage_offset() * t.element_size()
    extent = sum((n - 1) * s for n, s in zip(t.shape, t.stride())) + 1
    return t.untyped_storage().data_ptr(), start, start + extent * t.element_size()


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    ma, mb = _memory(a), _memory(b)
    return ma is not None and mb is not None and ma[0] == mb[0] and ma[1] < mb[2] and mb[1] < ma[2]


def written_arguments(launch: sm90.Launch) -> set[int]:
    """Positions of the tensor arguments the kernel wrote, run on private copies of every argument."""
    copies, before = [], {}
    for i, arg in enumerate(launch.args):
        if isinstance(arg, torch.Tensor):
            copy = torch.empty_strided(arg.shape, arg.stride(), dtype=arg.dtype)
            copy.copy_(arg if arg.dtype != torch.float32 else torch.randn(arg.shape).to(arg.dtype))
            before[i] = copy.clone()
            arg = copy
        copies.append(arg)
    launch.kernel[launch.grid](*copies, **launch.kwargs)
    return {i for i, old in before.items() if not torch.equal(old.view(torch.uint8), copies[i].view(torch.uint8))}


def assert_written_arguments_are_private(launches: list[sm90.Launch]) -> None:
    for launch in launches:
        written = written_arguments(launch)
        assert written, f"{launch.kernel.__name__} wrote nothing: the probe is broken"
        names = launch.kernel.arg_names
        for w in written:
            for j, other in enumerate(launch.args):
                if j != w and isinstance(other, torch.Tensor):
                    assert not _overlap(launch.args[w], other), (
                        f"{launch.label}: {launch.kernel.__name__} writes {names[w]}, which shares memory with {names[j]}")


@pytest.mark.parametrize("batch,clusters", PROBLEMS)
@pytest.mark.parametrize("samples", [0, 4])
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
@pytest.mark.parametrize("distributed", [False, True])
@pytest.mark.parametrize("schedule", ["single_chunk", "chunked_with_combine"])
def test_gedi_terms_launches(monkeypatch, batch, clusters, samples, assignment, distributed, schedule):
    if schedule == "chunked_with_combine":
        monkeypatch.setattr(gedi_terms, "SINGLE_CHUNK_MAX", 2)
        monkeypatch.setattr(gedi_terms, "CHUNK_COLUMNS", 4)
        monkeypatch.setattr(gedi_terms, "COMBINE_IN_FINALIZE_MAX", 0)
    launches = sm90.gedi_launches(batch, clusters, torch.float32, assignment, samples, distributed, device="cpu")
    assert_written_arguments_are_private(launches)


@pytest.mark.parametrize("form, queued_rows", [("author", 0), ("symmetric", 3), ("author", 3)])
@pytest.mark.parametrize("assignment", ASSIGNMENTS)
@pytest.mark.parametrize("distributed", [False, True])
@pytest.mark.parametrize("schedule", ["single_chunk", "chunked_with_combine"])
def test_gedi_terms_launches_of_the_authors_form_and_with_a_queue(monkeypatch, form, queued_rows, assignment,
                                                                    distributed, schedule):
    if schedule == "chunked_with_combine":
        monkeypatch.setattr(gedi_terms, "SINGLE_CHUNK_MAX", 2)
        monkeypatch.setattr(gedi_terms, "CHUNK_COLUMNS", 4)
        monkeypatch.setattr(gedi_terms, "COMBINE_IN_FINALIZE_MAX", 0)
    launches = sm90.gedi_launches(5, 7, torch.float32, assignment, 4, distributed, device="cpu", form=form,
                                  queued_rows=queued_rows)
    assert_written_arguments_are_private(launches)


@pytest.mark.parametrize("batch,clusters", PROBLEMS)
@pytest.mark.parametrize("schedule", ["single_launch", "multi_pass", "chunked"])
def test_sinkhorn_launches(monkeypatch, batch, clusters, schedule):
    if schedule == "chunked":
        monkeypatch.setattr(sinkhorn, "_WHOLE_ROW_MAX_COLS", 4)
        monkeypatch.setattr(sinkhorn, "_CHUNK_COLS", 4)
    launches = sm90.sinkhorn_launches(batch, clusters, torch.float16, schedule != "single_launch", device="cpu")
    assert_written_arguments_are_private(launches)


def test_the_probe_sees_a_shared_written_argument():
    """The check itself can fail: the forward as it was, with stats passed for the empty lse_n too."""
    launches = sm90.gedi_launches(5, 7, torch.float32, "softmax", 0, False, device="cpu")
    fwd = launches[0]
    names = fwd.kernel.arg_names
    args = list(fwd.args)
    args[names.index("lse_n")] = args[names.index("stats")]
    with pytest.raises(AssertionError, match="shares memory"):
        assert_written_arguments_are_private([sm90.Launch(fwd.label, fwd.kernel, fwd.grid, tuple(args), fwd.kwargs)])
