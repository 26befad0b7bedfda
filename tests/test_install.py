"""`pip install -e .` as a new user runs it: plain (build isolation on), in a fresh virtual environment.

The extension must be compiled against the torch installed in that environment, and without torch the
install must stop at once with one line saying what to do. Each test copies the source tree (tracked and
untracked files, not build outputs) so that the checkout's own build is left alone.
"""
from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys
import time
import venv

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "build_backend"))
from running_torch import NO_TORCH, running_torch_folder  # noqa: E402

BUILD_OUTPUTS = shutil.ignore_patterns(".git", "build", "*.egg-info", "_C*.so", "__pycache__", ".benchmarks",
                                       ".pytest_cache", "runs", ".build-stamp", ".venv*")


def copy_source(to: pathlib.Path) -> pathlib.Path:
    """The source tree as a fresh clone (plus uncommitted files) would have it."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0:
        return pathlib.Path(shutil.copytree(ROOT, to, ignore=BUILD_OUTPUTS))
    for name in listed.stdout.splitlines():
        source = ROOT / name
        if source.is_file() and not name.startswith("runs/"):
            (to / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, to / name)
    return to


def fresh_venv(folder: pathlib.Path, system_site_packages: bool = False) -> pathlib.Path:
    venv.create(folder, with_pip=True, system_site_packages=system_site_packages)
    return folder / "bin" / "python"


def pip(python: pathlib.Path, *args: str, cwd: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "--disable-pip-version-check", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=1200)


def test_running_torch_folder_is_where_this_python_imports_torch_from():
    assert pathlib.Path(running_torch_folder(sys.executable)) == pathlib.Path(torch.__file__).parents[1]


def test_without_torch_the_install_stops_at_once_saying_what_to_do(tmp_path):
    python = fresh_venv(tmp_path / "venv")
    assert running_torch_folder(str(python)) is None
    started = time.monotonic()
    result = pip(python, "install", "-e", str(copy_source(tmp_path / "src")))
    assert result.returncode != 0
    assert NO_TORCH in result.stdout + result.stderr
    assert time.monotonic() - started < 60  # stopped before building anything


def test_plain_editable_install_builds_against_the_environments_torch(tmp_path):
    """The venv gets its own torch (the local wheel); numpy, scipy and the rest it may take from this
    Python's packages (installing them again would only add minutes). pip's build isolation hides both."""
    python = fresh_venv(tmp_path / "venv", system_site_packages=True)
    installed = pip(python, "install", "--ignore-installed", "--no-deps", f"torch=={torch.__version__.split('+')[0]}")
    assert installed.returncode == 0, installed.stderr[-2000:]
    venv_torch = pathlib.Path(running_torch_folder(str(python))) / "torch"
    assert venv_torch.is_relative_to(tmp_path / "venv")

    source = copy_source(tmp_path / "src")
    result = pip(python, "install", "-v", "-e", str(source))
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert f"-I{venv_torch / 'include'} " in result.stdout + result.stderr  # compiled against the venv's torch

    probe = ("import gedi_fast, torch; from gedi_fast import _C; "
             "x = torch.randn(3, 5); rows, fresh = gedi_fast.buffer_draw(x, torch.tensor([2, 0]), 0.0); "
             "print(gedi_fast.__file__, torch.__file__, bool(torch.equal(rows, x[[2, 0]])))")
    ran = subprocess.run([str(python), "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
    package, torch_file, drew = ran.stdout.split()
    assert pathlib.Path(package) == source / "gedi_fast" / "__init__.py"
    assert pathlib.Path(torch_file).parent == venv_torch
    assert drew == "True"

