"""Bad input to every public entry point: each kind gets a clear error naming the argument, nothing is
silently broadcast, nothing crashes the process; non-contiguous and expanded tensors are handled.

The library table checks the error type and that the message reads "<argument> must ...". The file
table (dataset paths, checkpoints) checks that the message names the file. The CLI table checks that
`gedi-fast` exits with status 2 and a one-line message naming the flag or field, not a traceback.
"""
from __future__ import annotations

import gzip
import math
import pickle
import re
import struct

import numpy as np
import pytest
import torch

from gedi_fast import GEDILoss, SGLDConfig, SGLDSampler, buffer_draw, reference, sgld_step_, sinkhorn_knopp
from gedi_fast.cli import main
from gedi_fast.train import checkpoint
from gedi_fast.train.data import DatasetUnavailable, load_dataset
from gedi_fast.train.models import MLPClusterer
from gedi_fast.train.trainer import CHECKPOINT_NAME, GEDITrainer, TrainConfig

Z = torch.zeros(4, 3)
X = torch.zeros(4)
G = torch.zeros(4)  # a gradient of its own: x and grad must not share memory
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def with_value(t: torch.Tensor, value: float) -> torch.Tensor:
    t = t.clone()
    t.view(-1)[1] = value
    return t


def model_returning(fn):
    """A model whose forward returns fn(x): the sampler must reject logits of the wrong shape."""

    class Model(torch.nn.Module):
        def forward(self, x):
            return fn(x)

    return Model()


def sampler(**kwargs) -> SGLDSampler:
    return SGLDSampler(**dict(input_shape=(2,), config=SGLDConfig(steps=1, buffer_size=8)) | kwargs)


