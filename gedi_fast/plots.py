"""PNG plots of a run (matplotlib, Agg backend): assignments, SGLD samples, loss terms, cluster sizes."""
from __future__ import annotations

import math
import pathlib

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import torch  # noqa: E402

TERMS = ("loss", "gen", "inv", "prior", "energy_reg")


@torch.no_grad()
def plot_run(trainer, out: str | pathlib.Path | None = None) -> list[pathlib.Path]:
    """Write the run's PNGs into `out` (default: the run folder); returns their paths."""
    folder = pathlib.Path(out) if out is not None else trainer.out
    folder.mkdir(parents=True, exist_ok=True)
    model, dataset = trainer.model.eval(), trainer.dataset
    test_x = dataset.test_x.to(trainer.device)
    predicted = model(test_x).argmax(1).cpu()
    written = []

    fig, ax = plt.subplots(figsize=(5, 4))
    if dataset.input_shape == (2,):
        lo, hi = test_x.min(0).values.cpu() - 0.5, test_x.max(0).values.cpu() + 0.5
        gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], 200), torch.linspace(lo[1], hi[1], 200), indexing="xy")
        grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(trainer.device)
        regions = model(grid).argmax(1).reshape(gx.shape).cpu()
        ax.contourf(gx, gy, regions, levels=trainer.clusters, alpha=0.25, cmap="tab10")
        ax.scatter(*dataset.test_x.T, c=predicted, s=6, cmap="tab10", vmin=0, vmax=max(trainer.clusters - 1, 1))
        ax.set_title("test points by cluster, decision regions")
    else:
        counts = torch.zeros(dataset.num_classes, trainer.clusters, dtype=torch.int64)
        counts.index_put_((dataset.test_y, predicted), torch.ones_like(predicted), accumulate=True)
        shown = ax.imshow(counts.T.numpy(), origin="lower", aspect="auto", cmap="Blues")  # one cell per (class, cluster)
        fig.colorbar(shown, ax=ax, label="test points")
        _integer_ticks(ax.xaxis, dataset.num_classes)
        _integer_ticks(ax.yaxis, trainer.clusters)
        ax.set_xlabel("class")
        ax.set_ylabel("cluster")
        ax.set_title("classes vs clusters (test)")
    written.append(_save(fig, folder / "assignments.png"))

    if trainer.sampler is not None:
        samples = trainer.sampler.buffer[:256].cpu()
        fig, ax = plt.subplots(figsize=(5, 4))
        if dataset.input_shape == (2,):
            ax.scatter(*dataset.train_x.T, s=3, c="lightgray", label="data")
            ax.scatter(*samples.T, s=4, c="crimson", label="SGLD buffer")
            ax.legend(loc="best")
        elif dataset.kind == "image" or dataset.pixels is not None:
            ax.imshow(_image_grid(samples[:64], dataset), cmap="gray")
            ax.axis("off")
        else:
            ax.hist(samples.reshape(-1).numpy(), bins=50)
        ax.set_title("SGLD samples")
        written.append(_save(fig, folder / "samples.png"))

    records = [h for h in trainer.history if "event" not in h]  # events (rollbacks) carry no terms
    if records:
        fig, ax = plt.subplots(figsize=(6, 4))
        steps = [h["step"] for h in records]
        for name in TERMS:
            ax.plot(steps, [h[name] for h in records], label=name)
        for event in trainer.history:
            if event.get("event") == "rollback":
                ax.axvline(event["diverged_at"], color="red", linewidth=0.8, linestyle=":")
        _term_axis(ax.yaxis, max(abs(h[name]) for h in records for name in TERMS if math.isfinite(h[name])))
        ax.set_xlabel("step")
        ax.legend(loc="best")
        ax.set_title("loss terms")
        written.append(_save(fig, folder / "terms.png"))

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(range(trainer.clusters), torch.bincount(predicted, minlength=trainer.clusters).numpy())
    _integer_ticks(ax.xaxis, trainer.clusters)
    ax.set_xlabel("cluster")
    ax.set_ylabel("test points")
    ax.set_title("cluster sizes")
    written.append(_save(fig, folder / "cluster_sizes.png"))
    return written


def _term_axis(axis, largest: float) -> None:
    """Linear up to |10|; beyond, terms of very different sizes share a log scale with a linear part
    around 0. Tick labels of 3 significant digits either way."""
    if largest > 10:
        axis.axes.set_yscale("symlog", linthresh=1.0)
        axis.set_minor_formatter(ticker.NullFormatter())
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:.3g}"))


def _integer_ticks(axis, count: int) -> None:
    """Ticks on whole ids only: every id up to 20, otherwise whole numbers matplotlib picks."""
    if count <= 20:
        axis.set_ticks(range(count))
    else:
        axis.set_major_locator(ticker.MaxNLocator(integer=True))


def _image_grid(samples: torch.Tensor, dataset) -> np.ndarray:
    """Up to 64 samples as one grey image of 8 per row, each tile scaled to its own min..max
    (standardised vector pixels have no fixed range; images live in [-1, 1] but SGLD may leave it)."""
    if dataset.kind == "image":
        tiles = samples.float().mean(1)  # N x H x W: channels averaged to grey
    else:
        tiles = samples.float().reshape(-1, *dataset.pixels)
    low = tiles.amin((1, 2), keepdim=True)
    tiles = (tiles - low) / (tiles.amax((1, 2), keepdim=True) - low).clamp_min(1e-8)
    tiles = torch.nn.functional.pad(tiles, (1, 1, 1, 1), value=1.0)  # a white frame around each
    per_row = 8
    blank = per_row - len(tiles) % per_row if len(tiles) % per_row else 0
    tiles = torch.cat([tiles, torch.ones(blank, *tiles.shape[1:])])
    rows = [torch.cat(list(tiles[i:i + per_row]), 1) for i in range(0, len(tiles), per_row)]
    return torch.cat(rows, 0).numpy()


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
