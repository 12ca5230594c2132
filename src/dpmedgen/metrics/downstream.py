"""Downstream utility: how well a classifier trained on (synthetic) labelled images classifies real patients.

:func:`downstream_utility` trains a small CNN (:class:`SmallClassifier`) from scratch on ``train`` (the
labelled images a generator released), picks the training epoch on real validation patients (``val``) and
then scores the picked classifier once on real test patients (``test``). High test AUROC means the synthetic
images carry the class information a real classifier needs.

Protocol:

- Training: cross-entropy with class weights inversely proportional to the class frequencies of ``train``
  (``w_k = n_train / (C * n_k)``, C = classes present in ``train``; classes absent from ``train`` get weight 0,
  they have no images to weigh), so an imbalanced synthetic set does not just teach the majority class. Adam,
  shuffled mini-batches, random horizontal flips. Everything random comes from ``seed`` (weights initialised
  after ``torch.manual_seed(seed)``, batches and flips from a ``torch.Generator`` seeded with ``seed``): the same
  inputs, seed and thread count give bit-identical results.
- Model selection on ``val`` only: after every epoch the image-level AUROC on ``val`` is computed and the
  weights of the best epoch are kept (ties: the earlier epoch). The test set never influences anything up to
  that point (apart from the number of classes K, the largest label of the three sets + 1, which fixes the
  size of the output layer).
- Test, once: the selected weights are loaded and ``test`` is scored exactly once, at image level and, when
  ``test.patient_id`` is given, at patient level (a patient's score is the mean of the predicted class
  probabilities over their images).

Reference row: the same function fed the *real* training images (with their labels) as ``train`` gives the
utility of real data under the identical classifier, selection and test; a synthetic set's number is read
against it.

AUROC: torchmetrics ``binary_auroc`` on P(class 1) for K = 2; for K > 2 torchmetrics ``multiclass_auroc``
one-vs-rest per class, macro-averaged over the classes present in the scored set (= ``average="macro"`` when
all K classes are present; a class with no images in the set has no defined AUROC and torchmetrics would
count it as 0). Accuracy: torchmetrics ``multiclass_accuracy`` (micro) of the argmax prediction.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .info import MetricInfo, not_with, requires

if TYPE_CHECKING:
    from . import EvalContext

__all__ = [
    "DEFAULT_EPOCHS",
    "MIN_IMAGE_SIZE",
    "LabelledImages",
    "SmallClassifier",
    "class_weights",
    "class_probabilities",
    "auroc",
    "accuracy",
    "patient_scores",
    "downstream_utility",
    "LabelledSplits",
    "downstream",
]

DEFAULT_EPOCHS = 30
MIN_IMAGE_SIZE = 16  # four stride-2 blocks take 16 pixels down to 1


@dataclass
class LabelledImages:
    """Images (N, H, W) float in [0, 1], integer class labels (N,) in 0..K-1, and the patient of each image
    (N,) as strings, or None for synthetic images (no patient)."""

    images: np.ndarray
    labels: np.ndarray
    patient_id: np.ndarray | None = None

    def __post_init__(self) -> None:
        images = self.images.detach().cpu().numpy() if isinstance(self.images, torch.Tensor) else np.asarray(self.images)
        if images.dtype.kind not in "fiub":
            raise ValueError(f"images must be a numeric array, got dtype {images.dtype}")
        if images.ndim != 3:
            raise ValueError(f"images must have shape (N, H, W), got shape {images.shape}")
        if images.shape[0] == 0:
            raise ValueError("images are empty (N = 0)")
        images = images.astype(np.float32, copy=False)
        if not np.isfinite(images).all():
            raise ValueError("images contain NaN or inf")
        lo, hi = float(images.min()), float(images.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"images must have values in [0, 1], got min {lo:.4g}, max {hi:.4g}")

        labels = self.labels.detach().cpu().numpy() if isinstance(self.labels, torch.Tensor) else np.asarray(self.labels)
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"labels must have shape ({len(images)},) like the images, got shape {labels.shape}")
        if labels.dtype.kind not in "iub" and not (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        if labels.min() < 0:
            raise ValueError(f"labels must be class indices >= 0, got {labels.min()}")

        patient_id = self.patient_id
        if patient_id is not None:
            patient_id = np.asarray(patient_id)
            if patient_id.ndim != 1 or len(patient_id) != len(images):
                raise ValueError(
                    f"patient_id must have shape ({len(images)},) like the images, got shape {patient_id.shape}"
                )
            patient_id = patient_id.astype(str)
        self.images, self.labels, self.patient_id = images, labels, patient_id

    def __len__(self) -> int:
        return len(self.images)

    def classes(self) -> list[int]:
        """The distinct labels present, sorted."""
        return [int(c) for c in np.unique(self.labels)]


# --- the classifier ---------------------------------------------------------------------------------

CHANNELS = (16, 32, 64, 64)


class SmallClassifier(nn.Module):
    """A small CNN for grey images (N, 1, H, W) scaled to [-1, 1] -> class logits (N, K).

    Four blocks ``Conv2d(3x3, stride 2, padding 1) -> GroupNorm(8 groups) -> LeakyReLU(0.2)`` with
    16 -> 32 -> 64 -> 64 channels (each halves H and W: 64x64 -> 4x4, 16x16 -> 1x1), global average pooling
    and ``Linear(64, K)``. GroupNorm instead of BatchNorm: no running statistics, so training and evaluation
    compute the same function and batches of one image work. About 60 k parameters; any size >= 16.
    """

    def __init__(self, num_classes: int, channels: tuple[int, ...] = CHANNELS) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_channels = 1
        for out_channels in channels:
            blocks += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=False),
                nn.GroupNorm(min(8, out_channels), out_channels),
                nn.LeakyReLU(0.2),
            ]
            in_channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def _to_input(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W) in [0, 1] -> (N, 1, H, W) float32 in [-1, 1]."""
    return torch.as_tensor(images, dtype=torch.float32).unsqueeze(1) * 2.0 - 1.0


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Cross-entropy class weights ``n / (C * n_k)`` (C = classes present, 0 for absent ones): every present
    class weighs the same in total."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.as_tensor(weights, dtype=torch.float32)


