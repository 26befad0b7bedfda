"""Trainer: short runs, evaluation keys, atomic checkpoints, and resume equal to an unbroken run."""
from __future__ import annotations

import math
import pathlib
import shutil

import pytest
import torch

from gedi_fast import reference
from gedi_fast.train import checkpoint, metrics
from gedi_fast.train.augment import AUGMENTATIONS, affine_images, augment_images, rotate_and_jitter
from gedi_fast.train.data import load_dataset
from gedi_fast.train.trainer import CHECKPOINT_NAME, HEAD_INIT_ROWS, GEDITrainer, TrainConfig

SMALL = dict(steps=20, batch_size=32, hidden=32, sgld=dict(steps=2, buffer_size=100), log_every=5, checkpoint_every=100)


def test_short_run_logs_terms_and_evaluates(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL), tmp_path)
    history = trainer.train()
    assert [h["step"] for h in history] == [5, 10, 15, 20]
    assert {"loss", "gen", "inv", "prior", "energy_reg", "energy_gap", "samples_per_s"} <= set(history[-1])
    scores = trainer.evaluate()
    assert scores["steps"] == 20 and 0 <= scores["nmi"] <= 1 and 0 <= scores["acc"] <= 1
    assert {"largest_cluster_share", "usage_entropy", "view_agreement", "feature_effective_rank"} <= set(scores)
    assert (tmp_path / CHECKPOINT_NAME).is_file()


@pytest.mark.parametrize("start,gen_delay,positives", [("uniform", 0, "views"), ("gaussian", 0, "views"),
                                                      ("gaussian", 12, "views"), ("gaussian", 12, "data")])
def test_resume_gives_the_same_parameters_as_an_unbroken_run(tmp_path, start, gen_delay, positives):
    config = TrainConfig(**SMALL | dict(sgld=SMALL["sgld"] | dict(start=start), gen_delay=gen_delay,
                                        gen_positives=positives))
    straight = GEDITrainer(config, tmp_path / "a")
    straight.train()
    broken = GEDITrainer(config, tmp_path / "b")
    broken.train(until=9)
    broken.evaluate()  # evaluating mid-run must not change what training draws next
    broken.save()
    resumed = GEDITrainer.resume(tmp_path / "b")
    assert resumed.step == 9
    resumed.train()
    for (name, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(straight.sampler.buffer, resumed.sampler.buffer)


@pytest.mark.parametrize("samples", [True, False])
def test_gen_positives_data_weighs_gen_on_the_batch_and_clustering_on_the_views(tmp_path, samples):
    config = TrainConfig(**SMALL | dict(gen_positives="data", gen_weight=0.7, energy_reg=0.2, inv_weight=1.3,
                                        prior_weight=2.0))
    trainer = GEDITrainer(config, tmp_path)
    gen = torch.Generator().manual_seed(5)
    x = trainer.train_x[torch.randint(0, len(trainer.train_x), (13,), generator=gen)]
    view1, view2 = trainer.views(x, gen)
    positives = trainer.positives(x, gen)
    noise = positives - x  # the batch itself with the view noise: no other transform
    assert noise.std().item() == pytest.approx(trainer.view_noise, rel=0.25) and noise.mean().abs() < 0.05
    drawn = trainer.sampler.sample(trainer.model, 7) if samples else None
    loss, terms = trainer.forward_loss(view1, view2, drawn, positives)
    model = trainer.model.double()
    z1, z2, zp = (model(v.double()) for v in (view1, view2, positives))
    zn = None if drawn is None else model(drawn.double())
    clustering = reference.gedi_terms(z1, z2, None, config.temperature)
    generative = reference.gedi_terms(zp, zp, zn, config.temperature)
    expected = dict(inv=clustering["inv"], prior=clustering["prior"], gen=generative["gen"],
                    energy_reg=generative["energy_reg"], energy_data=generative["energy_data"])
    for name, value in expected.items():
        torch.testing.assert_close(terms[name].double(), value, rtol=1e-5, atol=1e-6, msg=name)
    total = 1.3 * expected["inv"] + 2.0 * expected["prior"] + 0.7 * expected["gen"] + 0.2 * expected["energy_reg"]
    torch.testing.assert_close(loss.double(), total, rtol=1e-5, atol=1e-6)
    assert trainer.term_weights == dict(gen=0.7, inv=1.3, prior=2.0, energy_reg=0.2)
    if not samples:  # before the chain starts (gen_delay): gen 0, E^2 on the positives alone
        assert terms["gen"] == 0 and math.isnan(terms["energy_neg"])


def test_gen_positives_views_or_no_sampler_draw_no_positives(tmp_path):
    x = torch.zeros(4, 2)
    plain = GEDITrainer(TrainConfig(**SMALL), tmp_path / "a")
    assert plain.gen_loss_fn is None and plain.positives(x, torch.Generator()) is None
    without_gen = GEDITrainer(TrainConfig(**SMALL | dict(gen_positives="data", gen_weight=0.0, energy_reg=0.0)),
                              tmp_path / "b")
    assert without_gen.sampler is None and without_gen.positives(x, torch.Generator()) is None
    with pytest.raises(ValueError, match="gen_positives must be one of"):
        TrainConfig(gen_positives="raw")


def test_training_without_generative_term_has_no_sampler(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL | dict(gen_weight=0.0, energy_reg=0.0, steps=5)), tmp_path)
    trainer.train()
    assert trainer.sampler is None and math.isnan(trainer.history[-1]["energy_gap"])


