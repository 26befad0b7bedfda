"""Crash safety: checksummed atomic checkpoints, the previous one kept and used when the newest is
corrupt, and a run killed with SIGKILL that resumes to the same parameters as an unbroken run."""
from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from gedi_fast.train import checkpoint, run_folder
from gedi_fast.train.trainer import CHECKPOINT_NAME, GEDITrainer, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(steps=20, batch_size=32, hidden=32, sgld=dict(steps=2, buffer_size=100), log_every=5, checkpoint_every=5)


def test_each_save_keeps_the_previous_checkpoint_and_no_temporary_file(tmp_path):
    path = tmp_path / "c.pt"
    for step in range(3):
        checkpoint.save_atomic({"step": step, "x": torch.arange(step + 1)}, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.prev.pt", "c.pt"]
    assert checkpoint.load(path)["step"] == 2 and checkpoint.load(checkpoint.previous_path(path))["step"] == 1
    assert checkpoint.load_latest(path)["step"] == 2


def flip_a_bit_of(path, tensor: torch.Tensor) -> None:
    """Corrupt `tensor`'s stored bytes in place: what a disk fault does, which torch.load does not notice."""
    data, stored = bytearray(path.read_bytes()), tensor.numpy().tobytes()
    at = data.index(stored) + len(stored) // 2
    data[at] ^= 1
    path.write_bytes(bytes(data))


def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    path = tmp_path / "c.pt"
    for step in (1, 2):
        checkpoint.save_atomic({"step": step, "x": torch.full((64,), 7.0 + step)}, path)
    flip_a_bit_of(path, torch.full((64,), 9.0))
    assert torch.load(path)["x"][32] != 9.0  # the damage loads without complaint
    with pytest.warns(RuntimeWarning, match=r"do not match the sha256 stored in it; using the previous checkpoint "
                                            r".*c\.prev\.pt"):
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


def write_format_one(path, state: dict) -> None:
    """The format of the checkpoints written before they opened with torch.load: a header, then the bytes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    path.write_bytes(checkpoint._HEADER.pack(checkpoint.MAGIC, hashlib.sha256(payload).digest(), len(payload)) + payload)


def test_checkpoints_with_the_format_one_header_still_load_and_are_still_checked(tmp_path):
    path = tmp_path / "one.pt"
    write_format_one(path, {"step": 3, "x": torch.full((64,), 5.0)})
    assert checkpoint.load(path)["step"] == 3
    flip_a_bit_of(path, torch.full((64,), 5.0))
    with pytest.raises(checkpoint.CheckpointError, match="sha256 checksum does not match"):
        checkpoint.load(path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(checkpoint.CheckpointError, match="is truncated: its header promises"):
        checkpoint.load(path)


def test_a_checkpoint_opens_with_plain_torch_load_and_carries_its_digest(tmp_path):
    path = tmp_path / "c.pt"
    state = {"step": 4, "nested": {2: [1.5, None, "a"], "t": torch.arange(5, dtype=torch.int16)}}
    checkpoint.save_atomic(state, path)
    opened = torch.load(path)  # weights_only=True, torch's safe default
    stamp = opened.pop(checkpoint.INTEGRITY_KEY)
    assert stamp == {"format": checkpoint.FORMAT_VERSION, "sha256": checkpoint.content_digest(state)}
    assert opened["step"] == 4 and torch.equal(opened["nested"]["t"], state["nested"]["t"])
    assert checkpoint.load(path).keys() == state.keys()


def test_the_digest_covers_contents_not_layout():
    state = {"a": torch.ones(3), "b": [1, 2.0, "x", None, True]}
    same = {"b": [1, 2.0, "x", None, True], "a": torch.ones(3)}
    assert checkpoint.content_digest(state) == checkpoint.content_digest(same)
    for changed in ({**state, "a": torch.ones(3, dtype=torch.float64)}, {**state, "a": torch.ones(1, 3)},
                    {**state, "b": [1, 2.0, "x", None, 1]}, {**state, "b": [1.0, 2.0, "x", None, True]},
                    {**state, "a": torch.tensor([1.0, 1.0, 1.0 + 2**-23])}):
        assert checkpoint.content_digest(changed) != checkpoint.content_digest(state)
    with pytest.raises(TypeError, match="got a object"):
        checkpoint.content_digest({"x": object()})
    with pytest.raises(ValueError, match=checkpoint.INTEGRITY_KEY):
        checkpoint.save_atomic({checkpoint.INTEGRITY_KEY: 1}, "unused.pt")


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
    assert torch.load(newest)["step"] == steps  # a training checkpoint opens with plain torch.load too
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [run_folder.LOCK_NAME]  # no temporary file
    for name, value in unbroken.model.state_dict().items():
        assert torch.equal(final["model"][name], value), name
    assert torch.equal(final["samplers"][0]["buffer"], unbroken.sampler.buffer)
