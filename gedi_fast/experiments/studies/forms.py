"""Study `forms`: the GEDI author's form of the objective against the symmetric one (GEDILoss form=),
each with and without the generative term, on the vector datasets and MNIST-5k."""
from __future__ import annotations

from gedi_fast.experiments.runner import Case
from gedi_fast.experiments.studies.study import WITHOUT_GEN, Study
from gedi_fast.train.presets import PRESETS

AUTHOR = {"form": "author"}
# The author's own weights (beta 0.1): 0.5 uniformity + 0.5 beta inv, no generative term.
AUTHORS_LOSS = {**AUTHOR, **WITHOUT_GEN, "inv_weight": 0.05, "prior_weight": 0.5}
# The same weights in both forms isolate the form; the author's loss as published is the last row.
VARIANTS = {
    "symmetric": {},
    "symmetric, without gen": dict(WITHOUT_GEN),
    "author's form": AUTHOR,
    "author's form, without gen": {**AUTHOR, **WITHOUT_GEN},
    "author's loss (weights 0.5, 0.05)": AUTHORS_LOSS,
}
# MNIST-5k: the cpu-images network and chain, 400 steps (a sixth of the preset's), to keep 15 runs affordable.
IMAGE_RUN = {**PRESETS["cpu-images"], "steps": 400, "log_every": 100, "checkpoint_every": 400}


def _cases() -> tuple[Case, ...]:
    vectors = [Case(dataset, name, {"dataset": dataset, **settings})
               for dataset in ("moons", "circles", "digits") for name, settings in VARIANTS.items()]
    images = [Case("mnist5k (400 steps)", name, {"dataset": "mnist5k", **IMAGE_RUN, **settings})
              for name, settings in VARIANTS.items()]
    return tuple(vectors + images)


STUDY = Study(
    "Which form of the objective clusters better: the GEDI author's (inv one-way, the prior over view 1 "
    "summed over clusters) or the symmetric one, each with and without the generative term?",
    _cases(),
)
