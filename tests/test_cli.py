"""The gedi-fast command line: train writes metrics.json, eval and resume read the run folder."""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest
import torch

from gedi_fast.cli import main
from gedi_fast.train import checkpoint
from gedi_fast.train.config import SETTINGS

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
    [(["train", "--out", "x", "--set", "nope=1"], "--set expects KEY=VALUE with KEY one of"),
     (["train", "--out", "x", "--set", "foo=1"], "lr"),  # the message lists the keys
     (["train", "--out", "x", "--set", "lr=abc"], "--set lr expects a float, got 'abc'"),
     (["train", "--out", "x", "--set", "steps=many"], "--set steps expects a int"),
     (["train", "--out", "x", "--set", "view_noise=loud"], "--set view_noise expects a float")],
)
def test_bad_flags_exit_2_with_one_error_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("gedi-fast: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()  # flags are checked before anything is written


def test_set_help_lists_the_keys_and_version_prints(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for name in SETTINGS:
        assert f"{name}=" in shown, name
    assert "steps=1000" in shown and "sgld_noise=dataset" in shown and "sgld_grad_clamp=none" in shown
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("gedi-fast ")


def test_version_is_answered_without_the_commands_heavy_imports():
    probe = ("import sys; from gedi_fast.command import main; code = main(['--version']); "
             "print(code, [m for m in ('sklearn', 'matplotlib', 'scipy', 'gedi_fast.cli') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    version_line, outcome = result.stdout.strip().splitlines()
    assert version_line == f"gedi-fast {importlib.metadata.version('gedi-fast')} (torch {torch.__version__})"
    assert outcome == "0 []"


@pytest.mark.parametrize("content", [
    lambda path: torch.save({"model": {}}, path),  # torch.save output that is not ours
    lambda path: path.write_text("hello\n"),  # six bytes of text
    lambda path: torch.save([1, 2, 3], path),
    lambda path: torch.save({**{k: 0 for k in ("step", "model", "optimiser", "samplers", "generator", "torch_rng",
                                                "history")}, "config": {"colour": "red"}}, path),
])
def test_a_checkpoint_that_is_not_ours_is_one_clear_line(tmp_path, capsys, content):
    content(tmp_path / "checkpoint.pt")
    assert main(["eval", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gedi-fast: error: ") and "not a gedi_fast" in err and err.count("\n") == 1
    assert main(["train", "--resume", "--out", str(tmp_path)]) == 2
    assert "not a gedi_fast" in capsys.readouterr().err


def test_an_unusable_out_is_found_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["train", "--out", str(blocker / "run"), "--steps", "1000", *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gedi-fast: error: --out ") and "not a writable folder" in err


def test_resume_extends_refuses_a_new_dataset_and_says_when_done(tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "run")
    assert main(["train", "--dataset", "blobs", "--out", out, "--steps", "6", *FAST]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", "--out", out]) == 0
    assert "already at step 6" in capsys.readouterr().err
    reads = []
    load_latest = checkpoint.load_latest
    monkeypatch.setattr(checkpoint, "load_latest", lambda *a, **k: reads.append(a) or load_latest(*a, **k))
    assert main(["train", "--resume", "--out", out, "--steps", "10"]) == 0
    assert len(reads) == 1  # the checkpoint is read and verified once per resume
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 10
    assert main(["train", "--resume", "--out", out, "--dataset", "moons"]) == 2
    assert "--dataset moons differs from the resumed run's blobs" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", out, "--set", "lr=0.5"]) == 2
    assert "a resumed run keeps its lr" in capsys.readouterr().err
    assert main(["train", "--resume", "--out", out, "--steps", "4"]) == 2
    assert "--steps 4 is below the step the run in" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]["steps"] == 10


def test_a_run_without_a_terminal_logs_while_it_trains(tmp_path):
    """stderr to a pipe (CI logs, nohup): a line per log step, then metrics with throughput and wall time."""
    result = subprocess.run([sys.executable, "-m", "gedi_fast", "train", "--dataset", "moons", "--out", str(tmp_path),
                             "--steps", "10", *FAST], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["5/10", "10/10"]
    assert all("loss=" in line and "samples/s" in line and "ETA" in line for line in lines)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["samples_per_s"] > 0 and metrics["train_wall_s"] > 0


def test_set_types_optional_fields_and_clears_them():
    from gedi_fast.train.config import parse_settings

    assert parse_settings(["view_noise=0.25", "sgld_step_size=none", "augmentation=jitter", "steps=7"]) == {
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


def test_a_study_writes_one_row_per_dataset_and_method(tmp_path, monkeypatch):
    import dataclasses

    from gedi_fast.experiments.studies import STUDIES
    from gedi_fast.train import checkpoint

    queue = STUDIES["queue"]
    monkeypatch.setitem(STUDIES, "queue", dataclasses.replace(
        queue, cases=tuple(c for c in queue.cases if c.group in ("blobs", "moons"))))
    report = tmp_path / "queue.md"
    argv = ["study", "queue", "--seeds", "2", "--steps", "3", "--out", str(tmp_path / "runs"), "--report", str(report),
            *FAST]
    assert main(argv) == 0
    text = report.read_text()
    assert "gedi-fast study queue --seeds 2 --steps 3" in text and queue.question in text
    for dataset in ("blobs", "moons"):
        for method in (*queue.methods(dataset), "k-means"):
            assert f"| {dataset} | {method} | 2 | " in text
    assert "not run" not in text and "| digits |" not in text
    queued = checkpoint.load(tmp_path / "runs" / "blobs" / "Sinkhorn_batch_32_queue_512" / "seed1" / "checkpoint.pt")
    assert queued["config"]["batch_size"] == 32 and queued["queues"][0]["filled"] == 3 * 32


def test_triad_scores_do_not_depend_on_parallel_jobs(tmp_path):
    from gedi_fast.experiments import triad
    from gedi_fast.train.trainer import TrainConfig

    base = TrainConfig(batch_size=32, hidden=32, sgld=dict(steps=2, buffer_size=64), log_every=5)
    serial = triad.run(["blobs"], range(2), 4, tmp_path / "a", base, log=lambda _: None)
    parallel = triad.run(["blobs"], range(2), 4, tmp_path / "b", base, log=lambda _: None, jobs=2)
    assert serial.keys() == parallel.keys()
    for key in serial:
        for a, b in zip(serial[key], parallel[key]):
            assert a["nmi"] == pytest.approx(b["nmi"], abs=1e-9), key
            if key[0] != "k-means":  # k-means rows have no network features
                assert a["feature_variance"] == pytest.approx(b["feature_variance"], rel=1e-5), key


def test_set_takes_booleans():
    from gedi_fast.train.config import parse_settings

    assert parse_settings(["tf32=false", "cuda_graph=True"]) == {"tf32": False, "cuda_graph": True}
    with pytest.raises(ValueError, match="--set tf32 expects true or false, got '1'"):
        parse_settings(["tf32=1"])


def test_config_file_reproduces_a_run_and_flags_override_it(tmp_path, capsys):
    first = tmp_path / "first"
    flags = ["--set", "hidden=8", "--set", "batch_size=16", "--set", "sgld_steps=1", "--set", "buffer_size=32",
             "--set", "lr=0.002"]
    assert main(["train", "--dataset", "blobs", "--seed", "3", "--steps", "4", "--out", str(first), *flags]) == 0
    again = tmp_path / "again"
    assert main(["train", "--config", str(first / "metrics.json"), "--out", str(again)]) == 0
    a, b = (checkpoint.load(run / "checkpoint.pt") for run in (first, again))
    assert a["config"] == b["config"]
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name

    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"dataset": "moons", "hidden": 8, "batch_size": 16, "sgld_steps": 1,
                                    "buffer_size": 32, "steps": 9, "temperature": 0.2}))
    assert main(["train", "--config", str(settings), "--out", str(tmp_path / "c"), "--set", "hidden=16",
                 "--steps", "2", "--seed", "5"]) == 0
    saved = checkpoint.load(tmp_path / "c" / "checkpoint.pt")["config"]
    assert (saved["dataset"], saved["hidden"], saved["steps"], saved["seed"], saved["temperature"]) == (
        "moons", 16, 2, 5, 0.2)
    assert saved["sgld"]["steps"] == 1 and saved["sgld"]["buffer_size"] == 32
    capsys.readouterr()


def test_config_file_in_yaml(tmp_path):
    pytest.importorskip("yaml")
    settings = tmp_path / "settings.yaml"
    settings.write_text("dataset: moons\nhidden: 8\nbatch_size: 16\nsgld_steps: 1\nbuffer_size: 32\nsteps: 2\n")
    assert main(["train", "--config", str(settings), "--out", str(tmp_path / "run")]) == 0
    assert checkpoint.load(tmp_path / "run" / "checkpoint.pt")["config"]["hidden"] == 8


@pytest.mark.parametrize("content, message", [
    ('{"colour": "red"}', "unknown settings colour"),
    ('{"hidden": ', "is not valid JSON"),
    ('[1, 2]', "must hold a mapping of settings, got list"),
])
def test_bad_config_files_are_one_clear_line(tmp_path, capsys, content, message):
    settings = tmp_path / "settings.json"
    settings.write_text(content)
    assert main(["train", "--config", str(settings), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"--config {settings}" in err and message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()
    assert main(["train", "--config", str(tmp_path / "missing.json"), "--out", str(tmp_path / "run")]) == 2
    assert "cannot read it" in capsys.readouterr().err
    assert main(["train", "--config", str(settings), "--out", str(tmp_path), "--resume"]) == 2
    assert "--config starts a new run" in capsys.readouterr().err


def test_reports_default_to_the_run_folder_and_record_no_local_paths(tmp_path, monkeypatch):
    from gedi_fast import cli
    from gedi_fast.experiments.report import portable

    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    assert portable(str(work / "runs" / "x")) == "runs/x"
    assert portable(f"--out={work / 'a'}") == "--out=a"
    assert portable(str(home / "data")) == "~/data"
    assert portable("/srv/data") == "/srv/data" and portable("moons") == "moons"
    assert main(["triad", "--datasets", "blobs", "--seeds", "1", "--steps", "2", "--out", str(work / "runs"),
                 "--set", f"data_root={home / 'data'}", *FAST]) == 0
    text = (work / "runs" / "RESULTS.md").read_text()
    assert "--out runs --set data_root=~/data" in text and str(tmp_path) not in text.split("Run:")[0]
    for command in (["triad"], ["study", "queue"], ["images"]):
        assert cli.parser().parse_args(command).report is None  # the default is under --out, never docs/
