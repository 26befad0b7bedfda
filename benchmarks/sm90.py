"""Every Triton kernel built ahead of time for sm_90 (H100/H200) on a machine without a GPU.

The launch sequences of `gedi_fast.kernels` run on meta tensors with a recording `wrap`, so each
kernel is built with exactly the signature, specialisations, constexprs and num_warps its launcher
picks for a size and dtype (triton's own binder makes them from the recorded arguments). Each
build's cubin gives registers, stack, local memory and static shared memory (cuobjdump), from which
the theoretical occupancy follows. Each kernel's source as Inductor regenerates it under
torch.compile (its transitive closure plus Inductor's common imports) is imported and built too.

`python -m benchmarks.sm90 --markdown FILE` writes the table (the CUDA C++ kernels' ptxas resource
usage included); tests/test_sm90_lane.py fails on a build error, an import error or any spill.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import math
import os
import pathlib
import re
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from benchmarks.sizes import LOGIT_SHAPES
from gedi_fast import reference
from gedi_fast.kernels import gedi_terms, sinkhorn

ROOT = pathlib.Path(__file__).resolve().parents[1]
HOPPER = GPUTarget("cuda", 90, 32)
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SAMPLES = 64  # the trainer's SGLD negatives per step
# sm_90 per-SM limits (CUDA occupancy calculator): registers, allocation unit per warp, warps,
# resident blocks, shared memory (228 KiB; a cubin's SHARED already counts the 1 KiB the driver
# reserves per block), and the most registers a thread may hold.
SM_REGISTERS = 65536
REGISTER_UNIT = 256
SM_WARPS = 64
SM_BLOCKS = 32
SM_SHARED = 228 * 1024
MAX_THREAD_REGISTERS = 255
RESOURCE_LINE = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
PTXAS_FUNCTION = re.compile(r"Compiling entry function '(\w+)' for 'sm_90a?'")
PTXAS_USAGE = re.compile(r"Used (\d+) registers")
PTXAS_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
# PTX arithmetic on fp64 operands (conversions, cvt.*, are not counted): a kernel meant to compute in fp32 has none.
PTX_FP64_ARITHMETIC = re.compile(r"^\s*(?:add|sub|mul|fma|div|max|min|neg|abs|sqrt|rcp|setp)(?:\.\w+)*\.f64\b", re.M)


@dataclass(frozen=True)
class Launch:
    """One kernel launch as a launcher issued it, under a label naming the problem it was issued for."""

    label: str
    kernel: triton.JITFunction
    grid: tuple
    args: tuple
    kwargs: dict = field(hash=False)


class _Recorder:
    """A launcher's `wrap` that records launches instead of running them."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.launches: list[Launch] = []

    def __call__(self, kernel: triton.JITFunction) -> "_Recorder._Bound":
        return _Recorder._Bound(self, kernel)

    class _Bound:
        def __init__(self, recorder: "_Recorder", kernel: triton.JITFunction) -> None:
            self.recorder, self.kernel = recorder, kernel

        def __getitem__(self, grid: tuple) -> Callable[..., None]:
            def launch(*args, **kwargs) -> None:
                self.recorder.launches.append(Launch(self.recorder.label, self.kernel, tuple(grid), args, kwargs))
            return launch


