"""How much a run's SGLD samples look like its data: Fréchet distances (FID) in the feature space of an
evaluation classifier, and how many classes the samples cover.

The evaluation classifier is a small CNN trained once per image dataset split on its labelled
training split. It only scores; it never takes part in training. It is cached under
`GEDI_FAST_CACHE` (default ~/.cache/gedi_fast), keyed by the split's contents and the recipe, so a
second evaluation loads it instead of training it again.

Every set is compared with the same reference, `rows` images of the test split, so the numbers
of one report compare: `floor` (training images: the best a sampler can hope for), `noise`
(uniform noise over the data's range: what a sampler that learnt nothing gives), `samples`
(chains the run's sampler would run next, from a copy of its replay buffer) and `buffer`.
`samples_mix_floor` and `buffer_mix_floor` split a set's distance in two: they are the distance of
training images drawn with that set's mix of predicted classes (one image of class c for each sample
the classifier calls c), so they are what the class mix alone costs, and the rest of the set's
distance is what its images lack against real ones.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from gedi_fast.train import checkpoint, metrics, seeds
from gedi_fast.train.data import Dataset
from gedi_fast.validation import require_int

if TYPE_CHECKING:
    from gedi_fast.train.trainer import GEDITrainer

FID_ROWS = 1000
CLASSIFIER_VERSION = 1  # bump when EvalClassifier or its training changes, so old caches are not reused
CACHE_ENV = "GEDI_FAST_CACHE"


@dataclass(frozen=True)
class ClassifierRecipe:
    """How the evaluation classifier is trained: Adam on shuffled mini-batches of the training split."""

    steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    width: int = 32
    features: int = 128
    seed: int = 0


DEFAULT_RECIPE = ClassifierRecipe()


class EvalClassifier(nn.Module):
    """Two 3 x 3 conv-ReLU-maxpool stages (width, 2 width channels), a `features`-wide ReLU layer whose
    activations FID compares, and a linear class head."""

    def __init__(self, input_shape: tuple[int, ...], classes: int, width: int, features: int) -> None:
        super().__init__()
        channels, height, w = input_shape
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * width * (height // 4) * (w // 4), features), nn.ReLU())
        self.head = nn.Linear(features, classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def cache_folder() -> pathlib.Path:
    return pathlib.Path(os.environ.get(CACHE_ENV) or pathlib.Path.home() / ".cache" / "gedi_fast")


def _split_key(dataset: Dataset, recipe: ClassifierRecipe) -> str:
    digest = hashlib.sha256(repr((CLASSIFIER_VERSION, dataset.name, dataset.num_classes, asdict(recipe))).encode())
    for tensor in (dataset.train_x, dataset.train_y, dataset.test_x, dataset.test_y):
        digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def _in_batches(function, x: torch.Tensor, rows: int = 1000) -> torch.Tensor:
    return torch.cat([function(x[i:i + rows]) for i in range(0, len(x), rows)])


def train_classifier(dataset: Dataset, recipe: ClassifierRecipe) -> tuple[EvalClassifier, float]:
    """(classifier, its accuracy on the test split), trained on the CPU from recipe.seed."""
    if dataset.kind != "image":
        raise ValueError(f"the evaluation classifier is for image datasets; {dataset.name!r} holds {dataset.kind}s")
    generator = torch.Generator().manual_seed(recipe.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = EvalClassifier(dataset.input_shape, dataset.num_classes, recipe.width, recipe.features)
    optimiser = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    order = torch.empty(0, dtype=torch.int64)
    for _ in range(recipe.steps):
        if len(order) < recipe.batch_size:
            order = torch.cat([order, torch.randperm(len(dataset.train_x), generator=generator)])
        batch, order = order[:recipe.batch_size], order[recipe.batch_size:]
        loss = nn.functional.cross_entropy(model(dataset.train_x[batch]), dataset.train_y[batch])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    model.eval()
    predicted = _in_batches(model, dataset.test_x).argmax(1)
    return model, float((predicted == dataset.test_y).double().mean())


def eval_classifier(dataset: Dataset, recipe: ClassifierRecipe | None = None,
                    cache: pathlib.Path | None = None) -> tuple[EvalClassifier, float, pathlib.Path]:
    """(classifier, test accuracy, cache file): loaded from the cache when this split and recipe
    (default DEFAULT_RECIPE) were seen before, else trained and saved there (atomically, with a checksum)."""
    recipe = recipe or DEFAULT_RECIPE
    path = (cache or cache_folder()) / "eval_classifier" / f"{dataset.name}-{_split_key(dataset, recipe)}.pt"
    model = EvalClassifier(dataset.input_shape, dataset.num_classes, recipe.width, recipe.features)
    if path.is_file():
        try:
            state = checkpoint.load(path)
            model.load_state_dict(state["model"])
            return model.eval(), float(state["accuracy"]), path
        except (checkpoint.CheckpointError, KeyError, RuntimeError):  # a damaged cache entry is trained again
            pass
    model, accuracy = train_classifier(dataset, recipe)
    checkpoint.save_atomic({"model": model.state_dict(), "accuracy": accuracy, "recipe": asdict(recipe),
                            "dataset": dataset.name, "version": CLASSIFIER_VERSION}, path)
    return model, accuracy, path


def _rows(x: torch.Tensor, rows: int, generator: torch.Generator) -> torch.Tensor:
    return x[torch.randperm(len(x), generator=generator)[:rows]]


def mix_matched_rows(labels: torch.Tensor, predicted: torch.Tensor, classes: int,
                     generator: torch.Generator) -> torch.Tensor:
    """For each entry c of `predicted`, the index of a random row whose label is c (drawn with
    replacement): rows of the labelled split with `predicted`'s class mix, row for row."""
    counts = torch.bincount(labels, minlength=classes)
    missing = sorted(set(predicted.unique().tolist()) - set(counts.nonzero().flatten().tolist()))
    if missing:
        raise ValueError(f"labels has no row of predicted class(es) {missing}")
    starts = counts.cumsum(0) - counts
    offset = (torch.rand(len(predicted), generator=generator, dtype=torch.float64) * counts[predicted]).long()
    return torch.argsort(labels, stable=True)[starts[predicted] + offset.minimum(counts[predicted] - 1)]


