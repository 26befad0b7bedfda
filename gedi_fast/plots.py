"""PNG plots of a run (matplotlib, Agg backend): assignments, SGLD samples, loss terms, cluster sizes."""
from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
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
        ax.hist2d(dataset.test_y.numpy(), predicted.numpy(), bins=(dataset.num_classes, trainer.clusters), cmap="Blues")
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
        elif dataset.kind == "image":
            tiles = ((samples[:64] + 1) / 2).clamp(0, 1)
            rows = [torch.cat(list(tiles[i : i + 8].permute(0, 2, 3, 1)), 1) for i in range(0, len(tiles), 8)]
            ax.imshow(torch.cat(rows, 0).squeeze(-1).numpy(), cmap="gray")
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
        ax.set_yscale("symlog")
        ax.set_xlabel("step")
        ax.legend(loc="best")
        ax.set_title("loss terms")
        written.append(_save(fig, folder / "terms.png"))

    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(range(trainer.clusters), torch.bincount(predicted, minlength=trainer.clusters).numpy())
    ax.set_xlabel("cluster")
    ax.set_ylabel("test points")
    ax.set_title("cluster sizes")
    written.append(_save(fig, folder / "cluster_sizes.png"))
    return written


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
