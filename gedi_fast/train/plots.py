"""PNG plots of a run (matplotlib, Agg backend): assignments, SGLD samples, loss terms, cluster sizes;
for images also grids, one row per cluster, of its test images, of fresh SGLD samples and of the
replay buffer; and the energy histograms of an out-of-distribution evaluation."""
from __future__ import annotations

import math
import pathlib
from typing import TYPE_CHECKING

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import BoundaryNorm, ListedColormap  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from gedi_fast.train import seeds
from gedi_fast.train.inference import batched_logits  # noqa: E402
from gedi_fast.train.run_log import EVERY_STEP, STEP_TERMS  # noqa: E402

if TYPE_CHECKING:
    from gedi_fast.train.data import Dataset

PER_CLUSTER = 10  # images per row of a cluster grid
CLASS_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")  # true classes on assignments.png, when no more than these
SMOOTHING_WINDOWS = 20  # terms.png: the moving average's span is the run's steps / this
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
        assignments_2d(ax, model, dataset, predicted, trainer.clusters, trainer.device)
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

    if any("event" not in h for h in trainer.history):  # events (rollbacks) carry no terms
        fig, ax = plt.subplots(figsize=(6, 4))
        plot_terms(ax, trainer.history)
        written.append(save_figure(fig, folder / "terms.png"))

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(range(trainer.clusters), torch.bincount(predicted, minlength=trainer.clusters).numpy())
    _integer_ticks(ax.xaxis, trainer.clusters)
    ax.set_xlabel("cluster")
    ax.set_ylabel("test points")
    ax.set_title("cluster sizes")
    written.append(save_figure(fig, folder / "cluster_sizes.png"))
    return written


def cluster_colours(count: int) -> list[tuple[float, float, float, float]]:
    """One RGBA colour per cluster id, shared by everything that shows the cluster: tab10's up to 10
    clusters, then tab20's lighter shades of them up to 20, evenly spread over turbo beyond."""
    if count <= 20:
        tab20 = plt.get_cmap("tab20")
        return [tab20(2 * k if k < 10 else 2 * (k - 10) + 1) for k in range(count)]
    return [plt.get_cmap("turbo")(x) for x in np.linspace(0, 1, count)]


