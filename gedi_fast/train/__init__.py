"""The training application: configs and presets, the trainer and its recovery, checkpoints, data,
models, metrics, plots and the train/eval/assign/export commands.

It needs more than the kernel library (scipy, scikit-learn, matplotlib, tqdm): the `train` extra.
Importing it without them fails at once with an error that names the extra, not deep inside a run."""
from __future__ import annotations

import importlib.util

# Each module the training application imports beyond the library's torch and numpy, and its distribution.
TRAIN_EXTRA = {"scipy": "scipy", "sklearn": "scikit-learn", "matplotlib": "matplotlib", "tqdm": "tqdm"}


class MissingExtra(ImportError):
    """A package of an extra is not installed; `extra` names the extra to install."""

    def __init__(self, message: str, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


def _installed(module: str) -> bool:
    try:  # a finder (or a module set to None in sys.modules) may refuse by raising
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_train_extra() -> None:
    """MissingExtra naming every absent package of the `train` extra; nothing is imported to find out."""
    missing = [distribution for module, distribution in TRAIN_EXTRA.items() if not _installed(module)]
    if missing:
        raise MissingExtra(f"the training application (gedi_fast.train, the gedi-fast commands) needs "
                           f"{', '.join(missing)}, which this Python lacks: install the train extra, "
                           f"pip install \"gedi-fast[train]\" (in a checkout: pip install -e \".[train]\")", "train")


require_train_extra()