LIBRARY = [
    # GEDILoss(z1, z2, zn): type, dtype, rank, shapes between views, devices, K < 2, empty batch, NaN/inf.
    ("z1", TypeError, lambda: GEDILoss()(Z.numpy(), Z)),
    ("z1", TypeError, lambda: GEDILoss()(Z.long(), Z)),
    ("z2", TypeError, lambda: GEDILoss()(Z, Z.bool())),
    ("z1", ValueError, lambda: GEDILoss()(torch.zeros(12), Z)),
    ("zn", ValueError, lambda: GEDILoss()(Z, Z, torch.zeros(2, 4, 3))),
    ("z2", ValueError, lambda: GEDILoss()(Z, torch.zeros(5, 3))),
    ("z2", ValueError, lambda: GEDILoss()(Z, torch.zeros(1, 3))),  # broadcastable, still refused
    ("zn", ValueError, lambda: GEDILoss()(Z, Z, torch.zeros(2, 1))),
    ("z2", TypeError, lambda: GEDILoss()(Z, Z.double())),
    ("zn", TypeError, lambda: GEDILoss()(Z, Z, Z.half())),
    ("z2", ValueError, lambda: GEDILoss()(Z, torch.zeros(4, 3, device="meta"))),
    ("zn", ValueError, lambda: GEDILoss()(Z, Z, torch.zeros(2, 3, device="meta"))),
    ("z1", ValueError, lambda: GEDILoss()(torch.zeros(4, 1), torch.zeros(4, 1))),
    ("z1", ValueError, lambda: GEDILoss()(torch.zeros(0, 3), torch.zeros(0, 3))),
    ("zn", ValueError, lambda: GEDILoss()(Z, Z, torch.zeros(0, 3))),
    ("z1", ValueError, lambda: GEDILoss(check_finite=True)(with_value(Z, math.nan), Z)),
    ("z2", ValueError, lambda: GEDILoss(check_finite=True)(Z, with_value(Z, math.inf))),
    ("zn", ValueError, lambda: GEDILoss(check_finite=True)(Z, Z, with_value(Z, -math.inf))),
    # GEDILoss settings.
    ("temperature", ValueError, lambda: GEDILoss(temperature=0.0)),
    ("temperature", ValueError, lambda: GEDILoss(temperature=-0.1)),
    ("temperature", ValueError, lambda: GEDILoss(temperature=math.nan)),
    ("sinkhorn_eps", ValueError, lambda: GEDILoss(sinkhorn_eps=0.0)),
    ("sinkhorn_eps", ValueError, lambda: GEDILoss(sinkhorn_eps=-1.0)),
    ("sinkhorn_iters", ValueError, lambda: GEDILoss(sinkhorn_iters=0)),
    ("sinkhorn_iters", TypeError, lambda: GEDILoss(sinkhorn_iters=2.0)),
    ("prior_weight", ValueError, lambda: GEDILoss(prior_weight=math.inf)),
    ("energy_reg", ValueError, lambda: GEDILoss(energy_reg=-1.0)),
    ("assignment", ValueError, lambda: GEDILoss(assignment="hungarian")),
    ("backend", ValueError, lambda: GEDILoss(backend="cuda")),
    ("distributed", ValueError, lambda: GEDILoss(distributed="maybe")),
    ("check_finite", TypeError, lambda: GEDILoss(check_finite="yes")),
    # sinkhorn_knopp(scores, eps, iters).
    ("scores", TypeError, lambda: sinkhorn_knopp([[0.0, 1.0]])),
    ("scores", TypeError, lambda: sinkhorn_knopp(Z.int())),
    ("scores", TypeError, lambda: sinkhorn_knopp(Z.bool())),
    ("scores", ValueError, lambda: sinkhorn_knopp(torch.zeros(5))),
    ("scores", ValueError, lambda: sinkhorn_knopp(torch.zeros(2, 3, 4))),
    ("scores", ValueError, lambda: sinkhorn_knopp(torch.zeros(5, 1))),
    ("scores", ValueError, lambda: sinkhorn_knopp(torch.zeros(0, 3))),
    ("scores", ValueError, lambda: sinkhorn_knopp(with_value(Z, math.nan), check_finite=True)),
    ("eps", ValueError, lambda: sinkhorn_knopp(Z, eps=0.0)),
    ("eps", ValueError, lambda: sinkhorn_knopp(Z, eps=-0.05)),
    ("eps", ValueError, lambda: sinkhorn_knopp(Z, eps=math.inf)),
    ("iters", ValueError, lambda: sinkhorn_knopp(Z, iters=0)),
    ("iters", TypeError, lambda: sinkhorn_knopp(Z, iters=3.0)),
    ("backend", ValueError, lambda: sinkhorn_knopp(Z, backend="numpy")),
    ("check_finite", TypeError, lambda: sinkhorn_knopp(Z, check_finite=1)),
    # sgld_step_(x, grad, ...).
    ("x", TypeError, lambda: sgld_step_(X.long(), X.long(), 0.1, 0.0)),
    ("x", TypeError, lambda: sgld_step_(X.bool(), X.bool(), 0.1, 0.0)),
    ("x", TypeError, lambda: sgld_step_(X.double(), X.double(), 0.1, 0.0)),
    ("grad", TypeError, lambda: sgld_step_(X, X.half(), 0.1, 0.0)),
    ("grad", ValueError, lambda: sgld_step_(X, torch.zeros(1), 0.1, 0.0)),  # broadcastable, still refused
    ("grad", ValueError, lambda: sgld_step_(X, torch.zeros(2, 2), 0.1, 0.0)),
    ("grad", ValueError, lambda: sgld_step_(X, torch.zeros(4, device="meta"), 0.1, 0.0)),
    ("x", ValueError, lambda: sgld_step_(torch.zeros(1, 4).expand(3, 4), torch.zeros(3, 4), 0.1, 0.0)),
    ("x", ValueError, lambda: sgld_step_(with_value(X, math.nan), X, 0.1, 0.0, check_finite=True)),
    ("grad", ValueError, lambda: sgld_step_(X.clone(), with_value(X, math.inf), 0.1, 0.0, check_finite=True)),
    ("step_size", ValueError, lambda: sgld_step_(X, G, math.nan, 0.0)),
    ("noise_std", ValueError, lambda: sgld_step_(X, G, 0.1, -1.0)),
    ("seed", ValueError, lambda: sgld_step_(X, G, 0.1, 0.0, seed=-1)),
    ("offset", ValueError, lambda: sgld_step_(X, G, 0.1, 0.0, offset=-1)),
    ("offset", ValueError, lambda: sgld_step_(X, G, 0.1, 0.0, offset=torch.tensor(1, device="meta"))),
    ("clamp", ValueError, lambda: sgld_step_(X, G, 0.1, 0.0, clamp=(1.0, -1.0))),
    ("grad", ValueError, lambda: sgld_step_(X, X, 0.1, 0.0)),
    ("grad", ValueError, lambda: sgld_step_(Z[:2], Z[1:3], 0.1, 0.0)),
    # buffer_draw(buffer, indices, ...).
    ("buffer", TypeError, lambda: buffer_draw(Z.int(), torch.zeros(2, dtype=torch.int64))),
    ("buffer", ValueError, lambda: buffer_draw(torch.zeros(0, 3), torch.zeros(2, dtype=torch.int64))),
    ("indices", TypeError, lambda: buffer_draw(Z, torch.zeros(2))),
    ("indices", TypeError, lambda: buffer_draw(Z, torch.zeros(2, dtype=torch.bool))),
    ("indices", TypeError, lambda: buffer_draw(Z, torch.zeros(2, 1, dtype=torch.int64))),
    ("indices", ValueError, lambda: buffer_draw(Z, torch.zeros(2, dtype=torch.int64, device="meta"))),
    ("indices", RuntimeError, lambda: buffer_draw(Z, torch.tensor([0, 4]))),
    ("buffer", ValueError, lambda: buffer_draw(with_value(Z, math.nan), torch.zeros(2, dtype=torch.int64),
                                               check_finite=True)),
    ("reinit_prob", ValueError, lambda: buffer_draw(Z, torch.zeros(2, dtype=torch.int64), reinit_prob=1.5)),
    ("low", ValueError, lambda: buffer_draw(Z, torch.zeros(2, dtype=torch.int64), low=1.0, high=-1.0)),
    # The sampler.
    ("steps", ValueError, lambda: SGLDConfig(steps=-1)),
    ("step_size", ValueError, lambda: SGLDConfig(step_size=math.nan)),
    ("buffer_size", ValueError, lambda: SGLDConfig(buffer_size=0)),
    ("reinit_prob", ValueError, lambda: SGLDConfig(reinit_prob=2.0)),
    ("init_low", ValueError, lambda: SGLDConfig(init_low=1.0, init_high=0.0)),
    ("input_shape", ValueError, lambda: sampler(input_shape=(0,))),
    ("input_shape", ValueError, lambda: sampler(input_shape=(2.5,))),
    ("input_shape", ValueError, lambda: sampler(input_shape="2")),
    ("config", TypeError, lambda: sampler(config={"steps": 1})),
    ("dtype", TypeError, lambda: sampler(dtype=torch.int64)),
    ("temperature", ValueError, lambda: sampler(temperature=0.0)),
    ("seed", ValueError, lambda: sampler(seed=-1)),
    ("batch_size", ValueError, lambda: sampler().sample(MLPClusterer(2, 3, hidden=8), 0)),
    ("model(x)", ValueError, lambda: sampler().sample(model_returning(lambda x: x.sum(1)), 4)),
    ("model(x)", ValueError, lambda: sampler().sample(model_returning(lambda x: x[:, :1]), 4)),
    ("model(x)", ValueError, lambda: sampler().sample(model_returning(lambda x: x[:2]), 4)),
    ("model(x)", TypeError, lambda: sampler().sample(model_returning(lambda x: (x > 0).long()), 4)),
    ("state", ValueError, lambda: sampler().load_state_dict({"buffer": torch.zeros(8, 2)})),
    ("state buffer", ValueError, lambda: sampler().load_state_dict(sampler(input_shape=(3,)).state_dict())),
    # The trainer's config and the dataset name.
    ("steps", ValueError, lambda: TrainConfig(steps=0)),
    ("steps", TypeError, lambda: TrainConfig(steps=2.5)),
    ("batch_size", ValueError, lambda: TrainConfig(batch_size=0)),
    ("log_every", ValueError, lambda: TrainConfig(log_every=0)),
    ("lr", ValueError, lambda: TrainConfig(lr=0.0)),
    ("temperature", ValueError, lambda: TrainConfig(temperature=-1.0)),
    ("reinit_prob", ValueError, lambda: TrainConfig(sgld=dict(reinit_prob=-0.5))),
    ("max_energy", ValueError, lambda: TrainConfig(max_energy=0.0)),
    ("max_energy", ValueError, lambda: TrainConfig(max_energy=math.nan)),
    ("max_retries", ValueError, lambda: TrainConfig(max_retries=-1)),
    ("max_retries", TypeError, lambda: TrainConfig(max_retries=1.0)),
    ("device", ValueError, lambda: TrainConfig(device="gpu")),
    ("clusters", ValueError, lambda: TrainConfig(clusters=1)),
    ("seed", ValueError, lambda: TrainConfig(seed=-3)),
    ("dataset", ValueError, lambda: load_dataset("imagenet")),
    ("dataset", ValueError, lambda: GEDITrainer(TrainConfig(dataset="imagenet"), "unused")),
]