def _logits(rows: int, clusters: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    return torch.randn(rows, clusters, device=device).to(dtype)


def gedi_launches(batch: int, clusters: int, dtype: torch.dtype, assignment: str, samples: int,
                  distributed: bool, device: str = "meta", form: str = "symmetric",
                  queued_rows: int = 0) -> list[Launch]:
    """The forward and backward launches of the fused GEDI terms for one problem (on meta tensors
    by default; on real ones the launches can be replayed); `queued_rows` > 0 adds a queue's columns."""
    label = f"{batch}x{clusters} {str(dtype).removeprefix('torch.')} {assignment} M={samples}" + (
        " ddp" if distributed else "") + ("" if form == "symmetric" else f" {form}") + (
        f" Q={queued_rows}" if queued_rows else "")
    record = _Recorder(label)
    z1, z2 = _logits(batch, clusters, dtype, device), _logits(batch, clusters, dtype, device)
    zn = _logits(samples, clusters, dtype, device) if samples else None
    t1, t2 = (None, None)
    if assignment == "sinkhorn":
        t1, t2 = (torch.rand(batch, clusters, device=device) for _ in range(2))
    weights = [1.0, 1.0, 3.0, 0.1]
    queued_columns = torch.randn(clusters, device=device) if queued_rows else None
    _, stats, lse_n, columns = gedi_terms._forward(z1, z2, zn, t1, t2, 0.1, weights, form, queued_columns,
                                                   queued_rows, record)
    grad = torch.ones(len(reference.TERM_VECTOR), device=device)
    counts = torch.full((4,), float(2 * batch), device=device) if distributed else None
    gedi_terms._backward(grad, z1, z2, zn, t1, t2, stats, lse_n, columns, 0.1, weights, form, queued_rows, record,
                         counts)
    return record.launches


def sinkhorn_launches(batch: int, clusters: int, dtype: torch.dtype, distributed: bool,
                      device: str = "meta") -> list[Launch]:
    """The launches of one Sinkhorn-Knopp call (3 iterations); with the distributed hook, multi-pass."""
    record = _Recorder(f"{batch}x{clusters} {str(dtype).removeprefix('torch.')}" + (" ddp" if distributed else ""))
    hook = (lambda m, l: (m, l)) if distributed else None
    sinkhorn._run(_logits(batch, clusters, dtype, device), 0.05, 3, hook, record)
    return record.launches


def design_launches() -> Iterator[Launch]:
    """Every launch the launchers issue at the benchmark sizes (docs/DESIGN.md), in each logits dtype and variant."""
    for (batch, clusters) in LOGIT_SHAPES:
        for dtype in DTYPES:
            for distributed in (False, True):
                yield from sinkhorn_launches(batch, clusters, dtype, distributed)
                for assignment in reference.ASSIGNMENTS:
                    yield from gedi_launches(batch, clusters, dtype, assignment, SAMPLES, distributed)
            yield from gedi_launches(batch, clusters, dtype, "softmax", 0, False)
            # The author's form: its own column sums, finalize and backward, a subset of the symmetric
            # form's work per tile; built in fp32 and bf16, one process (under DDP only the backward's
            # count loads differ, code the symmetric distributed builds cover).
            if dtype != torch.float16:
                for assignment in reference.ASSIGNMENTS:
                    yield from gedi_launches(batch, clusters, dtype, assignment, SAMPLES, False, form="author")


@dataclass(frozen=True)
class Specialisation:
    """What triton compiles for a launch: signature, constexprs, attributes and options."""

    kernel: triton.JITFunction
    signature: dict
    constexprs: dict
    attrs: dict
    options: dict

    @property
    def key(self) -> tuple:
        return (self.kernel.__name__, self.kernel.fn.__module__, tuple(self.signature.items()),
                tuple(sorted(self.constexprs.items())), repr(sorted(self.attrs.items())),
                self.options["num_warps"], self.options["num_stages"])

    @property
    def num_warps(self) -> int:
        return self.options["num_warps"]

    def constexpr_values(self) -> dict[str, object]:
        names = list(self.signature)
        return {names[path[0]]: value for path, value in self.constexprs.items()}


@functools.cache
def _backend():
    return make_backend(HOPPER)


def specialise(launch: Launch, kernel: triton.JITFunction | None = None) -> Specialisation:
    """Triton's own binding of the recorded arguments, as JITFunction.run does before compiling."""
    kernel = kernel or launch.kernel
    backend = _backend()
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*launch.args, **launch.kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, launch.kwargs, bound, specialization, options)
    return Specialisation(kernel, signature, constexprs, attrs, options.__dict__)


@dataclass(frozen=True)
class Resources:
    """Per-thread and per-block resources of one cubin, and the occupancy they allow on sm_90."""

    registers: int
    stack_bytes: int
    spill_bytes: int  # spill stores + spill loads, per thread (ptxas)
    shared_bytes: int
    num_warps: int
    fp64_ops: int = 0  # fp64 arithmetic instructions in the PTX

    @property
    def spills(self) -> bool:
        return self.spill_bytes > 0

    @property
    def register_cap(self) -> int:
        """The most registers ptxas may give each thread at this block size (it spills beyond)."""
        per_thread = SM_REGISTERS // (self.num_warps * 32)
        return min(MAX_THREAD_REGISTERS, per_thread - per_thread % 8)

    @property
    def at_register_cap(self) -> bool:
        return self.registers >= self.register_cap

    def blocks_per_sm(self) -> tuple[int, str]:
        """(resident blocks per SM, the resource that limits them)."""
        per_warp = math.ceil(self.registers * 32 / REGISTER_UNIT) * REGISTER_UNIT
        limits = {
            "registers": (SM_REGISTERS // per_warp) // self.num_warps,
            "warps": SM_WARPS // self.num_warps,
            "shared": SM_SHARED // max(self.shared_bytes, 1),
            "blocks": SM_BLOCKS,
        }
        limiter = min(limits, key=limits.get)
        return limits[limiter], limiter

    @property
    def occupancy(self) -> float:
        """Resident warps per SM as a fraction of the 64 an SM holds."""
        return self.blocks_per_sm()[0] * self.num_warps / SM_WARPS


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def build(spec: Specialisation) -> Resources:
    """Compile for sm_90 (never from triton's cache, so ptxas runs and reports) and read its report:
    registers, stack frame and spills from ptxas's own log, static shared memory from the cubin."""
    knobs = triton.knobs
    saved = knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log
    knobs.compilation.always_compile = knobs.nvidia.dump_ptxas_log = True
    log = io.StringIO()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(ASTSource(spec.kernel, spec.signature, spec.constexprs, spec.attrs),
                                      target=HOPPER, options=spec.options)
    finally:
        knobs.compilation.always_compile, knobs.nvidia.dump_ptxas_log = saved
    stack, stores, loads = map(int, PTXAS_SPILLS.search(log.getvalue()).groups())
    registers = int(PTXAS_USAGE.search(log.getvalue()).group(1))
    with tempfile.TemporaryDirectory() as folder:
        cubin = pathlib.Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([_cuobjdump(), "-res-usage", str(cubin)], capture_output=True, text=True, check=True)
    static_shared = int(RESOURCE_LINE.search(usage.stdout).group(3))
    fp64_ops = len(PTX_FP64_ARITHMETIC.findall(compiled.asm["ptx"]))
    return Resources(registers, stack, stores + loads, static_shared + compiled.metadata.shared, spec.num_warps, fp64_ops)


def inductor_source(kernel: triton.JITFunction) -> str:
    """The module Inductor writes for a user-defined kernel: common imports, then @triton.jit and the
    kernel's transitive closure (helpers and module-level constants re-emitted from their values)."""
    from torch._inductor.codegen.triton import TritonKernel
    from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code

    imports = TritonKernel.gen_common_triton_imports()
    imports = imports if isinstance(imports, str) else imports.getvalue()
    return f"{imports}\n@triton.jit\n{user_defined_triton_kernel_transitive_closure_source_code(kernel)}"


def import_inductor_source(kernel: triton.JITFunction) -> triton.JITFunction:
    """Import the regenerated module (through Inductor's own code cache) and return its kernel."""
    from torch._inductor.codecache import PyCodeCache

    return getattr(PyCodeCache.load(inductor_source(kernel)), kernel.__name__)


@dataclass(frozen=True)
class Row:
    """One distinct build, the first launch that asked for it and the problems whose launches share it."""

    spec: Specialisation
    launch: Launch
    labels: tuple[str, ...]

    @property
    def name(self) -> str:
        logits = next((t for n, t in self.spec.signature.items() if n in ("z1", "s_ptr")), "")
        values = "-".join(f"{k}{v}" for k, v in self.spec.constexpr_values().items())
        aligned = sum(1 for value in self.spec.attrs.values() if value)  # arguments specialised as 16-aligned
        return f"{self.spec.kernel.__name__.strip('_')}-{values}-{logits.strip('*')}-w{self.spec.num_warps}-a{aligned}"


def distinct_builds(launches: Iterator[Launch]) -> list[Row]:
    """Launches grouped by what triton would compile for them, in first-seen order."""
    rows: dict[tuple, tuple[Specialisation, Launch, list[str]]] = {}
    for launch in launches:
        spec = specialise(launch)
        entry = rows.setdefault(spec.key, (spec, launch, []))
        if launch.label not in entry[2]:
            entry[2].append(launch.label)
    return [Row(spec, launch, tuple(labels)) for spec, launch, labels in rows.values()]


def _build_row(index: int) -> Resources:
    return build(_ROWS[index].spec)


_ROWS: list[Row] = []


def build_all(rows: list[Row], workers: int | None = None) -> list[Resources]:
    """build() of every row, on all cores (forked workers: the rows' kernels need no pickling)."""
    import concurrent.futures
    import multiprocessing

    _ROWS[:] = rows
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        return [build(row.spec) for row in rows]
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(_build_row, range(len(rows))))


@dataclass(frozen=True)
class CudaFunction:
    """ptxas's report of one CUDA C++ kernel compiled for sm_90."""

    name: str
    registers: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int


