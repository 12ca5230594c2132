"""Canary exposure: how often released samples reproduce the marker planted in a few training patients.

See :mod:`dpmedgen.data.canary` for the marker, the choice of patients and the detector. A sample reproduces
the canary when :func:`~dpmedgen.data.canary.canary_detected` says so. Three numbers per run:

- ``canary_rate``: share of released samples that reproduce it.
- ``canary_train_share``: share of the training images that carry it; a model that reproduces its training
  distribution exactly shows the marker at about this rate, one that ignores rare patterns at 0.
- ``canary_rate_real``: share of the real held-out images (the evaluation's reference set, never planted)
  the detector fires on: its false-positive rate on real anatomy, expected 0.

A patient-level (ε, δ) guarantee bounds how much the canary patients can change the probability that a
sample shows the marker (by group privacy over the canary patients); a `canary_rate` near
`canary_train_share` at small ε would be a red flag.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..data.canary import DETECTION_THRESHOLD, canary_detected
from .info import MetricInfo, not_with, requires

if TYPE_CHECKING:
    from . import EvalContext


@not_with("sources", "fused samples are fusions of held-out pairs, which never carry the canary")
@requires("canary")
def canary(ctx: "EvalContext") -> dict[str, float]:
    """Canary exposure of the samples (see the module docstring)."""
    return {
        "canary_rate": float(np.mean(canary_detected(ctx.fake))),
        "canary_train_share": float(ctx.canary),
        "canary_rate_real": float(np.mean(canary_detected(ctx.real))),
    }


_SOURCE = (
    f"planted checkerboard marker (dpmedgen.data.canary; after Carlini et al., The Secret Sharer, USENIX "
    f"Security 2019); detected when white-minus-black cell mean >= {DETECTION_THRESHOLD} and every white cell is brighter "
    "than every black cell"
)

INFO: list[MetricInfo] = [
    MetricInfo(
        "canary_rate",
        higher_is_better=False,
        range="[0, 1]; 0 = no sample shows the marker",
        source=_SOURCE,
        description="Share of generated samples that reproduce the canary marker carried by a few training "
        "patients (split.canary_patients): direct evidence of memorizing those patients.",
        family="canary",
    ),
    MetricInfo(
        "canary_train_share",
        higher_is_better=None,
        range="(0, 1]",
        source="split table (canary column) and the training images",
        description="Share of the training images that carry the canary: the rate a model reproducing its "
        "training distribution exactly would show (the reference for canary_rate).",
        family="canary",
    ),
    MetricInfo(
        "canary_rate_real",
        higher_is_better=False,
        range="[0, 1]; expected 0",
        source=_SOURCE,
        description="Share of the real held-out reference images (never planted) on which the detector fires: "
        "its false-positive rate on real anatomy.",
        family="canary",
    ),
]

FAMILIES = {"canary": canary}
