"""TrainConfig, every knob of a run, and the flat setting names (`--set`, presets, old checkpoints) it reads.

The SGLD chain's settings are the dataset's (Dataset.sgld: its kind's step and noise over its inputs'
range) with the run's own on top: `TrainConfig.sgld` maps SGLDConfig field names to the values this
run fixes, so "the dataset's choice" is a field left out. The flat names sgld_steps, sgld_step_size,
sgld_noise, buffer_size, reinit_prob, sgld_grad_clamp, sgld_start and sgld_darken (SGLD_SETTINGS) set those fields; None leaves one to the dataset.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from gedi_fast.ops import ASSIGNMENTS
from gedi_fast.reference import FORMS
from gedi_fast.sampler import SGLDConfig
from gedi_fast.train.augment import AUGMENTATIONS
from gedi_fast.train.models import POOLS
from gedi_fast.validation import require_bool, require_choice, require_int, require_real

# What the generative term and its E^2 regulariser take as data: the two augmented views the clustering
# terms read (the paper's), or the batch's own images with the view noise only (docs/TRAINING.md).
GEN_POSITIVES = ("views", "data")

PRECISIONS = ("auto", "fp32", "bf16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
# Each flat setting name of the SGLD chain and the SGLDConfig field it sets.
SGLD_SETTINGS = {"sgld_steps": "steps", "sgld_step_size": "step_size", "sgld_noise": "noise_std",
                 "buffer_size": "buffer_size", "reinit_prob": "reinit_prob", "sgld_grad_clamp": "grad_clamp",
                 "sgld_start": "start", "sgld_darken": "darken"}
# Fields whose default changed, with the value a checkpoint saved without them ran with.
EARLIER_DEFAULTS = {"sinkhorn_iters": 3}
# The chain settings measured in docs/RESULTS.md; step size and noise are left to the dataset.
DEFAULT_SGLD = {"steps": 20, "buffer_size": 10_000, "reinit_prob": 0.05}
# Which config fields a resumed run may change: how long it trains, how it logs and checkpoints, and
# where and in which arithmetic it runs (a run moved to a machine without native bf16 goes on in fp32),
# never what it computes.
RESUME_CHANGEABLE = ("steps", "log_every", "tensorboard", "checkpoint_every", "max_retries", "max_energy", "device",
                     "compile_step", "collective_timeout", "precision", "memory_format")
_SGLD_FIELDS = {f.name: f.type for f in dataclasses.fields(SGLDConfig)}


@dataclass
class TrainConfig:
    """Every knob of a run; saved in each checkpoint and in metrics.json.

    The defaults are the ones docs/RESULTS.md measures (moons, circles, digits); image runs take a
    preset on top (gedi_fast.train.presets: cpu-images, paper-images). SGLD uses small
    Langevin steps on vectors: JEM's step 1.0 / noise 0.01 are for images in [-1, 1]. energy_reg 0.1,
    the squared-energy penalty of energy-based model practice (Du and Mordatch 2019; JEM's code has
    none), keeps the energies bounded: without it, digits (seed 0) collapsed into one cluster
    (NMI 0.03, 98% of points in one cluster), and with JEM's step sizes too (NMI 0.02). Both weights
    act on E = -logsumexp(z / T), whose scale is 1 / T: on images at T = 0.1 energy_reg 0.1 flattened
    every output, so cpu-images weighs gen and E^2 on T E's scale (gedi_fast.train.presets). None (or a
    field missing from `sgld`) means "the dataset's choice": `augmentation` and `view_noise` come from
    the dataset, the SGLD step, noise and initial range from the kind and range of its data.

    Under DDP, `batch_size` and `sgld["buffer_size"]` are per rank: the global batch is world size x
    batch_size and each rank keeps its own replay buffer. `device` "cuda" means each rank's own GPU.

    Divergence recovery (GEDITrainer.train): a non-finite loss or parameter, or an energy with
    |E| > `max_energy`, rolls back to the last good state; more than `max_retries` rollbacks before the
    run gets past the step that diverged stop it with FloatingPointError.

    Speed: `precision` "auto" autocasts image models to bf16 where the device multiplies in bf16 natively
    (CUDA, a CPU with AMX or AVX512-BF16) and keeps fp32 elsewhere; `memory_format` "auto" lays CNN
    weights and activations out channels_last (gedi_fast.precision says why). SGLD samples, the replay
    buffer and GEDILoss's internals stay fp32 in every case. On CUDA: `cuda_graph` replays the SGLD
    chain as one CUDA graph (same samples as eager), `tf32` runs the model's matmuls and convolutions
    in TF32 (GEDILoss has none: its internals stay fp32), `compile_step` compiles the training forward
    and loss with CUDA graphs (not under DDP). The hot loop has no host sync: values are read only at
    log and checkpoint steps.
    """

    dataset: str = "moons"
    data_root: str | None = None
    steps: int = 1000
    batch_size: int = 256
    clusters: int = 0  # 0: the dataset's number of classes
    seed: int = 0
    device: str = "cpu"
    precision: str = "auto"  # "fp32" | "bf16" (autocast the model; the loss internals stay fp32) | "auto"
    memory_format: str = "auto"  # "channels_last" | "contiguous" | "auto" (channels_last for CNNs)
    lr: float = 1e-3
    adam_beta1: float = 0.9  # Adam's first-moment decay; energy-model recipes often use 0 or 0.5
    lr_warmup: int = 0  # steps over which the learning rate rises linearly from lr / lr_warmup to lr (0: none)
    head_spread: float = 0.0  # > 0: data-dependent head init to this logit spread, balanced (models.spread_head)
    gen_delay: int = 0  # steps trained without SGLD samples (gen 0, E^2 on the views only) before the chain starts
    view_warmup: int = 0  # steps over which the views' augmentation strength rises linearly from 0 (noise only) to 1
    gen_positives: str = "views"  # what gen and E^2 read as data: the two "views" or the batch's own images ("data")
    hidden: int = 256  # the MLP's width (vector data)
    width: int = 32  # the CNN's first-stage channels (image data)
    stem_stride: int = 1  # the CNN stem's stride: 2 quarters the cost of every stage
    pool: str = "mean"  # what the CNN's head sees: "mean" over positions or the "flatten"ed last feature map
    temperature: float = 0.1
    gen_weight: float = 1.0
    inv_weight: float = 1.0
    prior_weight: float = 3.0
    energy_reg: float = 0.1
    assignment: str = "softmax"
    sinkhorn_eps: float = 0.05  # GEDILoss's Sinkhorn-Knopp settings (assignment "sinkhorn")
    sinkhorn_iters: int = 10  # GEDILoss's 3 leaves trained logits' clusters 0.24-2x their share (RESULTS.md)
    queue_size: int = 0  # past logits per view in the Sinkhorn targets and the prior (GEDILoss queue_size)
    form: str = "symmetric"  # how inv and the prior read the views: "symmetric" or the GEDI "author"'s (GEDILoss form)
    augmentation: str | None = None  # a name of gedi_fast.train.augment.AUGMENTATIONS
    view_noise: float | None = None
    sgld: dict = field(default_factory=lambda: dict(DEFAULT_SGLD))  # SGLDConfig fields over the dataset's
    sgld_samples: int = 64  # SGLD negatives per step (and rank): the chain's cost scales with it
    log_every: int = 100
    tensorboard: bool = True  # rank 0 also logs to OUT/tensorboard/ where tensorboard is installed (run_log)
    checkpoint_every: int = 500
    max_energy: float = 1e4
    max_retries: int = 3
    cuda_graph: bool = True  # CUDA: replay the SGLD chain as one captured CUDA graph
    tf32: bool = True  # CUDA: TF32 matmuls and convolutions in the training step; False: strict fp32
    compile_step: bool = False  # torch.compile(mode="reduce-overhead") of the forward and loss
    collective_timeout: float = 600.0  # seconds a DDP collective may wait for the other ranks

    def __post_init__(self) -> None:
        for name in ("steps", "log_every", "checkpoint_every", "batch_size", "sgld_samples", "hidden", "width",
                     "sinkhorn_iters"):
            require_int(getattr(self, name), name, minimum=1)
        require_int(self.clusters, "clusters", minimum=0)
        require_int(self.queue_size, "queue_size", minimum=0)
        require_int(self.lr_warmup, "lr_warmup", minimum=0)
        require_int(self.gen_delay, "gen_delay", minimum=0)
        require_int(self.view_warmup, "view_warmup", minimum=0)
        require_real(self.head_spread, "head_spread", non_negative=True)
        if self.queue_size and self.compile_step:
            raise ValueError("queue_size > 0 is not supported with compile_step=True (the queue grows over the "
                             "first steps, which would recompile the step); set one of them off")
        require_int(self.stem_stride, "stem_stride", minimum=1, maximum=4)
        require_choice(self.pool, "pool", POOLS)
        require_choice(self.gen_positives, "gen_positives", GEN_POSITIVES)
        if self.clusters == 1:
            raise ValueError("clusters must be 0 (the number of classes) or >= 2, got 1")
        require_int(self.seed, "seed", minimum=0)
        for name in ("lr", "temperature", "sinkhorn_eps"):
            require_real(getattr(self, name), name, positive=True)
        if not 0 <= require_real(self.adam_beta1, "adam_beta1") < 1:
            raise ValueError(f"adam_beta1 must lie in [0, 1), got {self.adam_beta1}")
        for name in ("view_noise", "energy_reg"):
            if getattr(self, name) is not None:
                require_real(getattr(self, name), name, non_negative=True)
        for name in ("gen_weight", "inv_weight", "prior_weight"):
            require_real(getattr(self, name), name)
        require_choice(self.assignment, "assignment", ASSIGNMENTS)
        require_choice(self.form, "form", FORMS)
        require_choice(self.precision, "precision", PRECISIONS)
        require_choice(self.memory_format, "memory_format", MEMORY_FORMATS)
        require_real(self.max_energy, "max_energy", positive=True)
        require_real(self.collective_timeout, "collective_timeout", positive=True)
        require_int(self.max_retries, "max_retries", minimum=0)
        for name in ("cuda_graph", "tf32", "compile_step", "tensorboard"):
            require_bool(getattr(self, name), name)
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', "
                             f"got {self.device!r}") from None
        if self.augmentation is not None:
            require_choice(self.augmentation, "augmentation", tuple(AUGMENTATIONS))
        _check_sgld(self.sgld)

    def sgld_config(self, dataset_sgld: SGLDConfig) -> SGLDConfig:
        """The chain this run samples with: the dataset's settings with this run's `sgld` fields on top."""
        return dataclasses.replace(dataset_sgld, **self.sgld)

    def model_options(self) -> dict[str, object]:
        """build_model's options from this config (the trainer and a loaded run build the same network)."""
        return {"hidden": self.hidden, "width": self.width, "stem_stride": self.stem_stride, "pool": self.pool}

    def setting(self, name: str) -> object:
        """The value of flat setting `name` (a field, or an SGLD_SETTINGS name: None when left to the dataset)."""
        if name in SGLD_SETTINGS:
            return self.sgld.get(SGLD_SETTINGS[name])
        return getattr(self, name)

    def with_settings(self, **settings: object) -> TrainConfig:
        """A copy with `settings` (fields or flat SGLD_SETTINGS names) replaced."""
        return TrainConfig.from_settings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)} | settings)

    @classmethod
    def from_settings(cls, **settings: object) -> TrainConfig:
        """A config from fields and flat SGLD_SETTINGS names alike: what --set, presets and checkpoints
        written before `sgld` was nested (flat keys only) hold. A flat SGLD name set to None leaves its
        field to the dataset."""
        fields = dict(settings)
        sgld = dict(fields.pop("sgld", DEFAULT_SGLD))
        for name, sgld_field in SGLD_SETTINGS.items():
            if name not in fields:
                continue
            value = fields.pop(name)
            if value is None:
                sgld.pop(sgld_field, None)
            else:
                sgld[sgld_field] = value
        return cls(**fields, sgld=sgld)