@pytest.mark.parametrize("argument,error,call", LIBRARY, ids=[f"{i}-{case[0]}" for i, case in enumerate(LIBRARY)])
def test_library_rejects_bad_input_naming_the_argument(argument, error, call):
    with pytest.raises(error) as info:
        call()
    assert re.search(rf"(^|[^\w]){re.escape(argument)}(\[\d+\])? (must|=)", str(info.value)), str(info.value)


@NO_CUDA
def test_cuda_device_without_cuda_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="device 'cuda' needs CUDA"):
        GEDITrainer(TrainConfig(device="cuda", hidden=8, sgld=dict(buffer_size=8)), tmp_path)


# --- files: dataset paths and checkpoints ---------------------------------------------------------

def fashion_files(folder, damage):
    """Valid Fashion-MNIST IDX files in `folder`, the training images then passed through `damage`."""
    for prefix, n in (("train", 12), ("t10k", 5)):
        for kind, array in (("images-idx3", np.zeros((n, 28, 28))), ("labels-idx1", np.arange(n) % 10)):
            header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            data = gzip.compress(header + array.astype(np.uint8).tobytes())
            path = folder / f"{prefix}-{kind}-ubyte.gz"
            path.write_bytes(damage(data) if (prefix, kind) == ("train", "images-idx3") else data)
    return folder / "train-images-idx3-ubyte.gz"


