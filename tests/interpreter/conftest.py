"""Interpreter lane: Triton kernels on CPU tensors under TRITON_INTERPRET=1.

Runs as its own pytest process (`make test` starts it) because the variable must be set before
triton is imported; skipped when triton is not installed.
"""
from __future__ import annotations

import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    raise pytest.UsageError("tests/interpreter needs TRITON_INTERPRET=1 set before start (see the Makefile)")

pytest.importorskip("triton")