SETTINGS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "sgld") + tuple(SGLD_SETTINGS)


def setting_types() -> dict[str, str]:
    """Each flat setting name and its annotation; the SGLD ones are optional (None: the dataset's)."""
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig) if f.name != "sgld"}
    return types | {name: f"{_SGLD_FIELDS[sgld_field]} | None" for name, sgld_field in SGLD_SETTINGS.items()}


def _check_sgld(sgld: object) -> None:
    """SGLDConfig's own checks on the fields `sgld` sets, the initial range only when both ends are set."""
    if not isinstance(sgld, Mapping) or not set(sgld) <= set(_SGLD_FIELDS):
        unknown = sorted(set(sgld) - set(_SGLD_FIELDS)) if isinstance(sgld, Mapping) else type(sgld).__name__
        raise ValueError(f"sgld must map SGLDConfig fields ({', '.join(_SGLD_FIELDS)}) to values, got {unknown}")
    checked = dict(sgld)
    if ("init_low" in checked) != ("init_high" in checked):
        end = "init_low" if "init_low" in checked else "init_high"
        require_real(checked.pop(end), f"sgld: {end}")
    try:
        SGLDConfig(**checked)
    except (TypeError, ValueError) as err:
        raise type(err)(f"sgld: {err}") from None


def parse_settings(pairs: list[str]) -> dict:
    """--set key=value pairs, typed like the TrainConfig setting they name ("none" clears an optional one)."""
    fields = setting_types()
    result = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or key not in fields:
            raise ValueError(f"--set expects KEY=VALUE with KEY one of {', '.join(SETTINGS)}; got {pair!r}")
        annotation = fields[key]
        if "None" in annotation and text.lower() == "none":
            result[key] = None
            continue
        if annotation == "bool":
            if text.lower() not in ("true", "false"):
                raise ValueError(f"--set {key} expects true or false, got {text!r}")
            result[key] = text.lower() == "true"
            continue
        kind = next((k for k in (int, float) if annotation.startswith(k.__name__)), str)
        try:
            result[key] = kind(text)
        except ValueError:
            raise ValueError(f"--set {key} expects a {kind.__name__}, got {text!r}") from None
    return result