def pickled(path, obj, damage=lambda b: b):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(damage(pickle.dumps(obj)))
    return path


def cifar10_files(root, damage):
    folder = root / "cifar-10-batches-py"
    batch = {"data": np.zeros((2, 3072), dtype=np.uint8), "labels": [0, 1]}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        pickled(folder / name, batch, damage if name == "data_batch_3" else (lambda b: b))
    return folder / "data_batch_3"


def cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


def flip(data: bytes) -> bytes:
    return data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:]


def flip_inside(data: bytes, part: bytes) -> bytes:
    at = data.index(part) + len(part) // 2
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


FILES = [
    ("fashion-mnist truncated", ValueError, lambda tmp: fashion_files(tmp, cut), "fashion-mnist"),
    ("fashion-mnist corrupt", ValueError, lambda tmp: fashion_files(tmp, flip), "fashion-mnist"),
    ("fashion-mnist not gzip", ValueError, lambda tmp: fashion_files(tmp, lambda b: b"\x00" * 40), "fashion-mnist"),
    ("cifar10 truncated", ValueError, lambda tmp: cifar10_files(tmp, cut), "cifar10"),
    ("cifar10 wrong content", ValueError, lambda tmp: cifar10_files(tmp, lambda b: pickle.dumps({"data": 1})),
     "cifar10"),
    ("cifar100 missing labels", ValueError,
     lambda tmp: [pickled(tmp / "cifar-100-python" / p, {"data": np.zeros((1, 3072), np.uint8)})
                  for p in ("train", "test")][0], "cifar100"),
    ("svhn not a mat file", ValueError,
     lambda tmp: [(tmp / f"{p}_32x32.mat").write_bytes(b"MATLAB garbage") for p in ("train", "test")]
     and tmp / "train_32x32.mat", "svhn"),
    ("fashion-mnist missing", DatasetUnavailable, lambda tmp: tmp / "train-images-idx3-ubyte.gz", "fashion-mnist"),
]


