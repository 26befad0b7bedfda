"""Run plots a person reads: images drawn as images, whole-number cluster ids, readable term ticks, one colour
per cluster for its points and its region, every step's terms under their moving average."""
from __future__ import annotations

import re
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.markers import MarkerStyle

from gedi_fast.train import plots
from gedi_fast.train.data import load_dataset
from gedi_fast.train.run_log import EVERY_STEP, STEP_TERMS


def test_flattened_grey_images_become_a_grid_of_tiles(gen):
    digits = load_dataset("digits", seed=0)
    assert digits.pixels == (8, 8) and digits.input_shape == (64,)
    grid = plots._image_grid(torch.randn(13, 64, generator=gen), digits)
    assert grid.shape == (2 * 10, 8 * 10)  # 13 tiles of 8x8 framed to 10x10, 8 per row
    assert grid.min() >= 0 and grid.max() <= 1


def test_cluster_ids_are_whole_numbers():
    fig, ax = plt.subplots()
    plots._integer_ticks(ax.xaxis, 7)
    assert list(ax.get_xticks()) == list(range(7))
    ax.set_xlim(-0.5, 49.5)
    plots._integer_ticks(ax.yaxis, 50)
    ax.set_ylim(-0.5, 49.5)
    assert all(float(t).is_integer() for t in ax.get_yticks())
    plt.close(fig)


def test_term_ticks_are_short_and_the_scale_fits_the_range():
    fig, (small, large) = plt.subplots(1, 2)
    plots._term_axis(small.yaxis, 1.21663)
    plots._term_axis(large.yaxis, 144.0)
    assert small.get_yscale() == "linear" and large.get_yscale() == "symlog"
    assert small.yaxis.get_major_formatter()(1.21663, 0) == "1.22"
    assert large.yaxis.get_major_formatter()(-0.170029, 0) == "-0.17"
    plt.close(fig)


def test_a_clusters_points_and_region_share_its_colour_and_the_legend_names_clusters_and_classes(gen):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    x = torch.randn(300, 2, generator=gen)
    dataset = SimpleNamespace(test_x=x, test_y=(x[:, 0] > 0).long(), num_classes=2)
    with torch.no_grad():
        predicted = model(x).argmax(1)
        fig, ax = plt.subplots()
        plots.assignments_2d(ax, model, dataset, predicted, 3, torch.device("cpu"))
    colours = plots.cluster_colours(3)
    (regions,) = ax.images
    for k in range(3):  # a region pixel holding cluster id k is drawn in cluster k's colour
        assert regions.cmap(regions.norm(k)) == pytest.approx(colours[k])
    drawn = set()
    for points in ax.collections:  # each scatter holds one cluster's points of one class, in that cluster's colour
        xy = torch.as_tensor(points.get_offsets(), dtype=torch.float32)
        with torch.no_grad():
            (k,) = set(model(xy).argmax(1).tolist())
        (c,) = set((xy[:, 0] > 0).long().tolist())
        assert tuple(points.get_facecolors()[0]) == pytest.approx(colours[k])
        marker = MarkerStyle(plots.CLASS_MARKERS[c])  # class c's marker, as scatter draws it
        assert np.array_equal(points.get_paths()[0].vertices, marker.get_path().transformed(marker.get_transform()).vertices)
        drawn |= {(k, c)}
    assert drawn == set(zip(predicted.tolist(), dataset.test_y.tolist()))
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        *(f"cluster {k} ({int((predicted == k).sum())})" for k in range(3)), "class 0", "class 1"]
    assert [tuple(h.get_facecolor()) for h in legend.legend_handles[:3]] == pytest.approx(colours)
    assert [h.get_marker() for h in legend.legend_handles[3:]] == list(plots.CLASS_MARKERS[:2])
    assert legend.get_title().get_text() == "colour: cluster (test points)\nmarker: true class"
    plt.close(fig)


@pytest.mark.parametrize("count", [2, 10, 11, 20, 37])
def test_every_cluster_id_gets_a_colour_of_its_own(count):
    colours = plots.cluster_colours(count)
    assert len(colours) == len(set(colours)) == count
    if count <= 20:  # tab10's colours first, whatever the count, then their lighter shades
        assert colours[:10] == plots.cluster_colours(10)[:count]


def test_the_moving_average_weighs_each_value_by_its_age_in_steps():
    steps, values = np.array([3, 4, 6, 7]), np.array([2.0, -1.0, 5.0, 0.5])
    d = 0.5  # span 3: each step of age halves a value's weight; the gap 4 -> 6 ages the past by two steps
    want = [2.0, (-1 + d * 2) / (1 + d), (5 - d**2 + d**3 * 2) / (1 + d**2 + d**3),
            (0.5 + d * 5 - d**3 + d**4 * 2) / (1 + d + d**3 + d**4)]
    np.testing.assert_allclose(plots.ema(steps, values, 3), want, rtol=1e-12)
    assert plots.ema(np.array([9]), np.array([-4.25]), 50).tolist() == [-4.25]  # one value averages to itself
    np.testing.assert_array_equal(plots.ema(steps, values, 1), values)  # span 1: no smoothing


def test_the_terms_plot_draws_every_step_faintly_under_its_moving_average():
    rng = np.random.default_rng(0)
    history = []
    for step in (25, 50, 75, 100):  # records as the trainer logs them, with every step's terms since the last
        every = {name: rng.normal(size=25).tolist() for name in STEP_TERMS}
        history.append({"step": step, **{name: values[-1] for name, values in every.items()}, EVERY_STEP: every})
    history.insert(2, {"step": 50, "event": "rollback", "reason": "non-finite loss nan", "retry": 1, "diverged_at": 60})
    fig, ax = plt.subplots()
    plots.plot_terms(ax, history)
    title = ax.get_legend().get_title().get_text()
    span = int(re.search(r"moving average over (\d+) steps", title).group(1))
    assert span > 1 and "faint: every step" in title
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(STEP_TERMS)
    lines = {line.get_label(): line for line in ax.get_lines()}
    for name in STEP_TERMS:
        raw, smoothed = lines[f"_{name}"], lines[name]
        values = np.concatenate([h[EVERY_STEP][name] for h in history if "event" not in h])
        assert raw.get_xdata().tolist() == smoothed.get_xdata().tolist() == list(range(1, 101))
        assert raw.get_ydata().tolist() == values.tolist()
        np.testing.assert_allclose(smoothed.get_ydata(), plots.ema(np.arange(1, 101), values, span))
        assert raw.get_color() == smoothed.get_color() and raw.get_alpha() < 0.5 and smoothed.get_alpha() is None
    assert [line.get_xdata()[0] for line in ax.get_lines() if line.get_color() == "red"] == [60]  # the rollback
    plt.close(fig)


def test_records_without_every_step_plot_one_value_per_log_step():
    history = [{"step": step, **{name: step / 100 for name in STEP_TERMS}} for step in (100, 200, 300)]
    fig, ax = plt.subplots()
    plots.plot_terms(ax, history)
    assert {name: ax.get_lines()[2 * i].get_xdata().tolist() for i, name in enumerate(STEP_TERMS)} == {
        name: [100, 200, 300] for name in STEP_TERMS}
    plt.close(fig)
