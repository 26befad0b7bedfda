"""Run plots a person reads: images drawn as images, whole-number cluster ids, readable term ticks."""
from __future__ import annotations

import matplotlib.pyplot as plt
import torch

from gedi_fast import plots
from gedi_fast.data import load_dataset


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
