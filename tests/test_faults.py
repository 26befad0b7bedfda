"""Faults, injected for real: a full disk while checkpointing, a rank of a torchrun job killed with
SIGKILL (torchrun restarts the group, `--resume auto` continues), and a rank that hangs (SIGSTOP; the
collective timeout ends the job with a message naming the rank and the step). Nothing is lost."""
from __future__ import annotations

import errno
import io
import json
import os
import pathlib
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import torch

from gedi_fast.cli import main
from gedi_fast.train import checkpoint, run_folder
from gedi_fast.train.trainer import CHECKPOINT_NAME

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = ["--dataset", "moons", "--set", "batch_size=32", "--set", "hidden=32", "--set", "sgld_steps=2",
         "--set", "sgld_samples=16", "--set", "buffer_size=64", "--set", "log_every=5", "--set", "checkpoint_every=5"]


def _state(out: pathlib.Path) -> dict:
    return checkpoint.load(out / CHECKPOINT_NAME)


def _assert_same_run(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    for mine, theirs in zip(a["samplers"], b["samplers"], strict=True):
        assert torch.equal(mine["buffer"], theirs["buffer"]) and mine["calls"] == theirs["calls"]


def _no_temporary_files(out: pathlib.Path) -> bool:
    """Nothing half-written: the run folder's only hidden file is its lock."""
    return not [p.name for p in out.iterdir() if p.name.startswith(".") and p.name != run_folder.LOCK_NAME]


def test_resume_auto_starts_a_run_then_continues_it_with_the_same_command_line(tmp_path, capsys):
    out = str(tmp_path / "run")
    line = ["train", "--resume", "auto", "--out", out, "--seed", "2", *SMALL]
    assert main([*line, "--steps", "6"]) == 0
    assert "resuming" not in capsys.readouterr().err
    assert main([*line, "--steps", "12"]) == 0  # the same flags again: the run continues, nothing refused
    assert "resuming" in capsys.readouterr().err and _state(tmp_path / "run")["step"] == 12
    unbroken = tmp_path / "unbroken"
    assert main(["train", "--out", str(unbroken), "--seed", "2", "--steps", "12", *SMALL]) == 0
    _assert_same_run(_state(tmp_path / "run"), _state(unbroken))


class _DiskFillsUp:
    """open() for checkpoint.py whose files take `room` more bytes in all and then fail as a full disk does."""

    def __init__(self, room: int) -> None:
        self.room = room

    def __call__(self, path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        if "w" not in mode and "x" not in mode:
            return handle
        disk = self

        class Filling(io.BufferedWriter):
            def write(self, data) -> int:
                if len(data) > disk.room:
                    super().write(bytes(memoryview(data)[:disk.room]))
                    disk.room = 0
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                disk.room -= len(data)
                return super().write(data)

        return Filling(handle.detach())


def test_a_full_disk_keeps_the_last_checkpoint_and_stops_training(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    line = ["train", "--out", str(out), "--steps", "20", *SMALL]
    size = None

    def measure(*args, **kwargs):  # the first checkpoint's size tells how much room two of them need
        nonlocal size
        saved = original(*args, **kwargs)
        size = size or saved.stat().st_size
        return saved

    original = checkpoint.save_atomic
    monkeypatch.setattr(checkpoint, "save_atomic", measure)
    assert main(["train", "--out", str(tmp_path / "probe"), "--steps", "5", *SMALL]) == 0
    monkeypatch.setattr(checkpoint, "save_atomic", original)
    monkeypatch.setattr(checkpoint, "open", _DiskFillsUp(room=2 * size + size // 2), raising=False)
    assert main(line) == 1  # steps 5 and 10 fit; step 15's checkpoint runs out of space half-way
    err = capsys.readouterr().err
    assert "writing the checkpoint of step 15" in err and os.strerror(errno.ENOSPC) in err
    assert "the checkpoint of step 10 is intact" in err
    assert _state(out)["step"] == 10 and _no_temporary_files(out)
    monkeypatch.delattr(checkpoint, "open")  # space freed: resume and finish
    assert main(["train", "--resume", "--out", str(out)]) == 0
    assert main(["train", "--out", str(tmp_path / "unbroken"), "--steps", "20", *SMALL]) == 0
    _assert_same_run(_state(out), _state(tmp_path / "unbroken"))


def test_a_file_size_limit_fails_the_first_checkpoint_cleanly(tmp_path):
    """A real write failure from the OS (RLIMIT_FSIZE: EFBIG) in a separate process."""
    out = tmp_path / "run"

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    result = subprocess.run([sys.executable, "-m", "gedi_fast", "train", "--out", str(out), "--steps", "5", *SMALL],
                            capture_output=True, text=True, preexec_fn=limit, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "writing the checkpoint of step 5" in result.stderr and "no earlier checkpoint exists" in result.stderr
    assert not (out / CHECKPOINT_NAME).exists() and _no_temporary_files(out)


# --- torchrun -----------------------------------------------------------------------------------

def _torchrun(out: pathlib.Path, steps: int, *extra: str, restarts: int = 0) -> list[str]:
    """A 2-rank job on this machine: `--standalone`, torchrun's c10d rendezvous on a free port, which
    gives every restarted group a rendezvous round of its own."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            f"--max-restarts={restarts}", "-m", "gedi_fast", "train",
            "--resume", "auto", "--out", str(out), "--steps", str(steps), *SMALL, *extra]


def _job_processes(tag: str) -> dict[int, dict[str, str]]:
    """pid -> environment of every live process of the job tagged `tag` (torchrun and its workers)."""
    found = {}
    for proc in pathlib.Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = dict(v.split("=", 1) for v in (proc / "environ").read_bytes().decode().split("\0") if "=" in v)
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if env.get("GEDI_FAULT_TAG") == tag:
            found[int(proc.name)] = {**env, "is_worker": str(b"torch.distributed.run" not in cmdline)}
    return found


def _worker(tag: str, rank: int) -> int | None:
    """The pid of the live training process of `rank` in the job tagged `tag`."""
    return next((pid for pid, env in _job_processes(tag).items()
                 if env["is_worker"] == "True" and env.get("RANK") == str(rank)), None)


def _kill_job(tag: str) -> None:
    for pid in _job_processes(tag):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run_job(command: list[str], timeout: float, at_line: str | None = None,
             fault: signal.Signals | None = None) -> tuple[int, str]:
    """Run a torchrun job (when rank 0 logs `at_line`, send `fault` to rank 1): (exit status, stderr).

    Every process of the job carries a tag in its environment; a watchdog kills them all after
    `timeout` seconds, workers included (they hold the stderr pipe), so no test waits for ever.
    """
    tag = uuid.uuid4().hex
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GEDI_FAULT_TAG": tag}
    job = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    watchdog = threading.Timer(timeout, _kill_job, args=(tag,))
    watchdog.start()
    lines, struck = [], None
    try:
        for line in job.stderr:
            lines.append(line)
            if fault is not None and struck is None and line.startswith(at_line):
                struck = _worker(tag, 1)
                assert struck is not None, "rank 1 not found"
                os.kill(struck, fault)
        job.wait()
    finally:
        timed_out = not watchdog.is_alive() and watchdog.finished.is_set() and job.returncode == -signal.SIGKILL
        watchdog.cancel()
        _kill_job(tag)  # a stopped rank ignores everything else
    assert not timed_out, f"the job outlived {timeout} s:\n{''.join(lines)[-3000:]}"
    assert fault is None or struck is not None, f"the job never logged {at_line!r}:\n{''.join(lines)[-3000:]}"
    return job.returncode, "".join(lines)


def test_a_killed_rank_is_restarted_by_torchrun_and_the_run_ends_as_an_unbroken_one(tmp_path):
    unbroken, faulted = tmp_path / "unbroken", tmp_path / "faulted"
    status, err = _run_job(_torchrun(unbroken, 40), timeout=300)
    assert status == 0, err[-3000:]
    status, err = _run_job(_torchrun(faulted, 40, restarts=2), 300, "step 20/40", signal.SIGKILL)
    assert status == 0, err[-12000:]
    assert "gedi-fast: resuming" in err  # the restarted group continued from the checkpoint
    assert json.loads((faulted / "metrics.json").read_text())["steps"] == 40
    _assert_same_run(_state(faulted), _state(unbroken))
    assert _no_temporary_files(faulted)


def test_a_hung_rank_ends_the_job_with_the_rank_and_step_named(tmp_path):
    out = tmp_path / "run"
    started = time.monotonic()
    status, err = _run_job(_torchrun(out, 400, "--set", "collective_timeout=5"), 240, "step 10/400", signal.SIGSTOP)
    assert status != 0
    assert "gedi-fast: training failed: rank 0 of 2: a collective after step 1" in err and "did not complete" in err
    assert time.monotonic() - started < 200
    # The last checkpoint is there to resume from: step 10's when rank 1 stopped after joining its
    # collectives, else step 5's.
    assert _state(out)["step"] in (5, 10)
