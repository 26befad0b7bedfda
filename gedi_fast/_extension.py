"""Loads the compiled operator library `gedi_fast._C`, which registers torch.ops.gedi_fast.*."""
from __future__ import annotations

try:
    from gedi_fast import _C
except ImportError as err:
    raise ImportError(
        f"gedi_fast's compiled extension gedi_fast._C could not be imported ({err}); build it, or "
        "rebuild it after a torch upgrade, with `pip install -e .` from the repository root"
    ) from err

CUDA_KERNELS_BUILT: bool = bool(_C.WITH_CUDA)
