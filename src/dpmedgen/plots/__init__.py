"""Figures: privacy-utility trade-off curves and sample grids, in one consistent style.

All functions draw on pyplot-free ``matplotlib.figure.Figure`` objects and write files atomically, so they
work headless (no display, no backend switch).
"""

from .privacy_utility import plot_privacy_utility
from .samples import plot_sample_grid
from .style import (
    MODEL_MARKERS,
    PRIVACY_COLORS,
    TECHNIQUE_COLORS,
    mean_ci95,
    model_label,
    model_marker,
    privacy_color,
    privacy_dashes,
    privacy_label,
    privacy_technique,
    save_figure,
    setup_style,
)

__all__ = [
    "MODEL_MARKERS",
    "PRIVACY_COLORS",
    "TECHNIQUE_COLORS",
    "mean_ci95",
    "model_label",
    "model_marker",
    "plot_privacy_utility",
    "plot_sample_grid",
    "privacy_color",
    "privacy_dashes",
    "privacy_label",
    "privacy_technique",
    "save_figure",
    "setup_style",
]
