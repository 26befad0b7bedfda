"""gedi_fast: fused kernels for the GEDI self-supervised clustering objective."""
from gedi_fast import reference
from gedi_fast._extension import CUDA_KERNELS_BUILT
from gedi_fast.loss import GEDILoss
from gedi_fast.ops import buffer_draw, sgld_step_, sinkhorn_knopp
from gedi_fast.sampler import SGLDConfig, SGLDSampler

__all__ = [
    "CUDA_KERNELS_BUILT", "GEDILoss", "SGLDConfig", "SGLDSampler", "buffer_draw", "reference", "sgld_step_",
    "sinkhorn_knopp",
]
__version__ = "0.1.0"