def test_checkpoints_are_atomic_and_corruption_is_detected(tmp_path):
    path = tmp_path / "c.pt"
    checkpoint.save_atomic({"x": torch.arange(3)}, path)
    assert torch.equal(checkpoint.load(path)["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="is truncated"):
        checkpoint.load(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        checkpoint.load(tmp_path / "missing.pt")


def test_image_augmentations_are_reproducible_and_in_range():
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    a = augment_images(x, torch.Generator().manual_seed(0))
    b = augment_images(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b) and a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, augment_images(x, torch.Generator().manual_seed(1)))


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(steps=0), "steps must be >= 1"), (dict(lr=0.0), "lr must be > 0"), (dict(clusters=1), "clusters must be 0"),
     (dict(assignment="kmeans"), "assignment must be one of"), (dict(view_noise=-1.0), "view_noise must be >= 0"),
     (dict(precision="fp8"), "precision must be one of"), (dict(augmentation="mixup"), "augmentation must be one of"),
     (dict(adam_beta1=1.0), "adam_beta1 must lie in"), (dict(sgld=dict(grad_clamp=0.0)), "grad_clamp must be > 0"),
     (dict(lr_warmup=-1), "lr_warmup must be >= 0"), (dict(head_spread=-0.5), "head_spread must be >= 0"),
     (dict(gen_delay=-1), "gen_delay must be >= 0"), (dict(view_warmup=-3), "view_warmup must be >= 0"),
     (dict(view_warmup=2.5), "view_warmup must be an int")],
)
def test_bad_config_names_the_field(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**kwargs)


def test_adam_beta1_and_the_gradient_clamp_reach_the_optimiser_and_the_chain(tmp_path):
    config = TrainConfig.from_settings(steps=1, hidden=8, batch_size=8, adam_beta1=0.5, sgld_grad_clamp=0.02,
                                       sgld_steps=1, buffer_size=16)
    trainer = GEDITrainer(config, tmp_path)
    assert trainer.optimiser.param_groups[0]["betas"] == (0.5, 0.999)
    assert trainer.sampler.config.grad_clamp == 0.02


def test_lr_warmup_ramps_the_learning_rate_then_holds_it(tmp_path):
    config = TrainConfig.from_settings(steps=6, hidden=8, batch_size=8, lr=0.04, lr_warmup=4, sgld_steps=1,
                                       buffer_size=16, log_every=1)
    trainer = GEDITrainer(config, tmp_path)
    seen = []
    for _ in range(6):
        trainer.train_step()
        seen.append(trainer.optimiser.param_groups[0]["lr"])
    assert seen == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.04, 0.04])


def test_gen_delay_trains_without_samples_then_starts_the_chain(tmp_path):
    config = TrainConfig.from_settings(steps=4, hidden=8, batch_size=8, gen_delay=2, sgld_steps=1, buffer_size=16,
                                       log_every=1)
    trainer = GEDITrainer(config, tmp_path)
    start = trainer.sampler.buffer.clone()
    delayed = trainer.train(until=2)  # through the loop's divergence check: no samples is not a divergence
    assert [r["step"] for r in delayed] == [1, 2] and torch.equal(trainer.sampler.buffer, start)
    assert all(r["gen"] == 0 and math.isnan(r["energy_neg"]) and r["energy_reg"] > 0 for r in delayed)
    chained = trainer.train()[2:]
    assert [r["step"] for r in chained] == [3, 4] and not torch.equal(trainer.sampler.buffer, start)
    assert all(r["gen"] != 0 and math.isfinite(r["energy_neg"]) for r in chained)


