"""Crash safety: checksummed atomic checkpoints, the previous one kept and used when the newest is
corrupt, and a run killed with SIGKILL that resumes to the same parameters as an unbroken run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from gedi_fast import checkpoint, run_folder
from gedi_fast.trainer import CHECKPOINT_NAME, GEDITrainer, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(steps=20, batch_size=32, hidden=32, sgld=dict(steps=2, buffer_size=100), log_every=5, checkpoint_every=5)


def test_each_save_keeps_the_previous_checkpoint_and_no_temporary_file(tmp_path):
    path = tmp_path / "c.pt"
    for step in range(3):
        checkpoint.save_atomic({"step": step, "x": torch.arange(step + 1)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.prev.pt", "c.pt"]
    assert checkpoint.load(path)["step"] == 2 and checkpoint.load(checkpoint.previous_path(path))["step"] == 1
    assert checkpoint.load_latest(path)["step"] == 2


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    path = tmp_path / "c.pt"
    for step in (1, 2):
        checkpoint.save_atomic({"step": step}, path)
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.warns(RuntimeWarning, match=r"checksum does not match; using the previous checkpoint .*c\.prev\.pt"):
        assert checkpoint.load_latest(path)["step"] == 1
    checkpoint.previous_path(path).write_bytes(b"")
    both_bad = "no usable checkpoint: .*c.pt is corrupt.*c.prev.pt is truncated"
    with pytest.raises(checkpoint.CheckpointError, match=both_bad):
        checkpoint.load_latest(path)
    path.unlink()
    checkpoint.previous_path(path).unlink()
    with pytest.raises(FileNotFoundError, match="not found"):
        checkpoint.load_latest(path)


def test_a_missing_newest_checkpoint_falls_back_too(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save_atomic({"step": 1}, path)
    checkpoint.save_atomic({"step": 2}, path)
    path.unlink()
    with pytest.warns(RuntimeWarning, match="not found; using the previous checkpoint"):
        assert checkpoint.load_latest(path)["step"] == 1


def test_a_corrupt_checkpoint_never_pushes_out_a_good_previous_one(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save_atomic({"step": 1}, path)
    checkpoint.save_atomic({"step": 2}, path)
    path.write_bytes(path.read_bytes()[:30])
    checkpoint.save_atomic({"step": 3}, path)
    assert checkpoint.load(path)["step"] == 3 and checkpoint.load(checkpoint.previous_path(path))["step"] == 1


def test_temporary_files_of_a_killed_writer_are_cleaned_up(tmp_path):
    path = tmp_path / "c.pt"
    (tmp_path / ".c.pt.0123abcd.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".c.prev.pt.4567.tmp").write_bytes(b"half a link")
    checkpoint.save_atomic({"step": 1}, path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_checkpoints_from_before_the_checksum_still_load(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"step": 7}, path)
    assert checkpoint.load(path)["step"] == 7


def test_trainer_resumes_from_the_previous_checkpoint_when_the_newest_is_corrupt(tmp_path):
    straight = GEDITrainer(TrainConfig(**SMALL), tmp_path / "a")
    straight.train()
    broken = GEDITrainer(TrainConfig(**SMALL), tmp_path / "b")
    broken.train(until=15)  # checkpoints at 5, 10 and 15
    newest = tmp_path / "b" / CHECKPOINT_NAME
    newest.write_bytes(newest.read_bytes()[:-100])
    with pytest.warns(RuntimeWarning, match="is truncated.*; using the previous checkpoint"):
        resumed = GEDITrainer.resume(tmp_path / "b")
    assert resumed.step == 10
    resumed.train()
    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert torch.equal(straight.sampler.buffer, resumed.sampler.buffer)


def test_sigkill_mid_training_then_resume_equals_an_unbroken_run(tmp_path):
    steps = 150
    flags = ["--dataset", "moons", "--steps", str(steps), "--set", "hidden=32", "--set", "batch_size=32",
             "--set", "sgld_steps=2", "--set", "buffer_size=64", "--set", "checkpoint_every=5", "--set", "log_every=50"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "gedi_fast", "train", "--out", str(out), *flags]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    newest = out / CHECKPOINT_NAME
    deadline = time.monotonic() + 240
    try:
        while not checkpoint.previous_path(newest).exists():  # two checkpoints written: well into the run
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # killed between two renames, only the previous one would be complete
        killed_at = checkpoint.load_latest(newest)["step"]
    assert 10 <= killed_at < steps and killed_at % 5 == 0
    # Resume and the unbroken run in this process (`gedi-fast train --resume` is GEDITrainer.resume, then
    # train, evaluate and plot), single-threaded like the killed run.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        resumed = GEDITrainer.resume(out)
    resumed.train()
    unbroken = GEDITrainer(resumed.config, tmp_path / "unbroken")
    unbroken.train()
    final = checkpoint.load(newest)
    assert final["step"] == steps
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [run_folder.LOCK_NAME]  # no temporary file
    for name, value in unbroken.model.state_dict().items():
        assert torch.equal(final["model"][name], value), name
    assert torch.equal(final["samplers"][0]["buffer"], unbroken.sampler.buffer)