@pytest.mark.parametrize("case,error,make,dataset", FILES, ids=[case[0] for case in FILES])
def test_bad_dataset_files_name_the_dataset_and_file(tmp_path, case, error, make, dataset):
    path = make(tmp_path)
    with pytest.raises(error) as info:
        load_dataset(dataset, root=tmp_path)
    message = str(info.value)
    assert f"dataset {dataset!r}" in message and str(path) in message, message


CHECKPOINTS = [
    ("truncated", cut, "is truncated"),
    ("bit flip in a key", lambda b: flip_inside(b, b"step"), "is truncated or unreadable"),
    ("bit flip in a tensor", lambda b: flip_inside(b, torch.arange(1000).numpy().tobytes()), "do not match the sha256"),
    ("empty", lambda b: b"", "is truncated"),
    ("not a checkpoint", lambda b: b"hello, this is not a checkpoint file" * 3, "not a gedi_fast checkpoint"),
    ("header only", lambda b: b[:48], "is truncated"),
]


@pytest.mark.parametrize("case,damage,problem", CHECKPOINTS, ids=[case[0] for case in CHECKPOINTS])
def test_bad_checkpoints_name_the_file_and_the_problem(tmp_path, case, damage, problem):
    path = checkpoint.save_atomic({"step": 3, "x": torch.arange(1000)}, tmp_path / "c.pt")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(checkpoint.CheckpointError, match=re.escape(str(path)) + ".*" + problem):
        checkpoint.load(path)


# --- the command line -----------------------------------------------------------------------------

CLI = [
    (["--steps", "0"], "steps must be >= 1"),
    (["--seed", "-1"], "seed must be >= 0"),
    (["--device", "gpu"], "device must be a torch device"),
    (["--set", "max_energy=0"], "max_energy must be > 0"),
    (["--set", "max_retries=-2"], "max_retries must be >= 0"),
    (["--set", "batch_size=0"], "batch_size must be >= 1"),
    (["--set", "temperature=-0.1"], "temperature must be > 0"),
    (["--resume"], "not found"),
]


@pytest.mark.parametrize("argv,message", CLI, ids=[" ".join(case[0]) for case in CLI])
def test_cli_bad_flags_exit_2_with_a_message(tmp_path, capsys, argv, message):
    assert main(["train", "--out", str(tmp_path / "run"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gedi-fast: error:") and message in err, err


def test_cli_unknown_dataset_and_bad_set_values_exit_2_with_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--out", str(tmp_path), "--dataset", "imagenet"])
    assert exc.value.code == 2 and "invalid choice: 'imagenet'" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path), "--set", "max_energy=huge"]) == 2
    assert "gedi-fast: error: --set max_energy expects a float" in capsys.readouterr().err