def fid_report(trainer: GEDITrainer, rows: int | None = None, recipe: ClassifierRecipe | None = None,
               cache: pathlib.Path | None = None) -> dict[str, object]:
    """The `fid` entry of a run's metrics.json (see the module docstring). `samples` and `buffer` are
    None for a run without an SGLD sampler. Seeded by the run's seed: the same run reports the same
    numbers. rows defaults to FID_ROWS (fewer when a split is smaller)."""
    rows = require_int(FID_ROWS if rows is None else rows, "rows", minimum=2)
    dataset = trainer.dataset
    classifier, accuracy, path = eval_classifier(dataset, recipe, cache)
    generator = torch.Generator().manual_seed(trainer.config.seed)
    rows = min(rows, len(dataset.test_x), len(dataset.train_x))
    features = lambda x: _in_batches(classifier.features, x.detach().float().cpu())  # noqa: E731
    reference = features(_rows(dataset.test_x, rows, generator))
    low, high = float(dataset.train_x.min()), float(dataset.train_x.max())
    noise = torch.rand((rows, *dataset.input_shape), generator=generator) * (high - low) + low
    report: dict[str, object] = {
        "rows": rows, "reference": "test split", "accuracy": accuracy, "classifier": str(path),
        "floor": metrics.frechet_distance(features(_rows(dataset.train_x, rows, generator)), reference),
        "noise": metrics.frechet_distance(features(noise), reference),
        "samples": None, "buffer": None, "samples_coverage": None, "buffer_coverage": None,
        "samples_mix_floor": None, "buffer_mix_floor": None}
    sampler = trainer.sampler
    if sampler is None:
        return report
    with torch.enable_grad():
        samples = sampler.fork(sampler.seed + seeds.FRESH_CHAINS).sample(trainer.model, min(rows, len(sampler.buffer)))
    buffer = sampler.buffer[torch.randperm(len(sampler.buffer), generator=generator)[:rows].to(sampler.buffer.device)]
    for name, images in (("samples", samples), ("buffer", buffer)):
        report[name] = metrics.frechet_distance(features(images), reference)
        predicted = _in_batches(classifier, images.detach().float().cpu()).argmax(1)
        report[f"{name}_coverage"] = metrics.class_coverage(predicted, dataset.num_classes)
        matched = mix_matched_rows(dataset.train_y, predicted, dataset.num_classes, generator)
        report[f"{name}_mix_floor"] = metrics.frechet_distance(features(dataset.train_x[matched]), reference)
    report["sampler_steps"] = sampler.config.steps
    return report
