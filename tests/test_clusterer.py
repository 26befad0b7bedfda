"""A trained run read back and used on new data: load_run, assign (Python and CLI), export."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from gedi_fast import reference
from gedi_fast.cli import main
from gedi_fast.train import checkpoint
from gedi_fast.train.clusterer import export, load_run
from gedi_fast.train.data import Dataset
from gedi_fast.train.trainer import CHECKPOINT_NAME, GEDITrainer, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")
MOONS = dict(steps=20, batch_size=32, hidden=32, sgld=dict(steps=2, buffer_size=64), log_every=10,
             checkpoint_every=10, temperature=0.3)


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory) -> tuple[GEDITrainer, object]:
    trainer = GEDITrainer(TrainConfig(**MOONS), tmp_path_factory.mktemp("moons"))
    trainer.train()
    trainer.save()
    return trainer, trainer.out


def grey_images(seed: int = 0) -> Dataset:
    """11 x 13 8-bit grey images (odd sizes) scaled as the image loaders scale them."""
    generator = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (37, 1, 11, 13), generator=generator, dtype=torch.uint8)
    x = (raw.float() - 127.5) / 127.5
    y = torch.randint(0, 3, (37,), generator=generator)
    return Dataset("odd-images", "image", x[:30], y[:30], x[30:], y[30:], 3, augmentation="affine", view_noise=0.02,
                   input_offset=127.5, input_scale=127.5)


def raw_vectors(trainer: GEDITrainer) -> torch.Tensor:
    """The test split in the data's own units, as a user would hold new data."""
    return trainer.dataset.test_x * trainer.dataset.input_scale + trainer.dataset.input_offset


