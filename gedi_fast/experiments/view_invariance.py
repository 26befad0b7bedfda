"""How far a fresh network's views of one image agree, by augmentation strength: the start of a run.

Two views of an image that a network tells apart more than it tells images apart leave the invariance
term one answer, flat outputs (the uniform plateau); `view_warmup` ramps the augmentation in for that
reason. `python -m gedi_fast.experiments.view_invariance --dataset mnist5k --seed 1` builds the run the
trainer would (the cpu-images preset by default, head init included), draws two views of its first 1024 training rows
at each strength and prints, per strength, the features' spread between images over their spread
between an image's two views, and how often the two views fall into the same cluster.
"""
from __future__ import annotations

import argparse
import pathlib
import tempfile

import torch

from gedi_fast.train.data import DATASET_KINDS
from gedi_fast.train.presets import preset_settings
from gedi_fast.train.trainer import HEAD_INIT_ROWS, GEDITrainer, TrainConfig

STRENGTHS = (0.0, 0.25, 0.5, 1.0)


def invariance_ratio(features1: torch.Tensor, features2: torch.Tensor) -> float:
    """Between-image over within-image variance of paired features (rows: images, two views each): the
    total variance of the views' mean over images, over the mean squared half-difference of the two
    views. Identical views give infinity; views that share nothing but their distribution give ~1."""
    mean = (features1 + features2).double() / 2
    half_difference = (features1 - features2).double() / 2
    return (mean.var(0, correction=0).sum() / half_difference.pow(2).mean(0).sum()).item()


def view_scores(trainer: GEDITrainer, strength: float, rows: int = HEAD_INIT_ROWS, seed: int = 0) -> dict[str, float]:
    """The trainer's model on two views of its first `rows` training rows at `strength`: the features'
    invariance ratio and the share of rows whose two views take the same cluster."""
    x = trainer.train_x[:rows]
    view1, view2 = trainer.views(x, torch.Generator(device=x.device).manual_seed(seed), strength)
    model = trainer.model
    with torch.no_grad():
        features1, features2 = model.features(view1).float(), model.features(view2).float()
        same = (model.head(features1).argmax(1) == model.head(features2).argmax(1)).double().mean().item()
    return {"ratio": invariance_ratio(features1, features2), "same_cluster": same}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k", choices=sorted(DATASET_KINDS))
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="cpu-images")
    args = parser.parse_args(argv)
    settings = preset_settings(args.preset, DATASET_KINDS[args.dataset], "cpu")
    config = TrainConfig.from_settings(**settings, dataset=args.dataset, data_root=args.data_root, seed=args.seed,
                                       tensorboard=False)
    with tempfile.TemporaryDirectory() as out:
        trainer = GEDITrainer(config, pathlib.Path(out))
        print("| dataset | seed | strength | features: between / within images | views in the same cluster |")
        print("|---|---|---|---|---|")
        for strength in STRENGTHS:
            scores = view_scores(trainer, strength)
            print(f"| {args.dataset} | {args.seed} | {strength:g} | {scores['ratio']:.3g} | {scores['same_cluster']:.2f} |")


if __name__ == "__main__":
    main()
