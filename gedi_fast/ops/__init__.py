"""The package's operators: the GEDI terms, fused SGLD kernels (C++/CUDA) and Sinkhorn-Knopp."""
from gedi_fast.ops.gedi import ASSIGNMENTS
from gedi_fast.ops.sgld import buffer_draw, sgld_step_
from gedi_fast.ops.sinkhorn import sinkhorn_knopp

__all__ = ["ASSIGNMENTS", "buffer_draw", "sgld_step_", "sinkhorn_knopp"]
