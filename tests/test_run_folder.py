"""Run folders: a new run never silently replaces one, --overwrite says it may, and one process at a time
trains into a folder (a lock that a killed holder does not leave behind)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from gedi_fast.cli import main
from gedi_fast.train import checkpoint, run_folder

TINY = ["--steps", "2", "--set", "hidden=8", "--set", "batch_size=16", "--set", "sgld_steps=1",
        "--set", "buffer_size=32"]


def test_a_new_run_into_a_folder_holding_one_is_refused(tmp_path, capsys, one_thread):
    run = tmp_path / "digits"
    assert main(["train", "--dataset", "digits", "--out", str(run), *TINY]) == 0
    saved = (run / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--dataset", "moons", "--out", str(run), *TINY]) == 2
    err = capsys.readouterr().err
    assert f"--out {run} already holds a run (checkpoint.pt, metrics.json); pass --resume" in err
    assert "--overwrite to replace it" in err and err.count("\n") == 1
    assert (run / "checkpoint.pt").read_bytes() == saved


def test_a_foreign_checkpoint_is_refused_too(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"someone else's weights")
    assert main(["train", "--dataset", "moons", "--out", str(tmp_path), *TINY]) == 2
    assert "already holds a run (checkpoint.pt)" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"someone else's weights"


def test_overwrite_replaces_the_old_run_entirely(tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--out", str(run), *TINY, "--set", "checkpoint_every=1"]) == 0
    assert checkpoint.previous_path(run / "checkpoint.pt").exists()
    assert main(["train", "--dataset", "moons", "--out", str(run), *TINY, "--overwrite"]) == 0
    state = checkpoint.load(run / "checkpoint.pt")
    assert state["config"]["dataset"] == "moons"
    assert not checkpoint.previous_path(run / "checkpoint.pt").exists()  # the digits run's is gone too
    assert "moons:" in capsys.readouterr().out


def test_a_second_process_on_the_same_folder_fails_at_once(tmp_path, capsys):
    with run_folder.exclusive(tmp_path):
        started = time.monotonic()
        assert main(["train", "--dataset", "moons", "--out", str(tmp_path), *TINY]) == 2
        assert time.monotonic() - started < 30
    assert f"--out {tmp_path} is in use by another gedi-fast process (pid {os.getpid()})" in capsys.readouterr().err
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import pathlib, sys, time\nfrom gedi_fast.train import run_folder\n"
        f"with run_folder.exclusive(pathlib.Path({str(tmp_path)!r})):\n"
        "    print('locked', flush=True)\n    time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        try:
            with run_folder.exclusive(tmp_path):
                raise AssertionError("the lock was taken twice")
        except ValueError as err:
            assert f"pid {holder.pid}" in str(err)
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    with run_folder.exclusive(tmp_path):
        assert (tmp_path / run_folder.LOCK_NAME).read_text() == str(os.getpid())


def test_resume_auto_starts_then_continues_in_the_same_folder(tmp_path, one_thread):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "moons", "--out", str(run), "--resume", "auto", *TINY]) == 0
    assert main(["train", "--dataset", "moons", "--out", str(run), "--resume", "auto", *TINY[2:], "--steps", "4"]) == 0
    assert checkpoint.load(run / "checkpoint.pt")["step"] == 4
    assert torch.is_tensor(checkpoint.load(run / "checkpoint.pt")["model"]["head.weight"])


def test_a_run_logs_every_log_step_to_log_jsonl_and_a_resume_does_not_repeat_steps(tmp_path, one_thread):
    run = tmp_path / "run"
    flags = ["--dataset", "moons", "--out", str(run), "--set", "hidden=8", "--set", "batch_size=16",
             "--set", "sgld_steps=1", "--set", "buffer_size=32", "--set", "log_every=2"]
    assert main(["train", *flags, "--steps", "6"]) == 0
    lines = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6]
    assert {"loss", "gen", "inv", "prior", "energy_reg", "samples_per_s"} <= set(lines[0])
    with open(run / "log.jsonl", "a") as f:  # what a run killed after its step-6 checkpoint left behind
        f.write(json.dumps({**lines[-1], "step": 8}) + "\n" + '{"step": 10, "lo')
    assert main(["train", "--out", str(run), "--resume", "--steps", "8"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]