@torch.no_grad()
def class_probabilities(model: nn.Module, images: np.ndarray, batch_size: int) -> torch.Tensor:
    """Softmax class probabilities (N, K) of ``model`` on ``images`` (N, H, W) in [0, 1], eval mode, in batches."""
    model.eval()
    inputs = _to_input(images)
    return torch.cat([torch.softmax(model(inputs[i : i + batch_size]), dim=1) for i in range(0, len(inputs), batch_size)])


# --- scores (torchmetrics) --------------------------------------------------------------------------


def auroc(probabilities: torch.Tensor, labels: torch.Tensor | np.ndarray) -> float:
    """AUROC of class probabilities (N, K) against labels (N,): binary AUROC of P(class 1) for K = 2;
    for K > 2 one-vs-rest AUROC per class, macro-averaged over the classes present in ``labels``."""
    from torchmetrics.functional.classification import binary_auroc, multiclass_auroc

    target = torch.as_tensor(labels, dtype=torch.long)
    num_classes = probabilities.shape[1]
    if num_classes == 2:
        return float(binary_auroc(probabilities[:, 1], target))
    with warnings.catch_warnings():  # "No positive samples in targets" for absent classes, dropped below
        warnings.filterwarnings("ignore", message=".*No positive samples.*")
        per_class = multiclass_auroc(probabilities, target, num_classes=num_classes, average="none")
    present = torch.bincount(target, minlength=num_classes) > 0
    return float(per_class[present].mean())


def accuracy(probabilities: torch.Tensor, labels: torch.Tensor | np.ndarray) -> float:
    """Share of argmax predictions equal to the label."""
    from torchmetrics.functional.classification import multiclass_accuracy

    target = torch.as_tensor(labels, dtype=torch.long)
    predicted = probabilities.argmax(dim=1)
    return float(multiclass_accuracy(predicted, target, num_classes=probabilities.shape[1], average="micro"))