def test_cli_resume_from_a_corrupt_checkpoint_without_a_previous_one(tmp_path, capsys):
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"GEDICKP1" + b"\x00" * 10)
    assert main(["train", "--out", str(tmp_path), "--resume"]) == 2
    assert f"checkpoint {tmp_path / CHECKPOINT_NAME} is truncated" in capsys.readouterr().err


def test_cli_truncated_dataset_file_is_a_message_not_a_traceback(tmp_path, capsys):
    path = fashion_files(tmp_path, cut)
    argv = ["train", "--dataset", "fashion-mnist", "--data-root", str(tmp_path), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "truncated" in err and "Traceback" not in err


@NO_CUDA
def test_cli_cuda_without_cuda(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--device", "cuda", "--steps", "1"]) == 2
    assert "needs CUDA" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["triad", "--seeds", "0"], ["study", "queue", "--seeds", "-1"],
                                  ["images", "--seeds", "0"], ["triad", "--jobs", "0"], ["study", "sgld", "--jobs", "x"]])
def test_cli_counts_of_seeds_and_jobs_are_positive(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert f"argument {argv[-2]}:" in capsys.readouterr().err


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_cli_a_backend_this_torch_lacks(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--device", "mps", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "error: device 'mps' is not available on this machine or torch build" in err and "Traceback" not in err


# --- non-contiguous and expanded tensors: handled, with the contiguous result ---------------------

def layouts(gen: torch.Generator, rows: int, cols: int) -> dict[str, torch.Tensor]:
    return {"transposed": torch.randn(cols, rows, generator=gen).t(),
            "row slice": torch.randn(rows, cols + 5, generator=gen)[:, 2:2 + cols],
            "every other row": torch.randn(2 * rows, cols, generator=gen)[::2],
            "expanded": torch.randn(1, cols, generator=gen).expand(rows, cols)}


@pytest.mark.parametrize("layout", ["transposed", "row slice", "every other row", "expanded"])
def test_loss_and_sinkhorn_take_any_layout(gen, layout):
    z1, zn = layouts(gen, 6, 4)[layout], layouts(gen, 3, 4)[layout]
    z2 = torch.randn(6, 4, generator=gen)
    assert not z1.is_contiguous()
    results = []
    for inputs in ([z1, z2, zn], [z1.contiguous(), z2, zn.contiguous()]):
        leaves = [t.detach().requires_grad_(True) for t in inputs]  # detach keeps the layout
        loss = GEDILoss(assignment="sinkhorn", energy_reg=0.1)(*leaves)
        loss.backward()
        results.append((loss, [t.grad for t in leaves], sinkhorn_knopp(inputs[0])))
    (loss, grads, q), (want_loss, want_grads, want_q) = results
    assert torch.equal(loss, want_loss) and torch.equal(q, want_q)
    for got, want in zip(grads, want_grads):
        assert torch.equal(got, want)


def test_sgld_and_buffer_draw_take_strided_and_expanded_inputs(gen):
    x = torch.randn(5, 6, generator=gen)
    expanded_grad = torch.randn(1, 6, generator=gen).expand(5, 6)
    assert torch.equal(sgld_step_(x.clone(), expanded_grad, 0.3, 0.1, seed=2),
                       sgld_step_(x.clone(), expanded_grad.contiguous(), 0.3, 0.1, seed=2))
    buffer = torch.randn(4, 9, generator=gen).t()  # 9 rows, non-contiguous
    indices = torch.arange(16)[::2] % 9
    got = buffer_draw(buffer, indices, 0.5, seed=4)
    want = buffer_draw(buffer.contiguous(), indices.contiguous(), 0.5, seed=4)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(got[0], reference.buffer_draw(buffer, indices, 0.5, -1.0, 1.0, 4, 0)[0])
