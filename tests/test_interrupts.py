"""SIGINT and SIGTERM stop training at the end of the current step, write a checkpoint, say how to resume
and exit with 128 + the signal; the resumed run equals an unbroken one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from gedi_fast.cli import main
from gedi_fast.train import checkpoint, stopping
from gedi_fast.train.trainer import CHECKPOINT_NAME, GEDITrainer, TrainConfig

FLAGS = ["--dataset", "moons", "--steps", "100000", "--set", "hidden=16", "--set", "batch_size=16", "--set",
         "sgld_steps=1", "--set", "buffer_size=64", "--set", "log_every=10", "--set", "checkpoint_every=100000"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_checkpoints_the_step_and_resumes_exactly(tmp_path, signum, one_thread):
    out = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-m", "gedi_fast", "train", "--out", str(out), *FLAGS],
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        for line in process.stderr:  # the log lines: training is under way past step 20
            assert time.monotonic() < deadline, "no log line within 240 s"
            if line.startswith("step 20/"):
                break
        process.send_signal(signum)
        rest = process.stderr.read()
        process.wait(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, rest
    assert "Traceback" not in rest and f"{signal.Signals(signum).name} received: stopping" in rest
    stopped = checkpoint.load(out / CHECKPOINT_NAME)["step"]
    assert 20 <= stopped < 100000
    assert (f"interrupted at step {stopped} of 100000, checkpoint written; resume with: gedi-fast train "
            f"--out {out} --resume") in rest
    assert not (out / "metrics.json").exists()  # an unfinished run is not scored as if it were done

    assert main(["train", "--out", str(out), "--resume", "--steps", str(stopped + 7)]) == 0
    resumed = checkpoint.load(out / CHECKPOINT_NAME)
    unbroken = GEDITrainer(GEDITrainer.saved_state(out)[1], tmp_path / "unbroken")
    unbroken.train(until=stopped + 7)
    assert resumed["step"] == unbroken.step
    for name, value in unbroken.model.state_dict().items():
        assert torch.equal(resumed["model"][name], value), name


def test_stop_is_polled_after_every_step_and_the_handlers_are_restored(tmp_path, one_thread):
    trainer = GEDITrainer(TrainConfig(steps=50, hidden=8, batch_size=8, sgld=dict(steps=1, buffer_size=16),
                                      checkpoint_every=1000, log_every=1000), tmp_path)
    before = signal.getsignal(signal.SIGINT)
    with stopping.stop_on_signals() as request:
        trainer.train(stop=lambda: trainer.step >= 3)
        assert signal.getsignal(signal.SIGINT) == request._handle
    assert signal.getsignal(signal.SIGINT) == before
    assert trainer.stopped_at == trainer.step == 3 and checkpoint.load(tmp_path / CHECKPOINT_NAME)["step"] == 3
    trainer.train(until=5)
    assert trainer.stopped_at is None and trainer.step == 5
