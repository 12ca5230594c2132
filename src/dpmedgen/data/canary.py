"""Canaries: a rare, unmistakable marker planted in the training images of a few training patients.

The most direct memorization test there is (Carlini et al., "The Secret Sharer", USENIX Security 2019, for
language models; here for images): if released samples reproduce a marker that only a handful of training
patients carry, the model has memorized those patients. A formal guarantee at the patient level limits how
much more often a model trained *with* a canary patient may show the marker than one trained without it.

Which patients. The split step picks `n` patients of the train split at random (seeded) and flags them in
the split table's ``canary`` column, so the choice is recorded next to the split and the same patients carry
the marker in every run. Every image (slice) of a canary patient, in every modality, carries the marker
wherever training images are loaded (:func:`plant`); the images on disk stay clean, so evaluation against
real images is unaffected, and the membership-inference members are the images as trained on.

The marker. A checkerboard of 4 x 4 cells (cell = max(1, size // 32) pixels, so 8 x 8 pixels at 64²)
written over the image at offset size // 16 from the top-left corner, in the background outside the head:
cells alternate 1 and 0 (white and black). Nothing in a brain slice looks like it.

Detection (:func:`canary_detected`). Strength (:func:`canary_strength`): the mean intensity of the marker's
white cells minus the mean of its black cells, at the marker's place: 1 for a planted marker, about 0 for
uniform background, below 0.25 for real phantom slices (tested). A sample reproduces the canary when its
strength is at least :data:`DETECTION_THRESHOLD` (0.5) *and* every white cell is brighter than every black
cell (cell means). The second condition is what makes noise harmless: the strength alone fires on about 4 %
of pure-noise images at 32² (the released samples of output perturbation at small ε are nearly binary
noise), while for noise whose 16 cells are exchangeable the chance that the 8 white cells all beat the 8
black ones is 1 / C(16, 8) = 1 / 12,870 (tested on 20,000 noise images).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

__all__ = [
    "CELLS",
    "DETECTION_THRESHOLD",
    "canary_detected",
    "canary_mask",
    "canary_patients",
    "canary_strength",
    "choose_canary_patients",
    "plant",
]

CELLS = 4  #: the marker is CELLS x CELLS checkerboard cells
DETECTION_THRESHOLD = 0.5  #: strength (white minus black cell mean) at which a sample reproduces the marker


def _is_tensor(x) -> bool:
    """Whether `x` is a torch tensor, without importing torch: the data stages (download, preprocess, split)
    use this module on numpy arrays only, and a job that imports torch for nothing pays ~2 CPU-s."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _geometry(height: int, width: int) -> tuple[int, int]:
    """(cell size, offset) in pixels for an image of this size."""
    size = min(height, width)
    cell = max(1, size // 32)
    offset = size // 16
    if offset + CELLS * cell > size:
        raise ValueError(f"images of {height}x{width} are too small for a canary marker")
    return cell, offset


def canary_mask(height: int, width: int) -> np.ndarray:
    """int8 (H, W): 1 on the marker's white cells, -1 on its black cells, 0 elsewhere."""
    cell, offset = _geometry(height, width)
    mask = np.zeros((height, width), dtype=np.int8)
    for i in range(CELLS):
        for j in range(CELLS):
            rows = slice(offset + i * cell, offset + (i + 1) * cell)
            cols = slice(offset + j * cell, offset + (j + 1) * cell)
            mask[rows, cols] = 1 if (i + j) % 2 == 0 else -1
    return mask


def plant(images: torch.Tensor | np.ndarray, rows: np.ndarray, low: float = 0.0, high: float = 1.0):
    """A copy of `images` (..., H, W) with the marker written into the images of `rows` (a boolean mask over
    the first axis; every channel). `low` / `high` are the black / white values: 0 / 1 for [0, 1] images,
    -1 / 1 for the [-1, 1] scale the models train on."""
    rows = np.asarray(rows, dtype=bool)
    if len(rows) != len(images):
        raise ValueError(f"{len(rows)} row flags for {len(images)} images")
    mask = canary_mask(*images.shape[-2:])
    if _is_tensor(images):
        import torch

        out = images.clone()
        white, black = torch.from_numpy(mask == 1), torch.from_numpy(mask == -1)
        index = torch.from_numpy(np.flatnonzero(rows))
        part = out[index]
        part[..., white] = high
        part[..., black] = low
        out[index] = part
        return out
    out = np.array(images, copy=True)
    part = out[rows]
    part[..., mask == 1] = high
    part[..., mask == -1] = low
    out[rows] = part
    return out


def canary_strength(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Marker strength of each image (N, H, W) or (N, 1, H, W) in [0, 1]: mean of the white cells minus mean
    of the black cells at the marker's place, float64 (N,); 1 for a planted marker."""
    x = images.detach().cpu().numpy() if _is_tensor(images) else np.asarray(images)
    if x.ndim == 4:
        x = x[:, 0]
    mask = canary_mask(*x.shape[-2:])
    x = x.astype(np.float64)
    return x[:, mask == 1].mean(axis=1) - x[:, mask == -1].mean(axis=1)


def _cell_means(x: np.ndarray) -> np.ndarray:
    """Mean of each marker cell, (N, CELLS, CELLS), for images (N, H, W)."""
    cell, offset = _geometry(*x.shape[-2:])
    block = x[:, offset : offset + CELLS * cell, offset : offset + CELLS * cell].astype(np.float64)
    return block.reshape(len(x), CELLS, cell, CELLS, cell).mean(axis=(2, 4))


def canary_detected(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Whether each image (N, H, W) or (N, 1, H, W) in [0, 1] reproduces the marker, bool (N,): strength >=
    DETECTION_THRESHOLD and every white cell brighter than every black cell (see the module docstring)."""
    x = images.detach().cpu().numpy() if _is_tensor(images) else np.asarray(images)
    if x.ndim == 4:
        x = x[:, 0]
    cells = _cell_means(x)
    white = (np.add.outer(np.arange(CELLS), np.arange(CELLS)) % 2) == 0
    ordered = cells[:, white].min(axis=1) > cells[:, ~white].max(axis=1)
    return ordered & (canary_strength(x) >= DETECTION_THRESHOLD)


def choose_canary_patients(splits: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """The split table with a boolean ``canary`` column: `n` train patients picked at random (`seed`)."""
    train = np.sort(splits.loc[splits["split"] == "train", "patient_id"].astype(str).to_numpy())
    if not 0 <= n <= len(train):
        raise ValueError(f"canary_patients = {n}: choose between 0 and the {len(train)} train patients")
    chosen = np.random.default_rng([int(seed), 0xCA4A]).choice(train, size=n, replace=False)
    return splits.assign(canary=splits["patient_id"].astype(str).isin(set(chosen)))


def canary_patients(splits: pd.DataFrame) -> set[str]:
    """The patients flagged in the split table's ``canary`` column (none if the table has no such column)."""
    if "canary" not in splits.columns:
        return set()
    return set(splits.loc[splits["canary"].astype(bool), "patient_id"].astype(str))
