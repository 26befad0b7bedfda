"""PEP 517 build backend: setuptools', compiling gedi_fast._C against the torch of the Python running pip.

A `torch` build requirement would make pip's isolated build environment install the newest torch
release (a CUDA build of several GB on most machines) and compile the extension against a torch other
than the one the package then runs with. So the build requirements leave torch out, and every hook
first lets the build import the torch installed beside the interpreter that runs pip: that interpreter,
started without pip's isolation settings, says where its torch and its other packages live, and those
folders go at the end of sys.path (the isolated environment's setuptools and ninja still come first).
Without any torch the build stops at once with one line saying what to do.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable

from setuptools import build_meta

NO_TORCH = ("gedi-fast builds its C++/CUDA extension against the torch you run, and this Python has none: "
            "install torch first (e.g. `pip install torch`, or the CPU or CUDA build you want), then run "
            "`pip install -e .` again")
_ISOLATION_VARIABLES = ("PYTHONPATH", "PYTHONNOUSERSITE")  # what pip sets to hide the user's packages
_ASK = ("import json, os, sys, torch; print(json.dumps({'torch': os.path.dirname(os.path.dirname("
        "os.path.abspath(torch.__file__))), 'path': [p for p in sys.path if p and os.path.isdir(p)]}))")


def _running_python(python: str) -> dict | None:
    """Where `python`, outside pip's isolation, finds torch ("torch") and its packages ("path"); None
    when it has no torch."""
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATION_VARIABLES}
    try:
        found = subprocess.run([python, "-c", _ASK], env=env, capture_output=True, text=True, timeout=300)
        return json.loads(found.stdout.strip().splitlines()[-1]) if found.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def running_torch_folder(python: str = sys.executable) -> str | None:
    """The folder holding the torch that `python` imports outside pip's isolation; None when it has none."""
    found = _running_python(python)
    return found["torch"] if found is not None and os.path.isdir(found["torch"]) else None


def expose_running_torch() -> None:
    """Make `import torch` in this build process find the user's torch and the packages it imports (they
    may sit in another folder, e.g. a venv's system site-packages), or stop with NO_TORCH."""
    if importlib.util.find_spec("torch") is not None:  # no isolation (--no-build-isolation): nothing to do
        return
    found = _running_python(sys.executable)
    if found is None:
        sys.exit(NO_TORCH)
    sys.path.extend(folder for folder in [found["torch"], *found["path"]] if folder not in sys.path)
    importlib.invalidate_caches()


def _with_running_torch(hook: Callable) -> Callable:
    @functools.wraps(hook)
    def run(*args, **kwargs):
        expose_running_torch()
        return hook(*args, **kwargs)
    return run


get_requires_for_build_wheel = _with_running_torch(build_meta.get_requires_for_build_wheel)
get_requires_for_build_editable = _with_running_torch(build_meta.get_requires_for_build_editable)
get_requires_for_build_sdist = _with_running_torch(build_meta.get_requires_for_build_sdist)
prepare_metadata_for_build_wheel = _with_running_torch(build_meta.prepare_metadata_for_build_wheel)
prepare_metadata_for_build_editable = _with_running_torch(build_meta.prepare_metadata_for_build_editable)
build_wheel = _with_running_torch(build_meta.build_wheel)
build_editable = _with_running_torch(build_meta.build_editable)
build_sdist = _with_running_torch(build_meta.build_sdist)
