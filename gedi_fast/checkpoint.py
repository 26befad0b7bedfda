"""Checkpoints written atomically: a crash mid-write leaves the previous checkpoint intact."""
from __future__ import annotations

import os
import pathlib
import tempfile

import torch


def save_atomic(state: dict, path: str | os.PathLike) -> pathlib.Path:
    """torch.save to a temporary file beside `path`, fsync, then rename over it."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"checkpoint {path} is unreadable or truncated: {err}") from err
