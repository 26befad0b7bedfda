"""The sm_90 compile lane: every Triton kernel built for Hopper at the configurations its launcher
picks for the benchmark sizes (docs/DESIGN.md) in fp32/bf16/fp16 (benchmarks/sm90.py), on a machine without a GPU.

It fails on a build error, on a spill, and when the source Inductor regenerates for a kernel under
torch.compile does not import or build; benchmarks/SM90.md is the table of the same builds.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest

pytest.importorskip("triton.backends.nvidia")
import triton  # noqa: E402

from benchmarks import sm90  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
ROWS = sm90.distinct_builds(sm90.design_launches())
KERNELS = {row.spec.kernel.__name__: row for row in reversed(ROWS)}  # a kernel's first row


@pytest.fixture(scope="module")
def resources() -> dict[str, sm90.Resources]:
    return dict(zip((row.name for row in ROWS), sm90.build_all(ROWS)))


def test_every_launcher_configuration_is_covered():
    names = {row.spec.kernel.__name__ for row in ROWS}
    assert names == {"_fwd_rows_kernel", "_combine_kernel", "_finalize_kernel", "_bwd_rows_kernel",
                     "_single_launch_kernel", "_row_pass_kernel"}
    logits = {t for row in ROWS for n, t in row.spec.signature.items() if n in ("z1", "s_ptr")}
    assert logits == {"*fp32", "*bf16", "*fp16"}
    assert len({row.name for row in ROWS}) == len(ROWS)


@pytest.mark.parametrize("name", [row.name for row in ROWS])
def test_build_has_no_spills(resources, name):
    res = resources[name]
    assert not res.spills, f"{name}: {res.spill_bytes} B of spill stores and loads per thread"
    assert res.fp64_ops == 0
    assert res.registers <= res.register_cap
    assert res.blocks_per_sm()[0] >= 1


def test_only_the_argued_builds_sit_at_the_register_cap(resources):
    at_cap = {name for name, res in resources.items() if res.at_register_cap}
    argued = {row.name for row in ROWS if row.spec.kernel.__name__ == "_bwd_rows_kernel"
              and row.spec.constexpr_values()["BLOCK_K"] == 4096}
    assert at_cap <= argued, f"new builds at the register cap: {sorted(at_cap - argued)} (see benchmarks/SM90.md)"


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_inductor_regenerated_source_imports_and_builds(kernel):
    row = KERNELS[kernel]
    regenerated = sm90.import_inductor_source(row.spec.kernel)
    assert isinstance(regenerated, triton.JITFunction)
    res = sm90.build(sm90.specialise(row.launch, regenerated))
    assert not res.spills


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_kernels_build_with_float_arguments_typed_fp64(kernel):
    # Under torch.compile on a GPU Inductor types a Python float argument fp64 where Triton's own launch
    # types it fp32 (seen on the H200 with torch 2.11): fp32 loop-carried values must stay fp32 then.
    row = KERNELS[kernel]
    spec = sm90.specialise(row.launch, sm90.import_inductor_source(row.spec.kernel))
    floats = {name: "fp64" for name, kind in spec.signature.items() if kind == "fp32"}
    assert floats or kernel == "_combine_kernel"
    res = sm90.build(dataclasses.replace(spec, signature={**spec.signature, **floats}))
    assert not res.spills
    assert res.fp64_ops == 0, f"{kernel}: {res.fp64_ops} fp64 instructions once its float arguments are fp64"


def test_spills_are_detected():
    row = next(r for r in ROWS if r.spec.kernel.__name__ == "_bwd_rows_kernel")
    starved = sm90.Specialisation(row.spec.kernel, row.spec.signature, row.spec.constexprs, row.spec.attrs,
                                  {**row.spec.options, "maxnreg": 24})
    assert sm90.build(starved).spills


@pytest.mark.parametrize("registers,warps,shared,blocks,limiter", [
    (24, 4, 0, 16, "warps"),  # 16 blocks of 4 warps fill the SM
    (64, 32, 0, 1, "registers"),  # 64 x 1024 threads is the whole register file
    (255, 8, 0, 1, "registers"),  # 256 per thread after rounding: 8 warps' worth
    (40, 4, 100 * 1024, 2, "shared"),
    (16, 1, 0, 32, "blocks"),
])
def test_occupancy_arithmetic(registers, warps, shared, blocks, limiter):
    assert sm90.Resources(registers, 0, 0, shared, warps).blocks_per_sm() == (blocks, limiter)


def test_register_cap_at_each_block_size():
    assert [sm90.Resources(1, 0, 0, 0, w).register_cap for w in (4, 8, 16, 32)] == [255, 255, 128, 64]


def test_committed_table_lists_every_current_build():
    """benchmarks/SM90.md is regenerated whenever a launcher's choice changes (its rows' configurations)."""
    table = (ROOT / "benchmarks" / "SM90.md").read_text()
    listed = set()
    for line in table.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 5 and re.match(r"(gedi_terms|sinkhorn)\._", cells[1]):
            listed.add((cells[1].split(".", 1)[1], cells[2], cells[3], int(cells[4])))
    current = {(row.spec.kernel.__name__, sm90._constexpr_text(row.spec),
                next((t for n, t in row.spec.signature.items() if n in ("z1", "s_ptr")), "-"), row.spec.num_warps)
               for row in ROWS}
    assert current == listed, "regenerate: python -m benchmarks.sm90 --markdown benchmarks/SM90.md"
