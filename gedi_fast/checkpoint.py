"""Crash-safe checkpoints: written atomically with a checksum, the previous one kept as a fallback.

A file is MAGIC, the payload's sha256 and length, then the payload (torch.save's bytes). `save_atomic`
writes a temporary file beside the target and fsyncs it, links the current checkpoint (when it
verifies) to `previous_path(path)`, then renames the new one over `path`: every rename is atomic, so
a crash at any point leaves `path` holding a complete checkpoint, old or new. `load` verifies the
checksum; `load_latest` falls back to the previous checkpoint, with a warning, when the newest is
missing, truncated or corrupt (a disk fault, or a copy cut short).
"""
from __future__ import annotations

import hashlib
import io
import os
import pathlib
import secrets
import shutil
import struct
import warnings

import torch

MAGIC = b"GEDICKP1"
_HEADER = struct.Struct(f"<{len(MAGIC)}s32sQ")  # magic, sha256 of the payload, payload length
_TEMP_SUFFIX = ".tmp"


class CheckpointError(ValueError):
    """A checkpoint file that exists but cannot be used: truncated, corrupt or not a checkpoint."""


def previous_path(path: str | os.PathLike) -> pathlib.Path:
    """Where save_atomic keeps the checkpoint it replaced: checkpoint.pt -> checkpoint.prev.pt."""
    path = pathlib.Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_atomic(state: dict, path: str | os.PathLike, keep_previous: bool = True) -> pathlib.Path:
    """Write `state` to `path` so that a crash at any moment leaves a verified checkpoint behind.

    With keep_previous the checkpoint being replaced moves to previous_path(path) first (unless it
    fails verification, so a corrupt file never pushes out a good one). Temporary files a killed
    writer left behind are removed.
    """
    path = pathlib.Path(path)
    previous = previous_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for name in (path.name, previous.name):
        for stale in path.parent.glob(f".{name}.*{_TEMP_SUFFIX}"):
            stale.unlink(missing_ok=True)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getbuffer()
    tmp, tmp_previous = _temporary(path), _temporary(previous)
    try:
        with open(tmp, "xb") as f:
            f.write(_HEADER.pack(MAGIC, hashlib.sha256(payload).digest(), len(payload)))
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.is_file() and _verified_payload(path, raise_errors=False) is not None:
            try:
                os.link(path, tmp_previous)
            except OSError:  # a filesystem without hard links
                shutil.copyfile(path, tmp_previous)
            os.replace(tmp_previous, previous)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        tmp_previous.unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """The state saved at `path`, after checking its length and checksum.

    FileNotFoundError when there is no file; CheckpointError (a ValueError) naming the file and what
    is wrong when it is truncated, corrupt or not a checkpoint.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    payload = _verified_payload(path, raise_errors=True)
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is unreadable or truncated: {err}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a gedi_fast checkpoint: it holds a {type(state).__name__}, not a dict")
    return state


def require_keys(state: dict, keys: tuple[str, ...], path: str | os.PathLike) -> dict:
    """state, when it holds every key a gedi_fast training checkpoint has; else CheckpointError naming the file."""
    missing = [key for key in keys if key not in state]
    if missing:
        raise CheckpointError(f"{path} is not a gedi_fast training checkpoint: it has no {', '.join(map(repr, missing))}")
    return state


def load_latest(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """load(path), or, when that file is missing or unusable, load(previous_path(path)) with a warning.

    FileNotFoundError when neither exists; CheckpointError naming both files when neither is usable.
    """
    path = pathlib.Path(path)
    try:
        return load(path, map_location)
    except (FileNotFoundError, CheckpointError) as newest:
        previous = previous_path(path)
        if not previous.is_file():
            raise
        try:
            state = load(previous, map_location)
        except CheckpointError as older:
            raise CheckpointError(f"no usable checkpoint: {newest}; and {older}") from older
        warnings.warn(f"{newest}; using the previous checkpoint {previous} (step {state.get('step', '?')})",
                      RuntimeWarning, stacklevel=2)
        return state


def _verified_payload(path: pathlib.Path, raise_errors: bool) -> bytes | None:
    """The payload of a checkpoint file whose length and sha256 match its header (legacy files, plain
    torch.save output without the header, are returned whole); None or CheckpointError otherwise."""
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        if data.startswith(b"PK"):  # a checkpoint written before the header existed (torch's zip format)
            return data
        truncated = len(data) < len(MAGIC) and MAGIC.startswith(data)
        problem = "is truncated" if truncated else "is not a gedi_fast checkpoint (it does not start with one's header)"
    elif len(data) < _HEADER.size:
        problem = f"is truncated: {len(data)} bytes, shorter than its header"
    else:
        _, digest, length = _HEADER.unpack_from(data)
        payload = data[_HEADER.size:]
        if len(payload) != length:
            problem = f"is truncated: its header promises {length} bytes of state, the file holds {len(payload)}"
        elif hashlib.sha256(payload).digest() != digest:
            problem = "is corrupt: its sha256 checksum does not match"
        else:
            return payload
    if raise_errors:
        raise CheckpointError(f"checkpoint {path} {problem}")
    return None


def _temporary(path: pathlib.Path) -> pathlib.Path:
    """A fresh hidden name beside `path`, which save_atomic's clean-up recognises."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}{_TEMP_SUFFIX}")


def _fsync_directory(folder: pathlib.Path) -> None:
    """Make the renames durable: on POSIX a rename lives in the directory, which needs its own fsync."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