@pytest.mark.parametrize("name,shape", [("affine", (40, 1, 28, 28)), ("image", (40, 3, 9, 7)), ("rotation", (300, 2))])
def test_augmentation_strength_runs_from_the_input_to_the_full_views(name, shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2 - 1
    view = AUGMENTATIONS[name].view
    none = view(x, 0.0, torch.Generator().manual_seed(1), 0.0)
    torch.testing.assert_close(none, x, atol=1e-6, rtol=0)  # strength 0: the input itself (no view noise asked)
    full = view(x, 0.0, torch.Generator().manual_seed(1), 1.0)
    default = {"affine": affine_images, "image": augment_images, "rotation": rotate_and_jitter}[name]
    args = (x, 0.0, torch.Generator().manual_seed(1)) if name == "rotation" else (x, torch.Generator().manual_seed(1))
    assert torch.equal(full, default(*args, **({} if name == "rotation" else {"noise": 0.0})))  # 1: as before
    moved = [(view(x, 0.0, torch.Generator().manual_seed(1), s) - x).abs().mean().item() for s in (0.0, 0.3, 1.0)]
    assert moved[0] < 1e-6 < moved[1] < moved[2]
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strength must"):
            view(x, 0.0, torch.Generator(), bad)


def test_view_warmup_ramps_the_augmentation_in(tmp_path, monkeypatch):
    config = TrainConfig.from_settings(steps=6, hidden=8, batch_size=8, view_warmup=4, sgld_steps=1, buffer_size=16)
    trainer = GEDITrainer(config, tmp_path)
    seen = []
    monkeypatch.setattr(trainer, "views", lambda x, generator, strength=1.0: (seen.append(strength), (x, x))[1])
    for _ in range(6):
        trainer.train_step()
    assert seen == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert GEDITrainer(TrainConfig.from_settings(steps=1, hidden=8), tmp_path / "off").view_strength(0) == 1.0


def test_head_spread_initialises_the_head_and_the_log_shows_the_spread(tmp_path):
    base = dict(steps=2, hidden=8, batch_size=16, sgld_steps=1, buffer_size=16, log_every=1, temperature=0.5)
    plain = GEDITrainer(TrainConfig.from_settings(**base), tmp_path / "plain")
    spread = GEDITrainer(TrainConfig.from_settings(**base, head_spread=3.0), tmp_path / "spread")
    rows = spread.train_x[:HEAD_INIT_ROWS]
    assert torch.equal(plain.model.body[0].weight, spread.model.body[0].weight)  # same seed: only the head differs
    assert metrics.logit_spread(spread.model(rows), 0.5).item() == pytest.approx(3.0, rel=1e-4)
    assert metrics.logit_spread(plain.model(rows), 0.5).item() != pytest.approx(3.0, rel=0.1)
    history = spread.train()
    assert [r["step"] for r in history] == [1, 2] and all(r["logit_spread"] > 0 for r in history)


def test_rotation_views_keep_the_radius_and_replay():
    x = torch.randn(500, 2, dtype=torch.float64)
    a = rotate_and_jitter(x, 0.0, torch.Generator().manual_seed(0))
    assert torch.allclose(a.norm(dim=1), x.norm(dim=1), atol=1e-12)
    assert (a - x).norm(dim=1).mean() > 0.5  # really rotated, by angles spread over the circle
    assert torch.equal(a, rotate_and_jitter(x, 0.0, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="N x 2 points"):
        rotate_and_jitter(torch.randn(4, 3), 0.1, torch.Generator())


def test_views_and_sgld_follow_the_dataset_unless_overridden(tmp_path):
    circles = GEDITrainer(TrainConfig(**SMALL | dict(dataset="circles")), tmp_path / "c")
    assert (circles.augmentation, circles.view_noise) == ("rotation", 0.1)
    assert (circles.sampler.config.step_size, circles.sampler.config.noise_std) == (0.01, 0.1)
    moons = GEDITrainer(TrainConfig(**SMALL | dict(augmentation="jitter", view_noise=0.3, sgld=dict(steps=2, step_size=0.5))),
                        tmp_path / "m")
    assert (moons.augmentation, moons.view_noise, moons.sampler.config.step_size) == ("jitter", 0.3, 0.5)
    with pytest.raises(ValueError, match="augmentation 'image' does not fit dataset 'moons'"):
        GEDITrainer(TrainConfig(**SMALL | dict(augmentation="image")), tmp_path / "x")
    with pytest.raises(ValueError, match="augmentation 'rotation' does not fit dataset 'digits'"):
        GEDITrainer(TrainConfig(**SMALL | dict(dataset="digits", augmentation="rotation")), tmp_path / "y")
    assert load_dataset("digits").view_noise == 1.0


def test_bf16_autocast_trains_with_fp32_loss(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL | dict(steps=4, log_every=2, precision="bf16")), tmp_path)
    with trainer.autocast():
        assert trainer.model(trainer.train_x[:3]).dtype == torch.bfloat16
    values = trainer.train_step()
    assert values["loss"].dtype == torch.float32 and torch.isfinite(values["loss"])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_the_chain_draws_sgld_samples_negatives_per_step(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL | dict(sgld_samples=5)), tmp_path)
    sizes = []
    sample = trainer.sampler.sample
    trainer.sampler.sample = lambda model, n: sizes.append(n) or sample(model, n)
    trainer.train_step()
    assert sizes == [5]


