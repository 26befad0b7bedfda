"""Crash-safe checkpoints: plain torch.save files with a digest inside, written atomically, the
previous one kept as a fallback.

A checkpoint opens with plain `torch.load(path)` (weights_only, the default, suffices): a dict holding
the state and, under INTEGRITY_KEY, the format version and a sha256 of the state's contents (every
tensor's dtype, shape and bytes, every key and value, in a fixed order), which `load` recomputes.
`save_atomic` writes a temporary file beside the target and fsyncs it, links the current checkpoint
(when it verifies) to `previous_path(path)`, then renames the new one over `path`: every rename is
atomic, so a crash at any point leaves `path` holding a complete checkpoint, old or new. `load_latest`
falls back to the previous checkpoint, with a warning, when the newest is missing, truncated or corrupt
(a disk fault, or a copy cut short). Files of the earlier formats still load: a MAGIC header with the
payload's sha256 before torch.save's bytes, and before that torch.save's bytes alone.
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

INTEGRITY_KEY = "gedi_fast_checkpoint"
FORMAT_VERSION = 2
MAGIC = b"GEDICKP1"  # format 1: this, the payload's sha256 and length, then torch.save's bytes
_HEADER = struct.Struct(f"<{len(MAGIC)}s32sQ")
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
    if INTEGRITY_KEY in state:
        raise ValueError(f"state must not hold the key {INTEGRITY_KEY!r}: the checkpoint's digest goes there")
    stamped = {**state, INTEGRITY_KEY: {"format": FORMAT_VERSION, "sha256": content_digest(state)}}
    serialised = io.BytesIO()  # serialised first, so a failing disk is the OSError of one write (torch's
    torch.save(stamped, serialised)  # zip writer would turn it into a RuntimeError about positions)
    tmp, tmp_previous = _temporary(path), _temporary(previous)
    try:
        with open(tmp, "xb") as f:
            f.write(serialised.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        if keep_previous and path.is_file() and _verifies(path):
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
    """The state saved at `path`, after checking its digest (without INTEGRITY_KEY).

    FileNotFoundError when there is no file; CheckpointError (a ValueError) naming the file and what
    is wrong when it is truncated, corrupt or not a checkpoint.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    data = path.read_bytes()
    payload = _format_one_payload(path, data) if data.startswith(MAGIC) else data
    if not payload.startswith(b"PK"):
        truncated = len(data) < len(MAGIC) and MAGIC.startswith(data)
        problem = "is truncated" if truncated else "is not a gedi_fast checkpoint (not a torch.save file)"
        raise CheckpointError(f"checkpoint {path} {problem}")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is truncated or unreadable: {str(err).splitlines()[0]}") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a gedi_fast checkpoint: it holds a {type(state).__name__}, not a dict")
    stamp = state.pop(INTEGRITY_KEY, None)
    if stamp is not None and (not isinstance(stamp, dict) or stamp.get("sha256") != content_digest(state)):
        raise CheckpointError(f"checkpoint {path} is corrupt: its contents do not match the sha256 stored in it")
    return state


def content_digest(state: dict) -> str:
    """sha256 of the state's contents, independent of how torch.save lays them out: keys in sorted
    order, tensors as dtype, shape and bytes. TypeError for a value a checkpoint does not store."""
    digest = hashlib.sha256()
    _feed(digest, state)
    return digest.hexdigest()


def _feed(digest: "hashlib._Hash", value: object) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)}".encode())
        for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
            _feed(digest, key)
            _feed(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"L{len(value)}".encode())
        for item in value:
            _feed(digest, item)
    elif value is None or isinstance(value, (bool, int, str)):
        digest.update(f"{type(value).__name__}:{value!r};".encode())
    elif isinstance(value, float):
        digest.update(f"float:{value.hex()};".encode())
    else:
        raise TypeError(f"a checkpoint stores tensors, numbers, strings, None, lists and dicts; got a {type(value).__name__}")


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


def _verifies(path: pathlib.Path) -> bool:
    try:
        load(path)
    except CheckpointError:
        return False
    return True


def _format_one_payload(path: pathlib.Path, data: bytes) -> bytes:
    """torch.save's bytes from a format-1 file, after checking its header's length and sha256."""
    if len(data) < _HEADER.size:
        raise CheckpointError(f"checkpoint {path} is truncated: {len(data)} bytes, shorter than its header")
    _, digest, length = _HEADER.unpack_from(data)
    payload = data[_HEADER.size:]
    if len(payload) != length:
        raise CheckpointError(f"checkpoint {path} is truncated: its header promises {length} bytes of state, "
                              f"the file holds {len(payload)}")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt: its sha256 checksum does not match")
    return payload


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
