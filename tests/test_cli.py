"""The gedi-fast command line: train writes metrics.json, eval and resume read the run folder."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from gedi_fast.cli import main

FAST = ["--set", "batch_size=32", "--set", "hidden=32", "--set", "sgld_steps=2", "--set", "buffer_size=64",
        "--set", "log_every=5"]


def test_train_writes_metrics_then_eval_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "blobs", "--out", str(out), "--steps", "10", "--seed", "3", *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"nmi", "ari", "acc", "steps"} <= set(metrics) and metrics["steps"] == 10
    assert metrics["config"]["seed"] == 3 and metrics["config"]["hidden"] == 32
    for name in ("assignments.png", "samples.png", "terms.png", "cluster_sizes.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "blobs: nmi=" in capsys.readouterr().out
    assert main(["eval", "--out", str(out)]) == 0
    assert "steps=10" in capsys.readouterr().out


def test_python_dash_m_entry_point(tmp_path):
    result = subprocess.run([sys.executable, "-m", "gedi_fast", "train", "--dataset", "moons", "--out", str(tmp_path),
                             "--steps", "5", *FAST], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "metrics.json").read_text())["steps"] == 5


@pytest.mark.parametrize(
    "argv,message",
    [(["train", "--out", "x", "--set", "nope=1"], "--set expects key=value"),
     (["train", "--out", "x", "--set", "steps=many"], "--set steps expects a int"),
     (["train", "--out", "x", "--set", "view_noise=loud"], "--set view_noise expects a float")],
)
def test_bad_flags_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert message in str(exc.value)


def test_set_types_optional_fields_and_clears_them():
    from gedi_fast.cli import _overrides

    assert _overrides(["view_noise=0.25", "sgld_step_size=none", "augmentation=jitter", "steps=7"]) == {
        "view_noise": 0.25, "sgld_step_size": None, "augmentation": "jitter", "steps": 7}


def test_missing_dataset_files_and_checkpoint_are_clear_errors(tmp_path, capsys):
    assert main(["train", "--dataset", "cifar10", "--out", str(tmp_path), "--steps", "1"]) == 2
    assert "--data-root" in capsys.readouterr().err
    assert main(["eval", "--out", str(tmp_path / "none")]) == 2
    assert "not found" in capsys.readouterr().err


def test_triad_writes_a_table_with_every_variant_and_kmeans(tmp_path, capsys):
    report = tmp_path / "RESULTS.md"
    argv = ["triad", "--datasets", "blobs", "--seeds", "2", "--steps", "3", "--out", str(tmp_path / "runs"),
            "--report", str(report), *FAST]
    assert main(argv) == 0
    text = report.read_text()
    assert "gedi-fast triad --datasets blobs --seeds 2 --steps 3" in text
    for row in ("GEDI (full)", "without gen", "without inv", "without prior", "GEDI, Sinkhorn targets", "k-means"):
        assert f"| {row}" in text
    assert text.count("+-") == 12  # NMI and ACC for each of the six rows


def test_triad_scores_do_not_depend_on_parallel_jobs(tmp_path):
    from gedi_fast import triad
    from gedi_fast.trainer import TrainConfig

    base = TrainConfig(batch_size=32, hidden=32, sgld_steps=2, buffer_size=64, log_every=5)
    serial = triad.run(["blobs"], range(2), 4, tmp_path / "a", base, log=lambda _: None)
    parallel = triad.run(["blobs"], range(2), 4, tmp_path / "b", base, log=lambda _: None, jobs=2)
    assert serial.keys() == parallel.keys()
    for key in serial:
        for a, b in zip(serial[key], parallel[key]):
            assert a["nmi"] == pytest.approx(b["nmi"], abs=1e-9), key
            if key[0] != "k-means":  # k-means rows have no network features
                assert a["feature_variance"] == pytest.approx(b["feature_variance"], rel=1e-5), key


def test_set_takes_booleans():
    from gedi_fast.cli import _overrides

    assert _overrides(["tf32=false", "cuda_graph=True"]) == {"tf32": False, "cuda_graph": True}
    with pytest.raises(SystemExit, match="--set tf32 expects true or false, got '1'"):
        _overrides(["tf32=1"])