def test_speed_switches_are_checked_and_leave_the_cpu_alone(tmp_path):
    from gedi_fast.precision import tf32_state

    for name in ("cuda_graph", "tf32", "compile_step"):
        with pytest.raises(TypeError, match=f"{name} must be True or False"):
            TrainConfig(**{name: "yes"})
    before = tf32_state(), torch.get_float32_matmul_precision()
    trainer = GEDITrainer(TrainConfig(**SMALL), tmp_path)
    assert not trainer.sampler.graphed  # CUDA graphs on CUDA only: the CPU chain runs eagerly
    trainer.train_step()
    assert (tf32_state(), torch.get_float32_matmul_precision()) == before


def test_a_checkpoint_with_an_old_flat_config_resumes_with_the_same_chain(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL | dict(steps=5)), tmp_path)
    trainer.train()
    state = checkpoint.load(tmp_path / CHECKPOINT_NAME)
    flat = {key: value for key, value in state["config"].items() if key not in ("sgld", "sinkhorn_eps", "sinkhorn_iters")}
    state["config"] = flat | dict(sgld_steps=2, sgld_step_size=None, sgld_noise=None, buffer_size=100, reinit_prob=0.05)
    checkpoint.save_atomic(state, tmp_path / CHECKPOINT_NAME)
    resumed = GEDITrainer.resume(tmp_path, steps=6)
    assert resumed.config.sgld == dict(steps=2, buffer_size=100, reinit_prob=0.05)
    assert resumed.sampler.config == trainer.sampler.config and resumed.step == 5
    assert resumed.config.sinkhorn_iters == 3  # what runs saved without the field had; new runs default to 10
    resumed.train()
    assert resumed.step == 6


def test_flat_sgld_settings_set_the_nested_fields_and_none_leaves_them_to_the_dataset(tmp_path):
    config = TrainConfig.from_settings(sgld_steps=3, sgld_step_size=0.5, sgld_noise=None, buffer_size=64)
    assert config.sgld == dict(steps=3, step_size=0.5, buffer_size=64, reinit_prob=0.05)
    assert (config.setting("sgld_steps"), config.setting("sgld_noise"), config.setting("hidden")) == (3, None, 256)
    assert config.with_settings(sgld_step_size=None).sgld == dict(steps=3, buffer_size=64, reinit_prob=0.05)
    moons = load_dataset("moons")
    chain = config.sgld_config(moons.sgld)
    assert (chain.steps, chain.step_size, chain.noise_std, chain.buffer_size) == (3, 0.5, 0.1, 64)
    assert (chain.init_low, chain.init_high) == (float(moons.train_x.min()), float(moons.train_x.max()))
    with pytest.raises(ValueError, match="sgld must map SGLDConfig fields"):
        TrainConfig(sgld=dict(stepz=2))
    with pytest.raises(ValueError, match="sgld: steps must be >= 0"):
        TrainConfig.from_settings(sgld_steps=-1)


def test_sinkhorn_settings_reach_the_loss(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL | dict(assignment="sinkhorn", sinkhorn_eps=0.1, sinkhorn_iters=5)),
                          tmp_path)
    assert (trainer.loss_fn.sinkhorn_eps, trainer.loss_fn.sinkhorn_iters) == (0.1, 5)
    with pytest.raises(ValueError, match="sinkhorn_eps must be > 0"):
        TrainConfig(sinkhorn_eps=0.0)


def test_a_checkpoint_written_before_the_train_package_resumes_as_it_did(tmp_path):
    """tests/data/checkpoint_before_the_move: a 6-step moons run stopped at step 4, written by commit
    4e619da (the trainer was gedi_fast/trainer.py then), and that code's own resume of it to step 6.
    The two steps are compared within 1e-6: on an Intel Xeon with AMX one bias came out an ulp (6e-8)
    from the fixture's machine, while a resume with the wrong generator state misses by 4e-5 to 6e-4."""
    fixture = pathlib.Path(__file__).parent / "data" / "checkpoint_before_the_move"
    shutil.copy(fixture / "checkpoint.pt", tmp_path / CHECKPOINT_NAME)
    saved = checkpoint.load(tmp_path / CHECKPOINT_NAME)
    resumed = GEDITrainer.resume(tmp_path)
    assert resumed.step == 4 and resumed.config.steps == 6
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, saved["model"][name]), name
    resumed.train()
    then = torch.load(fixture / "model_at_step_6.pt")
    for name, value in resumed.model.state_dict().items():  # to an ulp: another CPU's fp32 sums round apart
        torch.testing.assert_close(value, then[name], rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")
