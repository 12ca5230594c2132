"""One consistent figure style: colours per privacy technique, markers per model, atomic saving.

Figures are built on ``matplotlib.figure.Figure`` objects directly (no pyplot, no global backend switch,
no display needed), so plotting works headless and never leaks open figures.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

import seaborn as sns
from matplotlib.figure import Figure

from dpmedgen import io

PRIVACY_ORDER = [
    "none",
    "dpsgd",
    "input_laplace",
    "input_gaussian",
    "output_laplace",
    "output_gaussian",
    "functional",
]

# colour = privacy technique; line style = noise type (so input Laplace and input Gaussian share a hue).
# Okabe-Ito (colour-blind safe).
TECHNIQUE_COLORS: dict[str, str] = {
    "none": "#333333",
    "dpsgd": "#0072B2",  # blue
    "input": "#D55E00",  # vermillion
    "output": "#009E73",  # bluish green
    "functional": "#CC79A7",  # reddish purple
}
TECHNIQUE_LABELS: dict[str, str] = {
    "none": "non-private",
    "dpsgd": "DP-SGD",
    "input": "input perturbation",
    "output": "output perturbation",
    "functional": "functional mechanism",
}
NOISE_TYPES = ("gaussian", "laplace")
# matplotlib dash patterns (on, off in points); "" = solid. DP-SGD's noise is Gaussian, so it is solid too.
NOISE_DASHES: dict[str, tuple[float, ...] | str] = {"gaussian": "", "laplace": (4.0, 1.6)}
# dash patterns of the non-private reference lines, one per model (all in the "none" grey)
REFERENCE_DASHES: list[tuple[float, ...]] = [(4, 2), (1.5, 1.5), (6, 2, 1.5, 2), (3, 1, 1, 1, 1, 1)]

PRIVACY_LABELS: dict[str, str] = {
    "none": "non-private",
    "dpsgd": "DP-SGD",
    "input_laplace": "input Laplace",
    "input_gaussian": "input Gaussian",
    "output_laplace": "output Laplace",
    "output_gaussian": "output Gaussian",
    "functional": "functional",
}


def privacy_technique(privacy: str) -> str:
    """The technique of a privacy mode: ``input_laplace`` -> ``input``; modes without a noise suffix are
    their own technique (``dpsgd``, ``functional``, ``none``)."""
    for noise in NOISE_TYPES:
        if privacy.endswith(f"_{noise}"):
            return privacy[: -len(noise) - 1]
    return privacy


def privacy_noise(privacy: str, noise_of: Mapping[str, str] | None = None) -> str | None:
    """Noise type of a privacy mode: ``noise_of[privacy]`` when given (the ledgers' ``noise`` field, e.g. for
    ``functional``, whose noise is a config choice), else the mode name's suffix; DP-SGD is Gaussian;
    ``none`` has no noise (None)."""
    if noise_of and isinstance(noise_of.get(privacy), str) and noise_of[privacy] in NOISE_TYPES:
        return noise_of[privacy]
    for noise in NOISE_TYPES:
        if privacy.endswith(f"_{noise}"):
            return noise
    if privacy == "dpsgd":
        return "gaussian"
    return None


def privacy_dashes(privacy: str, noise_of: Mapping[str, str] | None = None) -> tuple[float, ...] | str:
    """Line dash pattern of a privacy mode: solid for Gaussian noise (and no noise), dashed for Laplace."""
    return NOISE_DASHES.get(privacy_noise(privacy, noise_of) or "gaussian", "")


def mean_ci95(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Student-t 95 % confidence interval of the mean over seeds: mean ± t(0.975, n-1)·sd/√n.

    One seed has no interval (the mean itself is returned twice). Usable as seaborn's ``errorbar``.
    """
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return (float("nan"), float("nan"))
    mean = float(x.mean())
    if len(x) < 2:
        return (mean, mean)
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return (mean - half, mean + half)


_INTERVAL = re.compile(r"^\s*[\[(]\s*([^,\])]+?)\s*,\s*([^\])]+?)\s*[\])]")


def range_bounds(range_text: str) -> tuple[float, float]:
    """The numeric (low, high) of a metric's documented range (``MetricInfo.range``, e.g. ``"[0, 1]; 0.5 =
    chance"`` -> (0, 1), ``"[0, inf)"`` -> (0, inf)); a bound that is not a plain number (``"[0, n_real/k]"``) or
    a range that is not an interval (``"{1, 2, ...}"``) is unbounded on that side. Used to clip a confidence
    band to the values the metric can take (a 95 % t-interval over two seeds is mean ± 12.7 sd/√2 and can
    leave [0, 1] far behind).

    >>> range_bounds("[0, 1]; 0.5 = chance"), range_bounds("(-inf, inf)"), range_bounds("1..epochs")
    ((0.0, 1.0), (-inf, inf), (-inf, inf))
    """
    match = _INTERVAL.match(range_text or "")
    if match is None:
        return (-math.inf, math.inf)

    def number(text: str, default: float) -> float:
        try:
            value = float(text)
        except ValueError:
            return default
        return default if math.isnan(value) else value

    return number(match.group(1), -math.inf), number(match.group(2), math.inf)


# `real_data`: the downstream classifier trained on the real training patients (a reference, not a model)
MODEL_MARKERS: dict[str, str] = {"dcgan": "o", "sngan": "s", "ddcgan": "^", "ddpm": "D", "real_data": "*"}
MODEL_LABELS: dict[str, str] = {"dcgan": "DCGAN", "sngan": "SNGAN", "ddcgan": "DDcGAN", "ddpm": "DDPM", "real_data": "real data"}

_FALLBACK_COLORS = sns.color_palette("dark", 10).as_hex()
_FALLBACK_MARKERS = ["v", "P", "X", "*", "<", ">", "p", "h"]

PNG_DPI = 150


def privacy_color(privacy: str) -> str:
    """Colour of a privacy mode's technique (both noise types share it); unknown techniques get a stable
    colour from a fallback palette."""
    technique = privacy_technique(privacy)
    if technique in TECHNIQUE_COLORS:
        return TECHNIQUE_COLORS[technique]
    return _FALLBACK_COLORS[_stable_index(technique, len(_FALLBACK_COLORS))]


# kept for callers that look a mode's colour up directly
PRIVACY_COLORS: dict[str, str] = {p: privacy_color(p) for p in PRIVACY_ORDER}


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


def reference_dashes(i: int) -> tuple[float, ...]:
    """Dash pattern of the i-th non-private reference line (one per model, all grey, in every figure)."""
    return REFERENCE_DASHES[i % len(REFERENCE_DASHES)]


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Create `path` by calling ``write`` on a binary handle of a temporary file that `dpmedgen.io.write_atomic`
    renames into place: readers (and Snakemake) never see a half-written file, and a failed write leaves
    nothing behind."""

    def to_handle(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            write(fh)

    io.write_atomic(path, to_handle)
    return Path(path)


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
        written.append(write_atomic(p, lambda fh: fig.savefig(fh, format=fmt, dpi=PNG_DPI, bbox_inches="tight",
                                                              pad_inches=0.03)))
    return written


__all__ = [
    "NOISE_DASHES",
    "PRIVACY_COLORS",
    "TECHNIQUE_COLORS",
    "TECHNIQUE_LABELS",
    "REFERENCE_DASHES",
    "mean_ci95",
    "range_bounds",
    "privacy_dashes",
    "reference_dashes",
    "write_atomic",
    "privacy_noise",
    "privacy_technique",
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
