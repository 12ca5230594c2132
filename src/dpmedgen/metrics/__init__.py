"""Utility metrics of generated images against the real test set.

Usage::

    from dpmedgen.metrics import evaluate, METRIC_INFO
    scores = evaluate(real, fake)            # {"fid_effnetlite0": ..., "kid_effnetlite0": ..., ...}

``real`` and ``fake`` are float arrays (N, H, W) (or (N, 1, H, W)) with values in [0, 1]. ``METRICS`` maps a
metric *family* name to ``function(ctx: EvalContext) -> dict[str, float]``; one family may return several
metric names (``kid_effnetlite0`` returns ``kid_effnetlite0`` and ``kid_effnetlite0_std``).
``METRIC_INFO`` describes every metric name that can appear in the output.

Families:

- ``fid_effnetlite0``: torchmetrics FID formula on ImageNet EfficientNet-Lite0 features (not Inception).
- ``kid_effnetlite0``: torchmetrics KID on the same features (features computed once, shared).
- ``ssim_nn`` / ``psnr_nn``: SSIM / PSNR of each fake image to its L2-nearest real image, mean over fakes.
"""

from __future__ import annotations

import time
from functools import cached_property
from typing import Callable

import numpy as np
import torch

from ..registry import Registry
from . import canary, downstream, fidelity, fusion, image_quality, iqa, membership
from .encoder import DEFAULT_INPUT_SIZE, NUM_FEATURES, extract_features
from .info import OPTIONAL_INPUTS, MetricInfo, PatientImages, not_with, requires

__all__ = [
    "METRICS",
    "METRIC_INFO",
    "MetricInfo",
    "PatientImages",
    "OPTIONAL_INPUTS",
    "requires",
    "not_with",
    "skip_reason",
    "all_metric_info",
    "metric_table_markdown",
    "EvalContext",
    "evaluate",
    "metric_names",
    "validate_images",
]

MetricFn = Callable[["EvalContext"], dict[str, float]]
METRICS: Registry[MetricFn] = Registry("metric")

def missing_inputs(family: str, ctx: "EvalContext") -> list[str]:
    """The optional inputs `family` needs that `ctx` does not have (empty: it can run)."""
    return [i for i in getattr(METRICS.get(family), "requires", ()) if getattr(ctx, i) is None]


def skip_reason(family: str, ctx: "EvalContext") -> str | None:
    """Why `family` cannot run on `ctx` (a needed input is missing, or an input it does not apply to is
    present); None when it can run."""
    for name, why in getattr(METRICS.get(family), "not_with", {}).items():  # "does not apply" says the most
        if getattr(ctx, name) is not None:
            return why
    missing = missing_inputs(family, ctx)
    if missing:
        return f"needs {', '.join(missing)}, which this evaluation does not have"
    return None


METRIC_INFO: dict[str, MetricInfo] = {}

for _stage in ("train", "generate", "evaluate"):  # added by the aggregate step from Snakemake benchmark files
    for _suffix, _what, _range in (
        ("wall_s", "wall-clock seconds", "(0, inf) s"),
        ("cpu_s", "CPU seconds (all threads)", "[0, inf) s"),
        ("max_rss_mb", "peak resident memory", "(0, inf) MB"),
    ):
        METRIC_INFO[f"cost_{_stage}_{_suffix}"] = MetricInfo(
            f"cost_{_stage}_{_suffix}",
            higher_is_better=False,
            range=_range,
            source="Snakemake `benchmark:` file of the job",
            description=f"{_what} of the run's {_stage} job"
            + (" (output perturbation reuses the non-private training: its train job only adds noise)" if _stage == "train" else ""),
            family="cost",
        )


def all_metric_info(source_names: tuple[str, ...] | list[str] = ("mri", "pet")) -> list[MetricInfo]:
    """Every metric name that can appear in metrics.parquet, with per-source names spelled for `source_names`.

    ``METRIC_INFO`` holds the names that do not depend on the dataset; the source-quality (``iqa_sources``)
    and fusion families add one name per source modality of a fusion dataset (``ms_ssim_vs_mri``, ...).
    """
    extra = iqa.iqa_sources_info(tuple(source_names)) + fusion.fusion_info(tuple(source_names))
    merged = dict(METRIC_INFO) | {i.name: i for i in extra}
    order = list(FAMILY_ORDER)
    return sorted(merged.values(), key=lambda i: order.index(i.family) if i.family in order else len(order))


