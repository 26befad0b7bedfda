"""Packaging: the CUDA build decision, where the kernels package lives, and a compile-only nvcc check."""
from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
import torch

import gedi_fast  # noqa: F401  (registers the ops)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_setup_module():
    spec = importlib.util.spec_from_file_location("gedi_fast_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # setup() itself only runs as __main__
    return module


@pytest.mark.parametrize(
    "env,cuda_home,torch_cuda,expected",
    [
        ({}, "/usr/local/cuda", "13.0", True),
        ({}, None, "13.0", False),
        ({}, "/usr/local/cuda", None, False),
        ({"GEDI_FAST_SKIP_CUDA": "1"}, "/usr/local/cuda", "13.0", False),
        ({"GEDI_FAST_FORCE_CUDA": "1"}, "/usr/local/cuda", "13.0", True),
        ({"GEDI_FAST_FORCE_CUDA": "0"}, None, None, False),
    ],
)
def test_cuda_build_decision(env, cuda_home, torch_cuda, expected):
    assert load_setup_module().should_build_cuda(env, cuda_home, torch_cuda) is expected


@pytest.mark.parametrize(
    "env,cuda_home,torch_cuda,match",
    [
        ({"GEDI_FAST_FORCE_CUDA": "1"}, None, "13.0", "CUDA toolkit"),
        ({"GEDI_FAST_FORCE_CUDA": "yes"}, "/usr/local/cuda", None, "CUDA build of torch"),
        ({"GEDI_FAST_FORCE_CUDA": "1", "GEDI_FAST_SKIP_CUDA": "1"}, "/usr/local/cuda", "13.0", "both set"),
    ],
)
def test_cuda_build_switches_fail_loudly(env, cuda_home, torch_cuda, match):
    with pytest.raises(RuntimeError, match=match):
        load_setup_module().should_build_cuda(env, cuda_home, torch_cuda)


def test_ops_are_registered_after_import():
    assert callable(torch.ops.gedi_fast.sgld_step_)
    assert callable(torch.ops.gedi_fast.buffer_draw)


def test_kernels_are_imported_from_where_they_live(tmp_path):
    """The Triton kernels sit in the top-level kernels/ and install as gedi_fast.kernels (editable here)."""
    import gedi_fast.kernels

    assert pathlib.Path(gedi_fast.kernels.__file__).parent == ROOT / "kernels"
    probe = ("import importlib.util, pathlib, gedi_fast.kernels; "
             "print(importlib.util.find_spec('kernels') is None, pathlib.Path(gedi_fast.kernels.__file__).parent)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    absent, folder = result.stdout.split()
    assert absent == "True"  # no top-level `kernels` module outside the source tree
    assert pathlib.Path(folder) == ROOT / "kernels"


def test_a_wheel_puts_the_kernels_under_gedi_fast(tmp_path):
    """What a wheel holds: build_py lays the packages out as they install (the extension is not compiled)."""
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=ROOT, check=True,
                   capture_output=True)
    for source in (ROOT / "kernels").glob("*.py"):
        assert (tmp_path / "gedi_fast" / "kernels" / source.name).read_bytes() == source.read_bytes(), source.name
    assert not (tmp_path / "kernels").exists()


def cuda_sources() -> list[pathlib.Path]:
    return sorted((ROOT / "csrc").glob("*.cu"))


@pytest.mark.nvcc
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("source", cuda_sources(), ids=lambda p: p.name)
def test_cuda_source_compiles_for_sm90_without_spills(source, tmp_path):
    from benchmarks.sm90 import nvcc_resource_usage

    functions = nvcc_resource_usage(source, tmp_path, load_setup_module().NVCC_FLAGS)
    assert (tmp_path / f"{source.stem}.o").stat().st_size > 0
    assert {fn.name.split("<")[0] for fn in functions} >= {"gedi_fast::sgld_step_kernel", "gedi_fast::buffer_draw_kernel"}
    for fn in functions:
        assert fn.spill_store_bytes == fn.spill_load_bytes == 0, fn


def test_there_is_cuda_source_to_check():
    assert "sgld_cuda.cu" in [p.name for p in cuda_sources()]


def test_import_and_cpu_use_without_triton():
    probe = (
        "import sys; sys.modules['triton'] = None\n"  # as if triton were not installed
        "import torch, gedi_fast\n"
        "z = torch.randn(4, 3)\n"
        "loss = gedi_fast.GEDILoss()(z, z.flip(0), z[:2])\n"
        "q = gedi_fast.sinkhorn_knopp(z)\n"
        "from gedi_fast.ops.backend import triton_unavailable_reason\n"
        "print(bool(torch.isfinite(loss)), tuple(q.shape), triton_unavailable_reason(z))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True (4, 3) triton is not installed (pip install 'gedi-fast[triton]')"


def test_no_build_stamp_is_committed():
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert ".build-stamp" not in tracked


STUB_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$STUB_LOG"
case "$*" in
  *"import gedi_fast._C"*) exit "${STUB_IMPORT_RC:-0}" ;;
  *"print(sys.executable"*) echo "stub-python 2.13.0" ;;
esac
exit 0
"""


def test_make_install_rebuilds_on_content_not_file_times(tmp_path):
    """What a release tarball gets: files with arbitrary times. The install step compares a hash of the
    build inputs' contents (and the interpreter and torch) with the stamp, and the extension's import."""
    if shutil.which("make") is None:
        pytest.skip("make not installed")
    for name in ("Makefile", "setup.py", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / "csrc").mkdir()
    (tmp_path / "csrc" / "ops.cpp").write_text("// v1\n")
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    log = tmp_path / "log"

    def install(**env) -> list[str]:
        log.write_text("")
        subprocess.run(["make", "-s", "install", f"PYTHON={stub}"], cwd=tmp_path, check=True, capture_output=True,
                       env=os.environ | {"STUB_LOG": str(log)} | env)
        return [line for line in log.read_text().splitlines() if "--no-build-isolation -e" in line]

    assert len(install()) == 1  # no stamp: build
    assert install() == []  # same contents, extension imports: nothing to do
    old = 946684800  # 2000-01-01: a file older than the stamp must not hide a change
    (tmp_path / "csrc" / "ops.cpp").write_text("// v2\n")
    os.utime(tmp_path / "csrc" / "ops.cpp", (old, old))
    assert len(install()) == 1
    os.utime(tmp_path / ".build-stamp", (old, old))  # a stamp older than every input, contents current
    assert install() == []
    assert len(install(STUB_IMPORT_RC="1")) == 1  # the extension does not import: build


def test_make_install_rebuilds_when_python_imports_another_checkouts_gedi_fast(tmp_path):
    """The stamp alone would pass while gedi_fast resolves to another clone's editable install."""
    snippet = re.search(r"^export IS_THIS_CHECKOUT := (.*)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert subprocess.run([sys.executable, "-c", snippet, str(ROOT)], cwd=tmp_path).returncode == 0
    assert subprocess.run([sys.executable, "-c", snippet, str(tmp_path)], cwd=tmp_path).returncode != 0


def test_license_and_type_hints_ship_with_the_package():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"}
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "gedi_fast" / "py.typed").is_file()
    assert 'package_data={"gedi_fast": ["py.typed"]}' in (ROOT / "setup.py").read_text()
