"""Compile-only check of every Triton kernel for sm_90 (Hopper), at the launch plans large shapes use.

The interpreter lane runs the kernels' arithmetic on CPU but cannot see what only the compiler sees
(non-constexpr globals, type errors, unsupported ops): this builds each variant to a cubin with the
ptxas that ships with triton, no GPU needed.
"""
from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")
pytest.importorskip("triton.backends.nvidia")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from gedi_fast.kernels import gedi_terms, sinkhorn  # noqa: E402

HOPPER = GPUTarget("cuda", 90, 32)
FLOAT_ARGS = {"inv_tau", "inv_eps", "w_gen", "w_inv", "w_prior", "w_ereg", "log_rows"}
LOGIT_POINTERS = {"z1", "z2", "zn", "dz1", "dz2", "dzn", "s_ptr"}


def build(kernel, constexprs: dict, num_warps: int, logit_type: str = "*bf16"):
    """Compile kernel to a cubin; pointer args are the logits' type or float32, scalars fp32 or i32."""
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in LOGIT_POINTERS:
            signature[name] = logit_type
        elif name in FLOAT_ARGS:
            signature[name] = "fp32"
        elif name.endswith("_ptr") or name in {"t1", "t2", "stats", "lse_n", "part_max", "part_sum", "columns",
                                               "terms", "grad_terms", "counts"}:
            signature[name] = "*fp32"
        else:
            signature[name] = "i32"
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs), target=HOPPER,
                              options={"num_warps": num_warps})
    assert len(compiled.asm["cubin"]) > 0


@pytest.mark.parametrize("batch,clusters", [(256, 10), (32768, 1000), (4096, 65536)])
@pytest.mark.parametrize("kernel", ["_fwd_rows_kernel", "_bwd_rows_kernel"])
def test_gedi_rows_kernels_compile(batch, clusters, kernel):
    plan = gedi_terms._Plan.make(batch, 64, clusters)
    constexprs = dict(SINKHORN=True, SINGLE_CHUNK=plan.single_chunk, BLOCK_B=plan.block_b, BLOCK_K=plan.block_k)
    if kernel == "_bwd_rows_kernel":
        constexprs["GLOBAL_COUNTS"] = batch == 256  # the distributed variant at one size
    build(getattr(gedi_terms, kernel), constexprs, plan.num_warps)


def test_gedi_softmax_variant_and_reductions_compile():
    plan = gedi_terms._Plan.make(4096, 0, 3000)
    tiles = dict(SINKHORN=False, SINGLE_CHUNK=True, BLOCK_B=plan.block_b, BLOCK_K=plan.block_k)
    build(gedi_terms._fwd_rows_kernel, tiles, plan.num_warps, "*fp16")
    build(gedi_terms._bwd_rows_kernel, {**tiles, "GLOBAL_COUNTS": False}, plan.num_warps, "*fp16")
    build(gedi_terms._combine_kernel, dict(BLOCK=256), 4)
    for combine in (False, True):
        build(gedi_terms._finalize_kernel, dict(COMBINE=combine, BLOCK=1024), 8)


@pytest.mark.parametrize("batch,clusters", [(256, 10), (4096, 3000), (4096, 65536)])
def test_sinkhorn_kernels_compile(batch, clusters):
    small = sinkhorn._choose_config(batch, clusters, multi_pass=False)
    if small.single_launch:
        build(sinkhorn._single_launch_kernel, dict(BLOCK_B=small.block_b, BLOCK_K=small.block_k), small.num_warps)
    cfg = sinkhorn._choose_config(batch, clusters, multi_pass=True)
    for stage, write_out in ((0, False), (1, False), (1, True), (2, False), (2, True)):
        build(sinkhorn._row_pass_kernel, dict(STAGE=stage, WRITE_OUT=write_out, CHUNKED=cfg.block_k < clusters,
                                              GROUP_ROWS=cfg.group_rows, BLOCK_B=cfg.block_b, BLOCK_K=cfg.block_k),
              cfg.num_warps)
    build(sinkhorn._combine_kernel, dict(BLOCK=sinkhorn._COMBINE_BLOCK), 4)
