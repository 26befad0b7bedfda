"""A run folder holds one run: a new run never replaces one silently, and two processes never train into
the same folder at once.

The lock is an advisory `flock` on a file in the folder, held for the life of the training process:
the kernel drops it when the process ends however it ends (a kill, a crash), so a dead run never
leaves the folder locked. Under torchrun only rank 0 takes it, since every rank writes the same run.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import pathlib
from typing import Iterator

from gedi_fast.train.checkpoint import previous_path
from gedi_fast.train.trainer import CHECKPOINT_NAME

LOCK_NAME = ".gedi-fast.lock"
METRICS_NAME = "metrics.json"


def run_files(out: pathlib.Path) -> list[pathlib.Path]:
    """The files that make `out` hold a run: its checkpoints and its metrics."""
    checkpoint = out / CHECKPOINT_NAME
    return [path for path in (checkpoint, previous_path(checkpoint), out / METRICS_NAME) if path.exists()]


def refuse_to_replace(out: pathlib.Path, overwrite: bool) -> None:
    """A new run may start in `out` only when it holds no run, or when the user said --overwrite (then
    the old run's checkpoints and metrics are removed first, so nothing of it is mistaken for the new one)."""
    existing = run_files(out)
    if not existing:
        return
    if not overwrite:
        raise ValueError(f"--out {out} already holds a run ({', '.join(p.name for p in existing)}); pass --resume to "
                         f"continue it, --overwrite to replace it, or choose another --out")
    for path in existing:
        path.unlink(missing_ok=True)  # every torchrun rank clears the same files


@contextlib.contextmanager
def exclusive(out: pathlib.Path, take: bool = True) -> Iterator[None]:
    """Hold `out`'s lock for the block (a no-op when `take` is False: the ranks other than 0); a second
    process asking for it fails at once with an error naming the holder's pid."""
    if not take:
        yield
        return
    path = out / LOCK_NAME
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise ValueError(f"--out {out} is in use by another gedi-fast process (pid {holder}); wait for it to "
                             f"finish or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()
