"""The experiments: the triad, the image experiment, the studies and their probes and reports. They run
the training application, so they need its `train` extra too (checked here, before any of their imports)."""
from gedi_fast.train import require_train_extra

require_train_extra()
