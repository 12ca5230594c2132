"""One consistent figure style: colours per privacy technique, markers per model, atomic saving.

Figures are built on ``matplotlib.figure.Figure`` objects directly (no pyplot, no global backend switch,
no display needed), so plotting works headless and never leaks open figures.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import seaborn as sns
from matplotlib.figure import Figure

PRIVACY_ORDER = [
    "none",
    "dpsgd",
    "input_laplace",
    "input_gaussian",
    "output_laplace",
    "output_gaussian",
    "functional",
]

# Mostly Okabe-Ito (colour-blind safe); olive from Paul Tol's "muted" set so no two techniques share a hue.
PRIVACY_COLORS: dict[str, str] = {
    "none": "#333333",
    "dpsgd": "#0072B2",  # blue
    "input_laplace": "#D55E00",  # vermillion
    "input_gaussian": "#E69F00",  # orange
    "output_laplace": "#009E73",  # bluish green
    "output_gaussian": "#999933",  # olive
    "functional": "#CC79A7",  # reddish purple
}

PRIVACY_LABELS: dict[str, str] = {
    "none": "non-private",
    "dpsgd": "DP-SGD",
    "input_laplace": "input Laplace",
    "input_gaussian": "input Gaussian",
    "output_laplace": "output Laplace",
    "output_gaussian": "output Gaussian",
    "functional": "functional",
}

# `real_data`: the downstream classifier trained on the real training patients (a reference, not a model)
MODEL_MARKERS: dict[str, str] = {"dcgan": "o", "sngan": "s", "ddcgan": "^", "ddpm": "D", "real_data": "*"}
MODEL_LABELS: dict[str, str] = {"dcgan": "DCGAN", "sngan": "SNGAN", "ddcgan": "DDcGAN", "ddpm": "DDPM", "real_data": "real data"}

_FALLBACK_COLORS = sns.color_palette("dark", 10).as_hex()
_FALLBACK_MARKERS = ["v", "P", "X", "*", "<", ">", "p", "h"]

PNG_DPI = 150


def privacy_color(privacy: str) -> str:
    """Colour of a privacy technique; unknown names get a stable colour from a fallback palette."""
    if privacy in PRIVACY_COLORS:
        return PRIVACY_COLORS[privacy]
    return _FALLBACK_COLORS[_stable_index(privacy, len(_FALLBACK_COLORS))]


def model_marker(model: str) -> str:
    if model in MODEL_MARKERS:
        return MODEL_MARKERS[model]
    return _FALLBACK_MARKERS[_stable_index(model, len(_FALLBACK_MARKERS))]


def privacy_label(privacy: str) -> str:
    return PRIVACY_LABELS.get(privacy, privacy)


def model_label(model: str) -> str:
    return MODEL_LABELS.get(model, model.upper())


def privacy_sort_key(privacy: str) -> tuple[int, str]:
    return (PRIVACY_ORDER.index(privacy) if privacy in PRIVACY_ORDER else len(PRIVACY_ORDER), privacy)


def _stable_index(name: str, n: int) -> int:
    # not hash(): that is salted per process, and colours must not change between runs
    return sum(ord(c) * (i + 1) for i, c in enumerate(name)) % n


def setup_style() -> None:
    """Seaborn whitegrid / paper context, sized to stay legible at paper column width. Idempotent."""
    sns.set_theme(
        context="paper",
        style="whitegrid",
        font_scale=1.0,
        rc={
            "axes.titlesize": 9,
            "axes.labelsize": 8.5,
            "xtick.labelsize": 7.5,
            "ytick.labelsize": 7.5,
            "legend.fontsize": 7.5,
            "legend.title_fontsize": 8,
            "figure.titlesize": 10,
            "lines.linewidth": 1.4,
            "lines.markersize": 5,
            "grid.linewidth": 0.5,
            "axes.linewidth": 0.6,
            "pdf.fonttype": 42,  # embed TrueType: editable text in the PDF, accepted by publishers
            "ps.fonttype": 42,
            "savefig.dpi": PNG_DPI,
            "image.interpolation": "nearest",
        },
    )


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure (constrained layout) in the project style."""
    setup_style()
    return Figure(figsize=(width, height), layout="constrained")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_figure(fig: Figure, paths: Iterable[str | os.PathLike] | str | os.PathLike) -> list[Path]:
    """Write ``fig`` to every path (format from the suffix: png at 150 dpi, pdf, svg...), atomically.

    Each file is written to a temporary name in the same directory and then ``os.replace``-d, so readers
    (and Snakemake) never see a half-written figure. Parent directories are created.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    written = []
    for p in map(Path, paths):
        fmt = p.suffix.lstrip(".").lower()
        if not fmt:
            raise ValueError(f"figure path {str(p)!r} has no suffix (.png, .pdf, ...)")
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=f".tmp.{fmt}", dir=p.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fig.savefig(fh, format=fmt, dpi=PNG_DPI, bbox_inches="tight", pad_inches=0.03)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; use the usual permissions
            os.replace(tmp, p)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        written.append(p)
    return written


__all__ = [
    "PRIVACY_COLORS",
    "PRIVACY_LABELS",
    "PRIVACY_ORDER",
    "MODEL_MARKERS",
    "MODEL_LABELS",
    "privacy_color",
    "privacy_label",
    "model_marker",
    "model_label",
    "privacy_sort_key",
    "setup_style",
    "new_figure",
    "save_figure",
]