def nvcc_resource_usage(source: pathlib.Path, out_dir: pathlib.Path, nvcc_flags: list[str]) -> list[CudaFunction]:
    """Compile a csrc/*.cu file for sm_90 with `-res-usage` and parse ptxas's lines per kernel."""
    from torch.utils.cpp_extension import include_paths

    includes = [f"-I{p}" for p in include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    command = [
        "nvcc", "-std=c++20", "-arch=sm_90", "-c", str(source), "-o", str(out_dir / f"{source.stem}.o"),
        "-res-usage", "-DGEDI_FAST_WITH_CUDA", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-Xcudafe",
        "--diag_suppress=3306", *nvcc_flags, *includes,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=os.environ | {"CCACHE_DISABLE": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"nvcc failed on {source.name}:\n{result.stderr[-4000:]}")
    functions, name, spills = [], None, None
    for line in (result.stdout + result.stderr).splitlines():
        if match := PTXAS_FUNCTION.search(line):
            name, spills = match.group(1), None
        elif name and (match := PTXAS_SPILLS.search(line)):
            spills = tuple(map(int, match.groups()))
        elif name and spills and (match := PTXAS_USAGE.search(line)):
            functions.append(CudaFunction(_demangle(name), int(match.group(1)), *spills))
            name = None
    return functions


def _demangle(name: str) -> str:
    result = subprocess.run(["c++filt", name], capture_output=True, text=True)
    full = (result.stdout.strip() or name).replace("(anonymous namespace)::", "")
    return full.split("(")[0].removeprefix("void ")


def _constexpr_text(spec: Specialisation) -> str:
    return ", ".join(f"{k}={v}" for k, v in spec.constexpr_values().items())


NOTES = """\
Registers per thread and the cap ptxas must keep under at that block size (65536 / threads, at most
255); stack frame and spill bytes (stores + loads) per thread from ptxas's report (the lane fails on
any spill); shared bytes count static, dynamic and the 1 KiB the driver reserves per block;
blocks/SM and occupancy (resident warps of the 64 an SM holds) follow from those by the CUDA
occupancy rules. Problems: B x K, logits dtype, assignment, M SGLD samples, ddp = the distributed variant.

The builds allowed at their cap are the GEDI backward for 2048 < K <= 4096 (one 4096-wide tile per
row, 32 warps, 64 of 64 registers and no spill: with Sinkhorn targets on triton 3.9, with both
assignments on triton 3.6). They stay: at 16 warps the same tile spills 8-24 bytes per thread, and
the chunked schedule that would free registers reads the B x K inputs twice; this kernel is bound by
memory traffic, so one read with the registers exactly used is the cheaper side."""


def markdown(rows: list[tuple[Row, Resources]], cuda: list[CudaFunction], heading: str) -> str:
    lines = [heading, "", NOTES, "",
             "| kernel | constexprs | logits | warps | regs (cap) | stack/spill B | shared B | blocks/SM (limit) | occupancy | problems |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row, res in rows:
        blocks, limiter = res.blocks_per_sm()
        pointer = next((t for n, t in row.spec.signature.items() if n in ("z1", "s_ptr")), "-")
        cap = f"{res.registers} ({res.register_cap}){' **at cap**' if res.at_register_cap else ''}"
        problems = "; ".join(row.labels[:3]) + (f"; +{len(row.labels) - 3} more" if len(row.labels) > 3 else "")
        lines.append(f"| {row.spec.kernel.fn.__module__.rsplit('.', 1)[-1]}.{row.spec.kernel.__name__} | "
                     f"{_constexpr_text(row.spec)} | {pointer} | {res.num_warps} | {cap} | "
                     f"{res.stack_bytes}/{res.spill_bytes} | {res.shared_bytes} | {blocks} ({limiter}) | "
                     f"{res.occupancy:.0%} | {problems} |")
    if cuda:
        lines += ["", "CUDA C++ kernels (csrc/*.cu, nvcc -arch=sm_90 -res-usage; 256 threads per block):", "",
                  "| kernel | regs | stack B | spill stores/loads B | blocks/SM (limit) | occupancy |", "|---|---|---|---|---|---|"]
        for fn in cuda:
            res = Resources(fn.registers, fn.stack_bytes, fn.spill_store_bytes + fn.spill_load_bytes, 0, 8)
            blocks, limiter = res.blocks_per_sm()
            lines.append(f"| {fn.name} | {fn.registers} | {fn.stack_bytes} | {fn.spill_store_bytes}/{fn.spill_load_bytes} | "
                         f"{blocks} ({limiter}) | {res.occupancy:.0%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=pathlib.Path, required=True, help="where to write the table")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    setup = _load_setup()
    rows = distinct_builds(design_launches())
    rows = list(zip(rows, build_all(rows)))
    with tempfile.TemporaryDirectory() as folder:
        cuda = [fn for src in sorted((ROOT / "csrc").glob("*.cu"))
                for fn in nvcc_resource_usage(src, pathlib.Path(folder), setup.NVCC_FLAGS)]
    versions = f"torch {torch.__version__}, triton {triton.__version__}"
    heading = (f"sm_90 builds of every Triton kernel at the launchers' configurations ({versions}; "
               f"`python -m benchmarks.sm90 --markdown {args.markdown}`)")
    args.markdown.write_text(markdown(rows, cuda, heading))
    print(f"{len(rows)} builds, {sum(r.spills for _, r in rows)} with spills -> {args.markdown}")
    return 0


def _load_setup():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gedi_fast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    raise SystemExit(main())
