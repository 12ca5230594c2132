"""Shared types of the metrics package: metric descriptions and the optional evaluation inputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class MetricInfo:
    """One metric name that can appear in `metrics.parquet` (README's metric table is built from these)."""

    name: str
    higher_is_better: bool | None  # None: neither (a helper such as a standard deviation or a bound)
    range: str
    source: str
    description: str
    family: str = ""  # the METRICS entry that produces it
    #: The value of "no effect" for a metric that can miss it on both sides (an attack AUC of 0.5): tables
    #: rank such a metric by its distance from `ideal` (an AUC of 0.31 leaks as much as 0.69), not by its value.
    ideal: float | None = None


@dataclass(frozen=True)
class PatientImages:
    """Images (N, H, W) in [0, 1] with the patient each one belongs to (N,): members / non-members of an attack."""

    images: np.ndarray
    patient_id: np.ndarray

    def __post_init__(self) -> None:
        if len(self.images) != len(self.patient_id):
            raise ValueError(f"{len(self.images)} images but {len(self.patient_id)} patient ids")


#: Optional EvalContext inputs; a family that needs one lists it in its ``requires`` attribute and is
#: skipped (with the reason reported) when the evaluation does not have it.
OPTIONAL_INPUTS = (
    "sources", "members", "nonmembers", "discriminator", "ledger", "inception_weights", "canary", "fake_labels",
    "labelled_real", "memorization_threshold",
)


def requires(*inputs: str) -> Callable[[Callable], Callable]:
    """Declare the optional EvalContext inputs a metric family needs (see ``OPTIONAL_INPUTS``)."""
    unknown = [i for i in inputs if i not in OPTIONAL_INPUTS]
    if unknown:
        raise ValueError(f"unknown optional inputs {unknown}; known: {OPTIONAL_INPUTS}")

    def decorator(fn: Callable) -> Callable:
        fn.requires = tuple(inputs)  # type: ignore[attr-defined]
        return fn

    return decorator


def not_with(input_name: str, why: str) -> Callable[[Callable], Callable]:
    """Declare that a metric family does not apply when the evaluation has `input_name` (e.g. an attack on
    unconditional samples given fused images, whose `sources` are set); `why` is the reason reported."""
    if input_name not in OPTIONAL_INPUTS:
        raise ValueError(f"unknown optional input {input_name!r}; known: {OPTIONAL_INPUTS}")

    def decorator(fn: Callable) -> Callable:
        fn.not_with = {**getattr(fn, "not_with", {}), input_name: why}  # type: ignore[attr-defined]
        return fn

    return decorator