def metric_table_markdown(source_names: tuple[str, ...] = ("mri", "pet")) -> str:
    """README's metric table: one row per metric name (per-source names spelled for `source_names`)."""
    lines = ["| metric | family | better | range | source | what |", "|---|---|---|---|---|---|"]
    better = {True: "higher", False: "lower", None: "—"}
    for info in all_metric_info(source_names):
        direction = better[info.higher_is_better]
        if info.ideal is not None and info.higher_is_better is not None:  # two-sided (an attack AUC: 0.5)
            direction = f"closer to {info.ideal:g}"
        lines.append(
            f"| `{info.name}` | {info.family} | {direction} | {info.range} | {info.source} | {info.description} |"
        )
    return "\n".join(lines)


#: The metric modules, in the reading order of README's metric table (fidelity, image quality, fusion, downstream
#: utility, privacy). Each declares its families beside their definitions: ``FAMILIES`` (family name ->
#: ``function(ctx) -> dict``) and ``INFO`` (a MetricInfo per metric name). A new metric is one module plus one
#: entry here.
METRIC_MODULES = (fidelity, image_quality, iqa, fusion, downstream, membership, canary)
for _module in METRIC_MODULES:
    for _family, _fn in _module.FAMILIES.items():
        METRICS.register(_family)(_fn)
    METRIC_INFO.update({_info.name: _info for _info in _module.INFO})

#: Families computed outside `evaluate` (by the aggregate step), listed in METRIC_INFO only.
EXTERNAL_FAMILIES = ("cost",)
#: Reading order of the families (README's metric table): as declared in METRIC_MODULES, then the external ones.
FAMILY_ORDER = tuple(f for _module in METRIC_MODULES for f in _module.FAMILIES) + EXTERNAL_FAMILIES


def metric_names(families: list[str] | None = None) -> list[str]:
    """The metric names ``evaluate(..., families)`` returns, in output order."""
    fams = METRICS.names() if families is None else list(families)
    return [m.name for f in fams for m in METRIC_INFO.values() if m.family == f]


def validate_images(images: np.ndarray, name: str) -> np.ndarray:
    """Check one image set and return it as float32 (N, H, W); ValueError naming ``name`` otherwise."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    arr = np.asarray(images)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"{name} images must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"{name} images must have shape (N, H, W) or (N, 1, H, W), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} images are empty (N = 0)")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} images: need at least 2 images, got {arr.shape[0]}")
    if min(arr.shape[1:]) < 11:
        raise ValueError(f"{name} images are too small ({arr.shape[1]}x{arr.shape[2]}); need at least 11x11")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} images contain NaN or inf")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} images must have values in [0, 1], got min {lo:.4g}, max {hi:.4g}")
    return arr


class EvalContext:
    """The inputs of one evaluation plus lazily computed, cached shared intermediate results.

    ``real_features`` / ``fake_features``: EfficientNet-Lite0 features, CPU float64 (N, 1280), computed once.
    ``nn_index``: for each fake image the index of its L2-nearest real image, computed once.

    Optional inputs (None when the evaluation has none; families that need them declare it, ``requires``):

    - ``sources``: fusion runs only: ``{"mri": (N, H, W), "pet": (N, H, W)}``, the source images each fake
      (fused) image was made from, row-aligned with ``fake``.
    - ``members`` / ``nonmembers``: :class:`PatientImages` of the training patients and of held-out
      patients (membership-inference attacks).
    - ``discriminator``: a function (N, 1, H, W) float tensor in [0, 1] -> (N,) realness scores of the run's
      trained discriminator (GANs; white-box attacks).
    - ``ledger``: the run's privacy ledger (dict; ``guarantee``, ``epsilon_per_patient``, ``delta_per_patient``,
      ``epsilon_per_image``, ``delta_per_image``, ... for formal guarantees).
    - ``inception_weights``: path of the user's TF-Inception TorchScript file (``fid_inception``).
    - ``canary``: the share of the run's training images that carried the canary marker (runs whose split
      planted canaries; ``canary`` family).
    - ``fake_labels``: the class label of each fake image (N,), when the run has one generator per class.
    - ``labelled_real``: :class:`~dpmedgen.metrics.downstream.LabelledSplits`, the real patients the downstream
      classifier is selected on (val) and tested on (test), with their labels.
    - ``memorization_threshold``: `membership.memorization_threshold(members, nonmembers)` computed beforehand
      (it depends on the real data only; the study computes it once per dataset); None: computed here.
    """

    def __init__(
        self,
        real: np.ndarray,
        fake: np.ndarray,
        device: str | torch.device = "cpu",
        batch_size: int = 64,
        seed: int = 0,
        input_size: int = DEFAULT_INPUT_SIZE,
        progress: bool | None = None,
        real_features: torch.Tensor | None = None,
        sources: dict[str, np.ndarray] | None = None,
        members: PatientImages | None = None,
        nonmembers: PatientImages | None = None,
        discriminator: Callable[[torch.Tensor], torch.Tensor] | None = None,
        ledger: dict | None = None,
        inception_weights: str | None = None,
        canary: float | None = None,
        fake_labels: np.ndarray | None = None,
        labelled_real: "downstream.LabelledSplits | None" = None,
        memorization_threshold: float | None = None,
    ) -> None:
        self.real = validate_images(real, "real")
        self.fake = validate_images(fake, "fake")
        self.sources = None
        if sources is not None:
            self.sources = {k: validate_images(v, f"source {k}") for k, v in sources.items()}
            for k, v in self.sources.items():
                if v.shape != self.fake.shape:
                    raise ValueError(f"source {k} has shape {v.shape}; the fused images have {self.fake.shape}")
        self.members = self.nonmembers = None
        for name, group in (("members", members), ("nonmembers", nonmembers)):
            if group is not None:
                group = PatientImages(validate_images(group.images, name), np.asarray(group.patient_id))
                if group.images.shape[1:] != self.fake.shape[1:]:
                    raise ValueError(f"{name} images are {group.images.shape[1:]}; samples are {self.fake.shape[1:]}")
                setattr(self, name, group)
        self.discriminator = discriminator
        self.ledger = ledger
        self.inception_weights = inception_weights
        if canary is not None and not 0 < canary <= 1:
            raise ValueError(f"canary: the share of training images carrying the canary must be in (0, 1], got {canary}")
        self.canary = canary
        self.fake_labels = None
        if fake_labels is not None:
            self.fake_labels = np.asarray(fake_labels, dtype=np.int64)
            if self.fake_labels.shape != (len(self.fake),):
                raise ValueError(f"fake_labels: one label per fake image needed, got shape {self.fake_labels.shape}")
        self.labelled_real = labelled_real
        self.memorization_threshold = None if memorization_threshold is None else float(memorization_threshold)
        if self.real.shape[1:] != self.fake.shape[1:]:
            raise ValueError(
                f"real and fake images differ in size: real {self.real.shape[1:]} vs fake {self.fake.shape[1:]}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.input_size = int(input_size)
        # a progress bar only when there is enough work for it to matter
        self.progress = (len(self.real) + len(self.fake) > 2000) if progress is None else progress
        if real_features is not None:  # computed once per dataset by the caller (see `real_features`)
            if tuple(real_features.shape) != (len(self.real), NUM_FEATURES):
                raise ValueError(
                    f"real_features must be ({len(self.real)}, {NUM_FEATURES}) for these real images; "
                    f"got {tuple(real_features.shape)}"
                )
            self.__dict__["real_features"] = real_features.to(torch.float64)

    def _features(self, images: np.ndarray) -> torch.Tensor:
        return extract_features(
            images,
            device=self.device,
            batch_size=self.batch_size,
            input_size=self.input_size,
            progress=self.progress,
        )

    @cached_property
    def real_features(self) -> torch.Tensor:
        return self._features(self.real)

    @cached_property
    def fake_features(self) -> torch.Tensor:
        return self._features(self.fake)

    @cached_property
    def nn_index(self) -> torch.Tensor:
        return image_quality.nearest_real_indices(self.real, self.fake)


def evaluate(
    real: np.ndarray,
    fake: np.ndarray,
    families: list[str] | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    seed: int = 0,
    *,
    real_features: torch.Tensor | None = None,
    timings: dict[str, float] | None = None,
    skipped: dict[str, str] | None = None,
    **inputs,
) -> dict[str, float]:
    """Run the metric ``families`` (default: all registered) and return ``{metric_name: value}``.

    Raises ValueError for bad inputs (empty, wrong ndim, values outside [0, 1], size mismatch; the message
    names ``real`` or ``fake``) or unknown families. Deterministic given ``seed`` (KID subsets).
    ``real_features`` (from ``extract_features(real)``) skips recomputing the encoder on the real images,
    which are shared by every run of a study. If ``timings`` is a dict it receives the seconds per family.
    """
    fams = METRICS.names() if families is None else list(families)
    unknown = [f for f in fams if f not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric families {unknown}; known: {', '.join(METRICS.names())}")
    ctx = EvalContext(
        real, fake, device=device, batch_size=batch_size, seed=seed, real_features=real_features, **inputs
    )
    out: dict[str, float] = {}
    for fam in fams:
        reason = skip_reason(fam, ctx)
        if reason is not None:
            if skipped is not None:
                skipped[fam] = reason
            continue
        t0 = time.perf_counter()
        for name, value in METRICS.get(fam)(ctx).items():
            out[name] = float(value)
        if timings is not None:
            timings[fam] = time.perf_counter() - t0
    return out
