"""Helpers of the adapters whose images are one file each (PNG, JPEG): chestxray14 and isic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from skimage.transform import resize

from dpmedgen.data.sources.base import DatasetError


def load_gray(path: Path, size: int, unpacked: Path) -> np.ndarray:
    """One image as float32 (size, size) in [0, 1]: grayscale, dtype range, centre square crop, resized.

    `unpacked` is the archive folder holding it, named in the error when the image cannot be read.
    """
    try:
        with Image.open(path) as img:
            img.draft("L", (size, size))  # JPEG only: decode at a reduced scale (still >= size)
            if img.mode.startswith("I"):
                arr = np.asarray(img, dtype=np.float32) / 65535.0
            else:
                arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise DatasetError(f"{path}: unreadable image ({err}); delete {unpacked} and rerun to unpack it again (and "
                           "delete its archive too if the error comes back)") from None
    h, w = arr.shape
    s = min(h, w)
    arr = arr[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    if s != size:
        arr = resize(arr, (size, size), order=1, anti_aliasing=s > size, preserve_range=True)
    return np.clip(arr, 0.0, 1.0).astype(np.float32)


def balanced_selection(candidates: dict[int, dict[str, list]], n_per_class: int, max_per_patient: int,
                       seed: int) -> tuple[dict[int, dict[str, list]], int]:
    """Per class {patient: [items in order]} -> the selected {patient: items} per class, and images per class.

    Each class's patients (sorted, then shuffled with `seed`) give their first `max_per_patient` items
    until `n_per_class` are taken; `n_per_class` is lowered to what the poorer class can give.
    """
    room = {c: sum(min(len(v), max_per_patient) for v in pats.values()) for c, pats in candidates.items()}
    n = min(n_per_class, *room.values())
    rng = np.random.default_rng(seed)
    chosen = {}
    for c in sorted(candidates):
        patients = sorted(candidates[c])
        chosen[c], left = {}, n
        for i in rng.permutation(len(patients)):
            if left == 0:
                break
            take = candidates[c][patients[i]][:min(max_per_patient, left)]
            chosen[c][patients[i]] = take
            left -= len(take)
    return chosen, n
