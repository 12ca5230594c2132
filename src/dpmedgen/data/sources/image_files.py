"""Helpers of the adapters whose images are one file each (PNG, JPEG): chestxray14 and isic."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from dpmedgen.data.schema import ImageSet
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
        from skimage.transform import resize  # imported when used: most jobs never resize a file

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


def selection_image_set(chosen: dict[int, dict[str, list]], n: int, n_per_class: int, *, path_of: dict[str, Path],
                        unpacked_of: Callable[[str], Path], size: int, modality: str, dataset: str, where: str,
                        provenance: dict) -> ImageSet:
    """The ImageSet of a :func:`balanced_selection` (`chosen`, `n` per class; items are (slice, file name)).

    Warns when `n` < `n_per_class` (`where` says what was searched). Rows are ordered by patient, then
    slice; each image is read with :func:`load_gray` (`unpacked_of(name)`: the folder named in its error).
    ``provenance`` gets ``n_per_class``, ``n_per_class_used`` and ``patients_per_class``.
    """
    if n < n_per_class:
        warnings.warn(f"{dataset}: only {n} images per class available {where} (n_per_class={n_per_class}); "
                      f"taking {n} per class", stacklevel=3)
    rows = sorted((pid, s, name, c) for c in chosen for pid, items in chosen[c].items() for s, name in items)
    images = np.stack([load_gray(path_of[name], size, unpacked=unpacked_of(name)) for _, _, name, _ in tqdm(rows, desc=dataset)])
    return ImageSet(
        modalities={modality: images},
        patient_id=np.array([r[0] for r in rows]),
        slice=np.array([r[1] for r in rows]),
        label=np.array([r[3] for r in rows]),
        dataset=dataset,
        provenance={"n_per_class": n_per_class, "n_per_class_used": n,
                    "patients_per_class": {str(c): len(chosen[c]) for c in sorted(chosen)}} | provenance,
    )