def expected(trainer: GEDITrainer, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference formulas in float64 on the trainer's own model and standardised inputs."""
    with torch.no_grad():
        z = trainer.model.eval()(x).double()
    log_q, _ = reference.logits.scaled_log_softmax(z, trainer.config.temperature)
    return log_q.argmax(1), log_q.exp(), reference.logits.energy(z, trainer.config.temperature)


def test_load_run_gives_the_config_step_model_and_input_statistics(moons_run):
    trainer, out = moons_run
    run = load_run(out)
    assert run.config == trainer.config and run.step == trainer.step == 20
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(run.model.state_dict()[name], value), name
    assert torch.equal(run.clusterer.offset, trainer.dataset.input_offset)
    assert torch.equal(run.clusterer.scale, trainer.dataset.input_scale)


def test_assign_on_raw_vectors_matches_the_float64_formulas(moons_run):
    trainer, out = moons_run
    result = load_run(out).assign(raw_vectors(trainer).double(), batch_size=7)  # batches of an odd size
    clusters, probabilities, energies = expected(trainer, trainer.dataset.test_x)
    assert torch.equal(result.clusters, clusters)
    torch.testing.assert_close(result.probabilities.double(), probabilities, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.energies.double(), energies, rtol=1e-5, atol=1e-5)
    one = load_run(out).assign(raw_vectors(trainer)[:1].numpy())  # B = 1, from numpy
    assert one.clusters.shape == (1,) and one.probabilities.shape == (1, 2)


def test_assign_on_8_bit_images_in_either_layout(tmp_path):
    dataset = grey_images()
    trainer = GEDITrainer(TrainConfig(dataset="odd-images", steps=3, batch_size=6, width=8, stem_stride=2,
                                      sgld_samples=4, sgld=dict(steps=2, buffer_size=16), log_every=3,
                                      checkpoint_every=3, precision="fp32"), tmp_path, dataset)
    trainer.train()
    trainer.save()
    raw = (dataset.test_x * 127.5 + 127.5).round().to(torch.uint8)
    run = load_run(tmp_path)
    clusters, probabilities, energies = expected(trainer, dataset.test_x)
    for layout in (raw, raw[:, 0], raw.numpy()):  # N x 1 x H x W, N x H x W, numpy
        result = run.assign(layout)
        assert torch.equal(result.clusters, clusters)
        torch.testing.assert_close(result.probabilities.double(), probabilities, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(result.energies.double(), energies, rtol=1e-4, atol=1e-4)


def test_checkpoints_without_input_statistics_take_them_from_the_dataset(moons_run, tmp_path):
    trainer, out = moons_run
    state = checkpoint.load(out / CHECKPOINT_NAME)
    del state["inputs"]
    checkpoint.save_atomic(state, tmp_path / CHECKPOINT_NAME)
    raw = raw_vectors(trainer)
    old, new = load_run(tmp_path).assign(raw), load_run(out).assign(raw)
    assert torch.equal(old.clusters, new.clusters) and torch.equal(old.probabilities, new.probabilities)


@pytest.mark.parametrize("format,load", [("torch.export", lambda p: torch.export.load(p).module()),
                                         ("torchscript", torch.jit.load)])
def test_an_export_loads_without_gedi_fast_and_gives_the_same_outputs(moons_run, tmp_path, format, load):
    trainer, out = moons_run
    run = load_run(out)
    program = load(str(export(run.clusterer, tmp_path / "clusterer.bin", format)))
    for rows in (1, 13):  # any number of rows, one included
        raw = raw_vectors(trainer)[:rows].float()
        for got, want in zip(program(raw), run.clusterer(raw)):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


BAD_ROWS = [
    (torch.randn(4, 3), ValueError, r"raw must hold N >= 1 rows of shape \(2,\).*got shape \(4, 3\)"),
    (torch.randn(2), ValueError, r"got shape \(2,\)"),
    (torch.empty(0, 2), ValueError, r"got shape \(0, 2\)"),
    (torch.tensor([[1.0, float("nan")]]), ValueError, "raw holds NaN or infinite values"),
    (torch.ones(3, 2, dtype=torch.bool), TypeError, "real numbers"),
    (np.array([["a", "b"]]), TypeError, "must hold numbers"),
    ([[1.0, 2.0]], TypeError, "tensor or a numpy array, got list"),
]


@pytest.mark.parametrize("rows,error,message", BAD_ROWS, ids=[case[2][:24] for case in BAD_ROWS])
def test_bad_rows_name_the_argument(moons_run, rows, error, message):
    with pytest.raises(error, match=message):
        load_run(moons_run[1]).assign(rows)


def test_bad_batch_size_and_format_name_the_argument(moons_run, tmp_path):
    run = load_run(moons_run[1])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        run.assign(torch.randn(3, 2), batch_size=0)
    with pytest.raises(ValueError, match="format must be one of"):
        export(run.clusterer, tmp_path / "x", "onnx")
    with pytest.raises(FileNotFoundError, match="not found; train a run there first"):
        load_run(tmp_path)


@pytest.mark.parametrize("suffix", [".npz", ".pt", ".csv"])
def test_cli_assign_writes_what_the_python_api_gives(moons_run, tmp_path, capsys, suffix):
    trainer, out = moons_run
    raw = raw_vectors(trainer).numpy()
    np.save(tmp_path / "rows.npy", raw)
    target = tmp_path / f"assigned{suffix}"
    assert main(["assign", "--out", str(out), "--input", str(tmp_path / "rows.npy"), "--output", str(target)]) == 0
    assert f"assigned {len(raw)} rows to 2 clusters" in capsys.readouterr().out
    want = load_run(out).assign(raw)
    if suffix == ".npz":
        got = np.load(target)
        clusters, probabilities, energies = got["cluster"], got["probabilities"], got["energy"]
    elif suffix == ".pt":
        got = torch.load(target)
        clusters, probabilities, energies = got["cluster"], got["probabilities"], got["energy"]
    else:
        table = np.loadtxt(target, delimiter=",", skiprows=1)
        clusters, energies, probabilities = table[:, 0], table[:, 1], table[:, 2:]
    np.testing.assert_array_equal(np.asarray(clusters), want.clusters.numpy())
    np.testing.assert_allclose(np.asarray(probabilities), want.probabilities.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(energies), want.energies.numpy(), rtol=1e-6, atol=1e-6)


def test_cli_assign_reads_a_pt_tensor_and_export_writes_a_loadable_program(moons_run, tmp_path, capsys):
    trainer, out = moons_run
    torch.save(raw_vectors(trainer), tmp_path / "rows.pt")
    assert main(["assign", "--out", str(out), "--input", str(tmp_path / "rows.pt"),
                 "--output", str(tmp_path / "a.pt")]) == 0
    assert torch.equal(torch.load(tmp_path / "a.pt")["cluster"], load_run(out).assign(raw_vectors(trainer)).clusters)
    assert main(["export", "--out", str(out), "--output", str(tmp_path / "c.ts"), "--format", "torchscript"]) == 0
    assert "torch.jit.load(PATH)" in capsys.readouterr().out
    assert torch.equal(torch.jit.load(str(tmp_path / "c.ts"))(raw_vectors(trainer))[0],
                       load_run(out).assign(raw_vectors(trainer)).clusters)


def test_cli_assign_bad_files_are_one_line_errors(moons_run, tmp_path, capsys):
    out = str(moons_run[1])
    np.save(tmp_path / "wide.npy", np.zeros((3, 5)))
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object))
    torch.save({"x": torch.zeros(2, 2)}, tmp_path / "dict.pt")
    (tmp_path / "rows.txt").write_text("1,2\n")
    cases = [
        ([str(tmp_path / "missing.npy"), "a.npz"], "--input .*missing.npy: no such file"),
        ([str(tmp_path / "rows.txt"), "a.npz"], "expected a .npy or .pt file"),
        ([str(tmp_path / "wide.npy"), "a.npz"], r"--input .*wide.npy must hold N >= 1 rows of shape \(2,\)"),
        ([str(tmp_path / "objects.npy"), "a.npz"], "is not a numeric .npy array"),
        ([str(tmp_path / "dict.pt"), "a.npz"], "must hold one tensor, got a dict"),
        ([str(tmp_path / "wide.npy"), "a.json"], "--output .*a.json: the suffix says the format"),
    ]
    for (given, output), message in cases:
        assert main(["assign", "--out", out, "--input", given, "--output", str(tmp_path / output)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("gedi-fast: error:") and len(err.strip().splitlines()) == 1, err
        assert re.search(message, err), err


def test_a_torch_export_runs_in_a_python_that_never_imports_gedi_fast(moons_run, tmp_path):
    trainer, out = moons_run
    run = load_run(out)
    path = export(run.clusterer, tmp_path / "clusterer.pt2")
    raw = raw_vectors(trainer).float()
    torch.save(raw, tmp_path / "raw.pt")
    script = ("import sys, torch; program = torch.export.load(sys.argv[1]).module(); "
              "torch.save(program(torch.load(sys.argv[2])), sys.argv[3]); assert 'gedi_fast' not in sys.modules")
    subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "raw.pt"), str(tmp_path / "got.pt")],
                   cwd=tmp_path, check=True, env={**os.environ, "PYTHONPATH": ""})
    for got, want in zip(torch.load(tmp_path / "got.pt"), run.clusterer(raw)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
