"""Builds gedi_fast._C: the C++ CPU kernels always, the CUDA kernels whenever they can be built.

CUDA kernels are built when the CUDA toolkit is found and torch is a CUDA build; no visible GPU is
needed (TORCH_CUDA_ARCH_LIST then defaults to DEFAULT_CUDA_ARCHS). Environment switches:
GEDI_FAST_FORCE_CUDA=1 makes the build fail when the CUDA kernels cannot be built;
GEDI_FAST_SKIP_CUDA=1 builds the CPU kernels only.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Mapping

DEFAULT_CUDA_ARCHS = "8.0;9.0"
CXX_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]  # at::parallel_for runs on OpenMP; torch ships the libgomp.so.1 it resolves to
NVCC_FLAGS = ["-O3", "--fmad=false", "-lineinfo"]


def _switch(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def should_build_cuda(env: Mapping[str, str], cuda_home: str | None, torch_cuda: str | None) -> bool:
    """Whether to compile csrc/*.cu; raises when forced but impossible, or when both switches are set."""
    force, skip = _switch(env, "GEDI_FAST_FORCE_CUDA"), _switch(env, "GEDI_FAST_SKIP_CUDA")
    if force and skip:
        raise RuntimeError("GEDI_FAST_FORCE_CUDA and GEDI_FAST_SKIP_CUDA are both set; choose one")
    if skip:
        return False
    possible = cuda_home is not None and torch_cuda is not None
    if force and not possible:
        missing = "the CUDA toolkit (set CUDA_HOME)" if cuda_home is None else "a CUDA build of torch"
        raise RuntimeError(f"GEDI_FAST_FORCE_CUDA=1 but {missing} was not found")
    return possible


def extension_modules() -> list:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    with_cuda = should_build_cuda(os.environ, CUDA_HOME, torch.version.cuda)
    sources = sorted(glob.glob("csrc/*.cpp"))
    if not with_cuda:
        return [CppExtension("gedi_fast._C", sources, extra_compile_args={"cxx": CXX_FLAGS}, extra_link_args=LINK_FLAGS)]
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
    flags = ["-DGEDI_FAST_WITH_CUDA"]
    return [
        CUDAExtension(
            "gedi_fast._C",
            sources + sorted(glob.glob("csrc/*.cu")),
            extra_compile_args={"cxx": CXX_FLAGS + flags, "nvcc": NVCC_FLAGS + flags},
            extra_link_args=LINK_FLAGS,
        )
    ]


if __name__ == "__main__":
    from setuptools import find_packages, setup
    from torch.utils.cpp_extension import BuildExtension

    setup(
        # The Triton kernels live beside csrc/ at the top level (the two kernel languages side by side) and
        # install as gedi_fast.kernels.
        packages=[*find_packages(include=["gedi_fast", "gedi_fast.*"]), "gedi_fast.kernels"],
        package_dir={"gedi_fast.kernels": "kernels"},
        package_data={"gedi_fast": ["py.typed"]},  # the package's type hints are for its users too (PEP 561)
        ext_modules=extension_modules(),
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )
