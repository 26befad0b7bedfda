"""Collapse probes: they read the run without changing it, and their numbers are the direct formulas'."""
from __future__ import annotations

import json
import math

import pytest
import torch

from gedi_fast import reference
from gedi_fast.experiments import probes
from gedi_fast.train import seeds
from gedi_fast.train.trainer import GEDITrainer, TrainConfig

SMALL = dict(steps=12, batch_size=24, hidden=24, sgld=dict(steps=2, buffer_size=50), sgld_samples=9, log_every=4,
             checkpoint_every=100, dataset="digits", clusters=7)


def test_a_probed_run_trains_exactly_like_an_unprobed_one(tmp_path):
    """Probes every 5 steps of a run with SGLD, Sinkhorn targets and a queue leave parameters, replay
    buffer, queue and streams as an unprobed run has them."""
    config = TrainConfig(**SMALL, assignment="sinkhorn", queue_size=40)
    plain = GEDITrainer(config, tmp_path / "plain")
    plain.train()
    scores = probes.train_with_probes(config, tmp_path / "probed", every=5)
    probed = GEDITrainer.resume(tmp_path / "probed")
    for (name, a), (_, b) in zip(plain.model.state_dict().items(), probed.model.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(plain.sampler.buffer, probed.sampler.buffer)
    assert torch.equal(plain.loss_fn.queue.rows(torch.zeros(1, 7))[0], probed.loss_fn.queue.rows(torch.zeros(1, 7))[0])
    assert torch.equal(plain.generator.get_state(), probed.generator.get_state())
    trace = json.loads((tmp_path / "probed" / probes.TRACE_NAME).read_text())
    assert [p["step"] for p in trace] == [0, 5, 10, 12]
    assert scores["steps"] == 12 and scores["logit_spread"] == trace[-1]["logit_spread"]
    assert scores["min_effective_rank"] == min(p["feature_effective_rank"] for p in trace)


def _reference_gradients(trainer: GEDITrainer) -> dict[str, list[torch.Tensor]]:
    """Each weighted term's parameter gradients on the probe batch, from the reference terms in float64."""
    model = trainer.model.double()
    generator = torch.Generator().manual_seed(trainer.config.seed + seeds.PROBE_BATCH)
    rows = torch.randint(0, len(trainer.train_x), (min(probes.PROBE_ROWS, len(trainer.train_x)),), generator=generator)
    view1, view2 = trainer.views(trainer.train_x[rows], generator, trainer.view_strength(trainer.step))
    positives = trainer.positives(trainer.train_x[rows], generator)
    samples = trainer.sampler.buffer[:trainer.config.sgld_samples]
    z1, z2, zn = model(view1.double()), model(view2.double()), model(samples.double())
    temperature, config = trainer.config.temperature, trainer.config
    terms = reference.gedi_terms(z1, z2, zn, temperature)
    if config.gen_positives == "data":  # gen and E^2 read the positives, not the views
        zp = model(positives.double())
        terms |= {t: v for t, v in reference.gedi_terms(zp, zp, zn, temperature).items() if t in ("gen", "energy_reg")}
    weights = dict(gen=config.gen_weight, inv=config.inv_weight, prior=config.prior_weight, energy_reg=config.energy_reg)
    grads = {}
    for term in reference.TERM_NAMES:
        weighted = weights[term] * terms[term]
        grads[term] = list(torch.autograd.grad(weighted, list(model.parameters()), retain_graph=True))
    model.float()
    return grads


@pytest.mark.parametrize("positives", ["views", "data"])
def test_gradient_norms_and_cosines_are_those_of_each_weighted_term(tmp_path, positives):
    trainer = GEDITrainer(TrainConfig(**SMALL, energy_reg=0.3, gen_positives=positives), tmp_path)
    trainer.train(until=5)
    probe = probes.collapse_probe(trainer)
    expected = _reference_gradients(trainer)
    layers = probes.parameter_layers(trainer.model)
    assert [name for name, _ in layers] == ["body.0", "body.2", "head"]
    for term, grads in expected.items():
        whole = torch.cat([g.reshape(-1) for g in grads])
        assert probe[f"grad/{term}"] == pytest.approx(whole.norm().item(), rel=1e-4), term
        for index, (name, _) in enumerate(layers):  # each Linear: weight then bias
            layer = torch.cat([grads[2 * index].reshape(-1), grads[2 * index + 1].reshape(-1)])
            assert probe[f"grad/{term}/{name}"] == pytest.approx(layer.norm().item(), rel=1e-4), (term, name)
    flat = {t: torch.cat([g.reshape(-1) for g in grads]) for t, grads in expected.items()}
    for a, b in (("inv", "prior"), ("gen", "inv"), ("gen", "energy_reg")):
        cosine = torch.nn.functional.cosine_similarity(flat[a], flat[b], dim=0).item()
        assert probe[f"cos/{a}-{b}"] == pytest.approx(cosine, abs=1e-4)


def test_representation_and_spread_read_the_test_split(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL), tmp_path)
    trainer.train(until=3)
    probe = probes.collapse_probe(trainer)
    scores = trainer.evaluate()
    assert probe["feature_effective_rank"] == pytest.approx(scores["feature_effective_rank"], rel=1e-6)
    assert probe["largest_cluster_share"] == scores["largest_cluster_share"]
    logits = trainer.model(trainer.dataset.test_x).double() / trainer.config.temperature
    assert probe["logit_spread"] == pytest.approx(logits.std(0).mean().item(), rel=1e-5)
    with torch.no_grad():  # a head that ignores its input: every test point in one cluster, no spread
        trainer.model.head.weight.zero_()
    collapsed = probes.collapse_probe(trainer)
    assert collapsed["logit_spread"] == 0 and collapsed["largest_cluster_share"] == 1
    assert collapsed["grad/prior/head"] > 0  # the prior pulls a collapsed head apart


def test_without_gen_only_the_terms_with_a_weight_are_probed(tmp_path):
    trainer = GEDITrainer(TrainConfig(**SMALL, gen_weight=0.0, energy_reg=0.0), tmp_path)
    probe = probes.collapse_probe(trainer)
    assert {k for k in probe if k.startswith("grad/") and k.count("/") == 1} == {"grad/inv", "grad/prior"}
    assert set(k for k in probe if k.startswith("cos/")) == {"cos/inv-prior"}
    assert not math.isnan(probe["cos/inv-prior"]) and -1 <= probe["cos/inv-prior"] <= 1
