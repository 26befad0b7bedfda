"""Study `queue`: whether a SwAV-style queue of past logits (queue_size) helps balanced targets and the
prior at batch 32."""
from __future__ import annotations

from gedi_fast.experiments.runner import cases
from gedi_fast.experiments.studies.study import Study

SMALL_BATCH = {"batch_size": 32}

STUDY = Study(
    "Does a SwAV-style queue of past logits (queue_size) help balanced targets and the prior at batch 32?",
    tuple(cases(("moons", "blobs", "digits"), {
        "softmax, batch 32": SMALL_BATCH,
        "softmax, batch 32, queue 512": {**SMALL_BATCH, "queue_size": 512},
        "Sinkhorn, batch 32": {**SMALL_BATCH, "assignment": "sinkhorn"},
        "Sinkhorn, batch 32, queue 512": {**SMALL_BATCH, "assignment": "sinkhorn", "queue_size": 512},
    })),
)