def patient_labels(labels: np.ndarray, patient_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(patients, index of each image's patient in ``patients``, label of each patient); ValueError naming a
    patient whose images carry different labels."""
    patients, first, inverse = np.unique(patient_id, return_index=True, return_inverse=True)
    per_patient = labels[first]  # the label of each patient's first image
    mixed = np.nonzero(labels != per_patient[inverse])[0]
    if len(mixed):
        patient = str(patients[inverse[mixed[0]]])
        found = sorted({int(c) for c in labels[inverse == inverse[mixed[0]]]})
        raise ValueError(f"patient {patient!r} has images with different labels {found}; a patient needs one label")
    return patients, inverse, per_patient


def patient_scores(probabilities: torch.Tensor, inverse: np.ndarray, num_patients: int) -> torch.Tensor:
    """Mean class probabilities (P, K) over each patient's images (``inverse``: each image's patient index)."""
    index = torch.as_tensor(inverse, dtype=torch.long)
    sums = torch.zeros(num_patients, probabilities.shape[1], dtype=torch.float64).index_add_(0, index, probabilities.double())
    counts = torch.bincount(index, minlength=num_patients).double()
    return sums / counts[:, None]


# --- the protocol -----------------------------------------------------------------------------------


def _check_sets(train: LabelledImages, val: LabelledImages, test: LabelledImages) -> int:
    """Validate the three sets together; return K."""
    sets = {"train": train, "val": val, "test": test}
    for name, data in sets.items():
        if not isinstance(data, LabelledImages):
            raise TypeError(f"{name} must be LabelledImages, got {type(data).__name__}")
        if min(data.images.shape[1:]) < MIN_IMAGE_SIZE:
            raise ValueError(
                f"{name} images are {data.images.shape[1]}x{data.images.shape[2]}; need at least "
                f"{MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}"
            )
        if data.images.shape[1:] != train.images.shape[1:]:
            raise ValueError(f"{name} images are {data.images.shape[1:]}; train images are {train.images.shape[1:]}")
        classes = data.classes()
        if len(classes) < 2:
            need = "to learn anything" if name == "train" else "for an AUROC"
            raise ValueError(f"{name} labels have a single class {classes}; need at least 2 classes {need}")
    if test.patient_id is not None:
        patient_labels(test.labels, test.patient_id)  # raises for a patient with mixed labels, before training
    return max(2, max(int(data.labels.max()) for data in sets.values()) + 1)


def downstream_utility(
    train: LabelledImages,
    val: LabelledImages,
    test: LabelledImages,
    *,
    seed: int,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = 64,
    lr: float = 1e-3,
    threads: int | None = None,
) -> dict[str, float]:
    """Train :class:`SmallClassifier` on ``train``, select the epoch by val AUROC, score ``test`` once.

    Returns ``downstream_auroc`` / ``downstream_accuracy`` (test, image level), ``downstream_auroc_patient`` /
    ``downstream_accuracy_patient`` (test, patient level; only when ``test.patient_id`` is given),
    ``downstream_val_auroc`` (val AUROC of the selected epoch) and ``downstream_epoch`` (the selected epoch,
    1-based). See the module docstring for the protocol. ValueError when a set has fewer than 2 classes,
    the sets differ in image size, images are smaller than 16x16, or a test patient has mixed labels.
    ``threads``: ``torch.set_num_threads`` for the call (the previous value is restored afterwards). Runs on CPU.
    """
    if int(epochs) != epochs or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if threads is not None and (int(threads) != threads or threads < 1):
        raise ValueError(f"threads must be a positive integer, got {threads}")
    num_classes = _check_sets(train, val, test)
    epochs, batch_size = int(epochs), int(batch_size)

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        torch.manual_seed(seed)
        model = SmallClassifier(num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        weights = class_weights(train.labels, num_classes)
        generator = torch.Generator().manual_seed(seed)
        inputs, targets = _to_input(train.images), torch.as_tensor(train.labels)

        best_val_auroc, best_epoch, best_state = -np.inf, 0, None
        for epoch in range(1, epochs + 1):
            model.train()
            order = torch.randperm(len(inputs), generator=generator)
            for start in range(0, len(order), batch_size):
                index = order[start : start + batch_size]
                batch = inputs[index]
                flip = torch.rand(len(index), generator=generator) < 0.5
                batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
                loss = F.cross_entropy(model(batch), targets[index], weight=weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            val_auroc = auroc(class_probabilities(model, val.images, batch_size), val.labels)
            if val_auroc > best_val_auroc:  # strict: ties keep the earlier epoch
                best_val_auroc, best_epoch = val_auroc, epoch
                best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}

        # NaN val AUROC every epoch (non-finite outputs) would leave nothing selected: use the last epoch
        if best_state is None:
            best_val_auroc, best_epoch = float("nan"), epochs
        else:
            model.load_state_dict(best_state)
        test_probabilities = class_probabilities(model, test.images, batch_size)  # the one look at test
    finally:
        torch.set_num_threads(previous_threads)

    scores = {
        "downstream_auroc": auroc(test_probabilities, test.labels),
        "downstream_accuracy": accuracy(test_probabilities, test.labels),
    }
    if test.patient_id is not None:
        patients, inverse, labels_per_patient = patient_labels(test.labels, test.patient_id)
        per_patient = patient_scores(test_probabilities, inverse, len(patients))
        scores["downstream_auroc_patient"] = auroc(per_patient, labels_per_patient)
        scores["downstream_accuracy_patient"] = accuracy(per_patient, labels_per_patient)
    scores["downstream_val_auroc"] = float(best_val_auroc)
    scores["downstream_epoch"] = float(best_epoch)
    return scores


# --- the metric family ------------------------------------------------------------------------------


@dataclass
class LabelledSplits:
    """The real patients of an evaluation's downstream family: `val` chooses the epoch, `test` scores it."""

    val: LabelledImages
    test: LabelledImages
    epochs: int = DEFAULT_EPOCHS


@not_with("sources", "fused images are fusions of the test patients' own scans, not synthetic training data: "
          "a classifier trained on them would be tested on its training patients")
@requires("fake_labels", "labelled_real")
def downstream(ctx: "EvalContext") -> dict[str, float]:
    """Downstream utility of the labelled samples (one generator per class; see the module docstring)."""
    real = ctx.labelled_real
    synthetic = LabelledImages(ctx.fake, ctx.fake_labels)
    return downstream_utility(synthetic, real.val, real.test, seed=ctx.seed, epochs=real.epochs)


_SOURCE = (
    "dpmedgen.metrics.downstream: small CNN (4 stride-2 conv blocks, GroupNorm) trained on the samples with "
    "class-balanced cross-entropy; torchmetrics binary_auroc / multiclass_accuracy"
)
_PROTOCOL = "epoch chosen by val AUROC (real val patients), test scored once; reference row: model real_data"

INFO: list[MetricInfo] = [
    MetricInfo(
        "downstream_auroc",
        higher_is_better=True,
        range="[0, 1]; 0.5 = chance",
        source=_SOURCE,
        description="AUROC on the real test images of a classifier trained only on the run's labelled samples "
        f"(one generator per class); {_PROTOCOL}.",
        family="downstream",
    ),
    MetricInfo(
        "downstream_accuracy",
        higher_is_better=True,
        range="[0, 1]",
        source=_SOURCE,
        description="Accuracy (argmax) of the same classifier on the real test images.",
        family="downstream",
    ),
    MetricInfo(
        "downstream_auroc_patient",
        higher_is_better=True,
        range="[0, 1]; 0.5 = chance",
        source=_SOURCE,
        description="AUROC over real test patients, a patient's score being the mean class probability over "
        "their images.",
        family="downstream",
    ),
    MetricInfo(
        "downstream_accuracy_patient",
        higher_is_better=True,
        range="[0, 1]",
        source=_SOURCE,
        description="Accuracy over real test patients (mean class probability over their images).",
        family="downstream",
    ),
    MetricInfo(
        "downstream_val_auroc",
        higher_is_better=None,
        range="[0, 1]",
        source=_SOURCE,
        description="Val AUROC of the selected epoch (a selection diagnostic; optimistic by construction, not a "
        "result).",
        family="downstream",
    ),
    MetricInfo(
        "downstream_epoch",
        higher_is_better=None,
        range="1..evaluate.downstream_epochs",
        source=_SOURCE,
        description="The training epoch chosen on val.",
        family="downstream",
    ),
]

FAMILIES = {"downstream": downstream}
