"""Collapse probes: what the representation, the logits and each term's gradients do during training.

A probe reads the model on fixed data (the test split, and a probe batch drawn from its own stream)
and never touches the run's random streams, replay buffer, queue or parameters, so a probed run
trains exactly like an unprobed one (tests/test_probes.py checks it).
"""
from __future__ import annotations

import json
import math
import pathlib
import time

import torch

from gedi_fast.reference import TERM_NAMES
from gedi_fast.train import metrics, seeds
from gedi_fast.train.trainer import GEDITrainer, TrainConfig

PROBE_EVERY = 50  # training steps between probes
PROBE_ROWS = 256  # training rows in the probe batch (fewer when the split is smaller)
TRACE_NAME = "probes.json"


def parameter_layers(model: torch.nn.Module) -> list[tuple[str, list[torch.nn.Parameter]]]:
    """(module name, its own parameters) for every module that holds some: the layers gradients are
    reported for."""
    layers = [(name, list(module.parameters(recurse=False))) for name, module in model.named_modules()]
    return [(name, params) for name, params in layers if params]


def collapse_probe(trainer: GEDITrainer) -> dict[str, float]:
    """The state of the run now: test-split representation (effective rank, variance), the logits'
    spread across inputs (std over test rows of z / T, averaged over clusters), cluster usage, and
    on a fixed probe batch each weighted term's gradient norm per layer and in all, with the cosines
    between the terms' whole gradients.

    Keys: feature_effective_rank, feature_variance, logit_spread, largest_cluster_share,
    usage_entropy, grad/TERM, grad/TERM/LAYER and cos/A-B for each pair of terms with a gradient.
    """
    model, loss_fn, config = trainer.model, trainer.loss_fn, trainer.config
    modes = model.training, loss_fn.training
    model.eval()
    loss_fn.eval()  # an eval-mode loss reads its queue without adding the probe batch to it
    try:
        with torch.no_grad():
            features = model.features(trainer.dataset.test_x.to(trainer.device))
            logits = model.head(features).double()
        usage = metrics.cluster_usage(logits.argmax(1).cpu(), trainer.clusters)
        probe = {"step": trainer.step, **metrics.representation_scores(features),
                 "logit_spread": (logits / config.temperature).std(0).mean().item(),
                 "largest_cluster_share": usage["largest_cluster_share"], "usage_entropy": usage["usage_entropy"]}
        probe.update(_term_gradients(trainer))
    finally:
        model.train(modes[0])
        loss_fn.train(modes[1])
    return probe


def _term_gradients(trainer: GEDITrainer) -> dict[str, float]:
    model = trainer.model
    generator = torch.Generator(device=trainer.device).manual_seed(trainer.config.seed + seeds.PROBE_BATCH)
    rows = torch.randint(0, len(trainer.train_x), (min(PROBE_ROWS, len(trainer.train_x)),), generator=generator,
                         device=trainer.device)
    view1, view2 = trainer.views(trainer.train_x[rows], generator, trainer.view_strength(trainer.step))  # as trained now
    positives = trainer.positives(trainer.train_x[rows], generator)
    samples = trainer.sampler.buffer[:trainer.config.sgld_samples] if trainer.sampler is not None else None
    _, terms = trainer.forward_loss(view1, view2, samples, positives)
    weights = trainer.term_weights
    layers = parameter_layers(model)
    params = [p for _, group in layers for p in group]
    result, flat = {}, {}
    for term in TERM_NAMES:
        weighted = weights[term] * terms[term]
        if weights[term] == 0 or not weighted.requires_grad:
            continue
        grads = torch.autograd.grad(weighted, params, retain_graph=True, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        flat[term] = torch.cat([g.reshape(-1) for g in grads]).double()
        result[f"grad/{term}"] = flat[term].norm().item()
        start = 0
        for name, group in layers:
            layer = torch.cat([g.reshape(-1) for g in grads[start:start + len(group)]]).double()
            result[f"grad/{term}/{name}"] = layer.norm().item()
            start += len(group)
    names = list(flat)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            result[f"cos/{a}-{b}"] = torch.nn.functional.cosine_similarity(flat[a], flat[b], dim=0).item()
    return result


def train_with_probes(config: TrainConfig, folder: pathlib.Path, threads: int | None = None,
                      every: int = PROBE_EVERY) -> dict[str, float]:
    """runner.train_one with a collapse probe at step 0 and every `every` steps: the trace goes to
    folder/probes.json. The scores add the final probe's logit_spread, the lowest effective rank
    seen (min_effective_rank) and the step it was seen at; train_wall_s leaves the probes' time out."""
    if threads is not None:
        torch.set_num_threads(threads)
    trainer = GEDITrainer(config, folder)
    trace = [collapse_probe(trainer)]
    probing_s, started = 0.0, time.perf_counter()
    while trainer.step < config.steps:
        trainer.train(until=min(trainer.step + every, config.steps))
        probed = time.perf_counter()
        trace.append(collapse_probe(trainer))
        probing_s += time.perf_counter() - probed
    wall_s = time.perf_counter() - started - probing_s
    scores = trainer.evaluate()
    trainer.write_metrics(scores, wall_s)
    (folder / TRACE_NAME).write_text(json.dumps(trace, indent=1))
    lowest = min(trace, key=lambda probe: probe["feature_effective_rank"])
    return {**scores, "train_wall_s": wall_s, "logit_spread": trace[-1]["logit_spread"],
            "min_effective_rank": lowest["feature_effective_rank"], "min_effective_rank_step": lowest["step"],
            "cos_inv_prior": trace[-1].get("cos/inv-prior", math.nan)}


def read_trace(folder: pathlib.Path) -> list[dict]:
    return json.loads((folder / TRACE_NAME).read_text())