DATASET_CHOSEN = ("augmentation", "view_noise", "sgld_step_size", "sgld_noise")  # None: the dataset's choice


def read_config_file(path: str) -> dict:
    """Settings from a JSON or YAML file: a mapping of TrainConfig settings (fields, flat SGLD names or a
    nested "sgld"), or a run's metrics.json, whose "config" entry reproduces that run."""
    file = pathlib.Path(path)
    try:
        text = file.read_text()
    except OSError as err:
        raise ValueError(f"--config {path}: cannot read it ({err.strerror or err})") from None
    if file.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"--config {path}: YAML needs PyYAML (pip install pyyaml); or write it as JSON") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ValueError(f"--config {path} is not valid YAML ({str(err).splitlines()[0]})") from None
    else:
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--config {path} is not valid JSON ({err})") from None
    if isinstance(loaded, dict) and isinstance(loaded.get("config"), dict):
        loaded = loaded["config"]
    if not isinstance(loaded, dict):
        raise ValueError(f"--config {path} must hold a mapping of settings, got {type(loaded).__name__}")
    unknown = sorted(set(loaded) - {*SETTINGS, "sgld"})
    if unknown:
        raise ValueError(f"--config {path}: unknown settings {', '.join(unknown)} (known: {', '.join(SETTINGS)}, sgld)")
    return loaded


def settings_help() -> str:
    """Every --set key with its default ("dataset" where the dataset chooses, "none" for an unset option)."""
    defaults = TrainConfig()

    def shown(name: str) -> object:
        value = defaults.setting(name)
        return value if value is not None else "dataset" if name in DATASET_CHOSEN else "none"

    return ", ".join(f"{name}={shown(name)}" for name in SETTINGS)
