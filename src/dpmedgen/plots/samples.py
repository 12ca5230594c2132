"""A compact grid of real test images and generated samples, one labelled row per model/privacy setting."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from matplotlib.lines import Line2D

from .style import new_figure, save_figure

CELL_INCHES = 0.62  # side of one image cell
LABEL_INCHES = 1.45  # room for the row labels on the left
GAP_FRACTION = 0.05  # gap between cells, as a fraction of a cell


def _as_images(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"{name}: expected grey-scale images (N, H, W), got shape {arr.shape}")
    return arr


def plot_sample_grid(
    real: np.ndarray,
    rows: Sequence[tuple[str, np.ndarray]],
    paths: Sequence[str | os.PathLike] | str | os.PathLike,
    n_cols: int = 8,
    title: str | None = None,
    real_label: str = "real (test)",
    column_groups: Sequence[tuple[str, int]] | None = None,
) -> None:
    """Save a grid: first row `real_label` (``n_cols`` real images), then one row per ``(label, samples)``.

    Images are (N, H, W) (or (N, 1, H, W)) in [0, 1], drawn with a grey colormap at vmin 0 / vmax 1 (so
    contrast is comparable across rows), no ticks, row labels on the left. Rows with fewer than ``n_cols``
    images leave the remaining cells blank. ``column_groups`` — ``(header, width)`` pairs whose widths sum to
    ``n_cols`` — puts a header over each group of columns (e.g. one per class label).
    """
    if n_cols < 1:
        raise ValueError(f"n_cols must be >= 1, got {n_cols}")
    all_rows = [(real_label, _as_images(real, "real"))]
    all_rows += [(str(label), _as_images(imgs, f"row {label!r}")) for label, imgs in rows]

    n_rows = len(all_rows)
    # manual layout: square cells with equal small gaps in both directions
    gap = GAP_FRACTION * CELL_INCHES
    grid_w = n_cols * CELL_INCHES + (n_cols - 1) * gap
    grid_h = n_rows * CELL_INCHES + (n_rows - 1) * gap
    if column_groups is not None and sum(w for _, w in column_groups) != n_cols:
        raise ValueError(f"column_groups {list(column_groups)} must span the {n_cols} columns")
    title_h = (0.32 if title else 0.0) + (0.2 if column_groups else 0.0)
    fig_w, fig_h = LABEL_INCHES + grid_w + 0.02, grid_h + title_h + 0.02
    fig = new_figure(fig_w, fig_h)
    fig.set_layout_engine("none")
    gs = fig.add_gridspec(
        n_rows,
        n_cols,
        left=LABEL_INCHES / fig_w,
        right=(LABEL_INCHES + grid_w) / fig_w,
        bottom=0.01 / fig_h,
        top=(0.01 + grid_h) / fig_h,
        wspace=GAP_FRACTION,
        hspace=GAP_FRACTION,
    )
    axes = gs.subplots(squeeze=False)
    for r, (label, imgs) in enumerate(all_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(imgs):
                ax.imshow(imgs[c], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.set_facecolor("none")
        axes[r][0].set_ylabel(
            label,
            rotation=0,
            ha="right",
            va="center",
            fontsize=8,
            fontweight="bold" if r == 0 else "normal",
            labelpad=4,
        )
    if column_groups:
        start = 0
        for header, width in column_groups:
            if width:
                left, right = axes[0][start], axes[0][start + width - 1]
                x0, x1 = left.get_position().x0, right.get_position().x1
                y = left.get_position().y1 + 0.03 / fig_h
                fig.text((x0 + x1) / 2, y, header, ha="center", va="bottom", fontsize=7.5, fontstyle="italic")
                fig.add_artist(Line2D([x0 + 0.01 / fig_w, x1 - 0.01 / fig_w], [y, y], color="#555555", lw=0.6))
            start += width
    if title:
        fig.suptitle(title, fontsize=9.5, fontweight="bold", y=(fig_h - 0.04) / fig_h, va="top",
                     x=(LABEL_INCHES + grid_w / 2) / fig_w)
    save_figure(fig, paths)
