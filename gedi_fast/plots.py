"""PNG plots of a run (matplotlib, Agg backend): assignments, SGLD samples, loss terms, cluster sizes;
for images also grids, one row per cluster, of its test images, of fresh SGLD samples and of the
replay buffer; and the energy histograms of an out-of-distribution evaluation."""
from __future__ import annotations

import math
import pathlib

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402
import torch  # noqa: E402

from gedi_fast.ood import batched_logits  # noqa: E402

TERMS = ("loss", "gen", "inv", "prior", "energy_reg")
PER_CLUSTER = 10  # images per row of a cluster grid
FRESH_SAMPLES = 400  # SGLD samples drawn for samples_by_cluster.png


@torch.no_grad()
def plot_run(trainer, out: str | pathlib.Path | None = None) -> list[pathlib.Path]:
    """Write the run's PNGs into `out` (default: the run folder); returns their paths."""
    folder = pathlib.Path(out) if out is not None else trainer.out
    folder.mkdir(parents=True, exist_ok=True)
    model, dataset = trainer.model.eval(), trainer.dataset
    predicted = batched_logits(model, dataset.test_x, trainer.device).argmax(1)
    written = []

    fig, ax = plt.subplots(figsize=(5, 4))
    if dataset.input_shape == (2,):
        lo, hi = dataset.test_x.min(0).values - 0.5, dataset.test_x.max(0).values + 0.5
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
    written.append(save_figure(fig, folder / "assignments.png"))

    if dataset.kind == "image":
        written += _image_grids(trainer, predicted, folder)
    elif trainer.sampler is not None:
        samples = trainer.sampler.buffer[:256].cpu()
        fig, ax = plt.subplots(figsize=(5, 4))
        if dataset.input_shape == (2,):
            ax.scatter(*dataset.train_x.T, s=3, c="lightgray", label="data")
            ax.scatter(*samples.T, s=4, c="crimson", label="SGLD buffer")
            ax.legend(loc="best")
        elif dataset.pixels is not None:
            ax.imshow(_image_grid(samples[:64], dataset), cmap="gray")
            ax.axis("off")
        else:
            ax.hist(samples.reshape(-1).numpy(), bins=50)
        ax.set_title("SGLD replay buffer (the chains' latest samples)")
        written.append(save_figure(fig, folder / "samples.png"))

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
        written.append(save_figure(fig, folder / "terms.png"))

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(range(trainer.clusters), torch.bincount(predicted, minlength=trainer.clusters).numpy())
    _integer_ticks(ax.xaxis, trainer.clusters)
    ax.set_xlabel("cluster")
    ax.set_ylabel("test points")
    ax.set_title("cluster sizes")
    written.append(save_figure(fig, folder / "cluster_sizes.png"))
    return written


def _image_grids(trainer, predicted: torch.Tensor, folder: pathlib.Path) -> list[pathlib.Path]:
    """test_by_cluster.png and, with SGLD, samples_by_cluster.png (a fresh chain from a copy of the
    replay buffer: the run's own sampler and stream are left untouched) and buffer_by_cluster.png."""
    dataset, model = trainer.dataset, trainer.model
    grids = [("test_by_cluster.png", "test images by cluster", dataset.test_x, predicted)]
    if trainer.sampler is not None:
        fresh = trainer.sampler.fork(trainer.sampler.seed + 1)
        with torch.enable_grad():
            samples = fresh.sample(model, min(FRESH_SAMPLES, len(fresh.buffer))).detach()
        buffer = trainer.sampler.buffer[:2000]
        for name, title, images in (("samples_by_cluster.png", f"SGLD samples ({fresh.config.steps} steps from "
                                     f"the buffer) by cluster", samples), ("buffer_by_cluster.png",
                                     "replay buffer by cluster", buffer)):
            grids.append((name, title, images.cpu(), batched_logits(model, images, trainer.device).argmax(1)))
    written = []
    for name, title, images, clusters in grids:
        rows = [images[clusters == k] for k in range(trainer.clusters)]
        fig, ax = plt.subplots(figsize=(PER_CLUSTER * 0.6 + 1, trainer.clusters * 0.6 + 0.8))
        ax.imshow(_cluster_grid(rows, dataset.input_shape), cmap="gray" if dataset.input_shape[0] == 1 else None)
        ax.set_yticks([(k + 0.5) * (dataset.input_shape[1] + 2) for k in range(trainer.clusters)],
                      [f"{k} ({int((clusters == k).sum())})" for k in range(trainer.clusters)])
        ax.set_xticks([])
        ax.set_ylabel("cluster (images in it)")
        ax.set_title(title)
        written.append(save_figure(fig, folder / name))
    return written


def _cluster_grid(rows: list[torch.Tensor], shape: tuple[int, int, int]) -> np.ndarray:
    """One row of up to PER_CLUSTER tiles per cluster, [-1, 1] shown as black..white (clipped: SGLD may
    leave the range), a white frame round each tile, empty places grey."""
    channels, h, w = shape
    tiles = torch.full((len(rows), PER_CLUSTER, channels, h + 2, w + 2), 0.5)
    for k, images in enumerate(rows):
        images = images[:PER_CLUSTER]
        tiles[k, :len(images)] = 1.0
        tiles[k, :len(images), :, 1:-1, 1:-1] = ((images.float() + 1) / 2).clamp(0, 1)
    grid = tiles.permute(0, 3, 1, 4, 2).reshape(len(rows) * (h + 2), PER_CLUSTER * (w + 2), channels)
    return grid[..., 0].numpy() if channels == 1 else grid.numpy()


def plot_ood(report: dict, scores: dict[str, torch.Tensor], path: pathlib.Path) -> pathlib.Path:
    """Histograms of the energy and of the max-softmax, in-distribution against out, AUROCs in the titles."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label, auroc in ((axes[0], "energy", "energy E(x) (higher: more likely OOD)", "energy_auroc"),
                                  (axes[1], "max_softmax", "max softmax (lower: more likely OOD)",
                                   "max_softmax_auroc")):
        inside, outside = scores[f"{key}_in"].numpy(), scores[f"{key}_out"].numpy()
        bins = np.histogram_bin_edges(np.concatenate([inside, outside]), bins=60)
        ax.hist(inside, bins=bins, alpha=0.6, density=True, label=f"{report['in']} test (in)")
        ax.hist(outside, bins=bins, alpha=0.6, density=True, label=f"{report['out']} test (out)")
        ax.set_xlabel(label)
        ax.set_ylabel("density")
        ax.set_title(f"AUROC {report[auroc]:.3f}")
        ax.legend(loc="best")
    return save_figure(fig, path)


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
    """Up to 64 vector samples shown as the dataset's grey images (`pixels`), 8 per row, each tile
    scaled to its own min..max: standardised vector pixels have no fixed range."""
    tiles = samples.float().reshape(-1, *dataset.pixels)
    low = tiles.amin((1, 2), keepdim=True)
    tiles = (tiles - low) / (tiles.amax((1, 2), keepdim=True) - low).clamp_min(1e-8)
    tiles = torch.nn.functional.pad(tiles, (1, 1, 1, 1), value=1.0)  # a white frame around each
    per_row = 8
    blank = per_row - len(tiles) % per_row if len(tiles) % per_row else 0
    tiles = torch.cat([tiles, torch.ones(blank, *tiles.shape[1:])])
    rows = [torch.cat(list(tiles[i:i + per_row]), 1) for i in range(0, len(tiles), per_row)]
    return torch.cat(rows, 0).numpy()


def save_figure(fig, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