def assignments_2d(ax: Axes, model: torch.nn.Module, dataset: Dataset, predicted: torch.Tensor, clusters: int,
                   device: torch.device) -> None:
    """2-D data: the decision regions and the test points in one colour per cluster (cluster_colours, the
    same for both), true classes by marker where there are few enough (CLASS_MARKERS), and one legend
    naming both: which class went to which cluster reads off the plot."""
    colours = cluster_colours(clusters)
    lo, hi = dataset.test_x.min(0).values - 0.5, dataset.test_x.max(0).values + 0.5
    gx, gy = torch.meshgrid(torch.linspace(lo[0], hi[0], 200), torch.linspace(lo[1], hi[1], 200), indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1).to(device)
    regions = model(grid).argmax(1).reshape(gx.shape).cpu()
    half = (hi - lo) / 199 / 2  # the grid points are the pixels' centres
    extent = torch.stack([lo - half, hi + half], 1).reshape(-1).tolist()  # x0, x1, y0, y1
    ax.imshow(regions.numpy(), origin="lower", aspect="auto", interpolation="nearest", alpha=0.25, extent=extent,
              cmap=ListedColormap(colours), norm=BoundaryNorm(np.arange(clusters + 1) - 0.5, clusters))
    classes = dataset.num_classes if dataset.num_classes <= len(CLASS_MARKERS) else 1
    marks = dataset.test_y if classes > 1 else torch.zeros_like(predicted)
    for k in range(clusters):
        for c in range(classes):
            points = dataset.test_x[(predicted == k) & (marks == c)]
            if len(points):
                ax.scatter(*points.T, s=12, color=colours[k], marker=CLASS_MARKERS[c], linewidths=0)
    entries = [Patch(color=colours[k], label=f"cluster {k} ({int((predicted == k).sum())})") for k in range(clusters)]
    if classes > 1:
        entries += [Line2D([], [], linestyle="", marker=CLASS_MARKERS[c], color="dimgray", label=f"class {c}")
                    for c in range(classes)]
    columns = math.ceil(len(entries) / 16)  # so that many clusters still fit beside the plot
    ax.legend(handles=entries, title="colour: cluster (test points)" + ("\nmarker: true class" if classes > 1 else ""),
              loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small", title_fontsize="small", ncols=columns)
    ax.figure.set_size_inches(5 + 1.5 * columns, 4)
    ax.set_title("test points and decision regions by cluster")


def plot_terms(ax: Axes, history: list[dict]) -> None:
    """The loss and each term at every step, faint, under its moving average (ema, its span a fixed
    share of the run's steps, named in the legend): one batch's values are noisy. Records without
    per-step values (logs from before they were kept) give their own step's value; rollbacks are red lines."""
    series = [_term_series(history, name) for name in STEP_TERMS]
    first, last = min(steps[0] for steps, _ in series), max(steps[-1] for steps, _ in series)
    span = max(1, round((last - first + 1) / SMOOTHING_WINDOWS))
    for colour, name, (steps, values) in zip((f"C{i}" for i in range(len(STEP_TERMS))), STEP_TERMS, series):
        ax.plot(steps, values, color=colour, alpha=0.25, linewidth=0.7, label=f"_{name}")  # "_": not in the legend
        finite = np.isfinite(values)
        ax.plot(steps[finite], ema(steps[finite], values[finite], span), color=colour, linewidth=1.6, label=name)
    for event in history:
        if event.get("event") == "rollback":
            ax.axvline(event["diverged_at"], color="red", linewidth=0.8, linestyle=":")
    finite = np.concatenate([values[np.isfinite(values)] for _, values in series])
    _term_axis(ax.yaxis, float(np.abs(finite).max(initial=0.0)))
    ax.set_xlabel("step")
    ax.legend(loc="best", title=f"moving average over {span} steps;\nfaint: every step", fontsize="small",
              title_fontsize="small")
    ax.set_title("loss terms")


def _term_series(history: list[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of term `name` over the history's log records, step by step where they hold every step."""
    steps, values = [], []
    for record in history:
        if "event" in record:
            continue
        kept = record.get(EVERY_STEP, {}).get(name, [record[name]])
        steps += range(record["step"] - len(kept) + 1, record["step"] + 1)
        values += kept
    return np.asarray(steps), np.asarray(values, dtype=float)


def ema(steps: np.ndarray, values: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average of `values` logged at increasing `steps`: the weighted mean of the
    values so far, a value `a` steps old weighing (1 - 2 / (span + 1)) ** a. A gap between logged steps
    ages the past as those steps would have, and the first value averages to itself (no pull towards 0
    at the start, as a plain recursive EMA started at 0 has)."""
    decay = 1 - 2 / (span + 1)
    smoothed, total, weight, previous = [], 0.0, 0.0, None
    for step, value in zip(steps.tolist(), values.tolist()):  # Python floats: a long run's loop stays fast
        age = 0.0 if previous is None else decay ** (step - previous)
        total, weight, previous = value + age * total, 1 + age * weight, step
        smoothed.append(total / weight)
    return np.asarray(smoothed)


def _image_grids(trainer, predicted: torch.Tensor, folder: pathlib.Path) -> list[pathlib.Path]:
    """test_by_cluster.png and, with SGLD, samples_by_cluster.png (a fresh chain from a copy of the
    replay buffer: the run's own sampler and stream are left untouched) and buffer_by_cluster.png."""
    dataset, model = trainer.dataset, trainer.model
    grids = [("test_by_cluster.png", "test images by cluster", dataset.test_x, predicted)]
    if trainer.sampler is not None:
        fresh = trainer.sampler.fork(trainer.sampler.seed + seeds.FRESH_CHAINS)
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
