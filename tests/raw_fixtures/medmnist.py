"""Tiny MedMNIST npz files with the publisher's keys, dtypes and names (``<flag>_<size>.npz``, ``<flag>.npz`` at 28).

Keys ``{train,val,test}_images`` (uint8, (N, S, S) or (N, S, S, 3) for RGB sets) and
``{train,val,test}_labels`` (uint8, (N, 1), or (N, 14) 0/1 findings for chestmnist), saved with
``np.savez_compressed``. Class k images are brighter by 40 grey levels per class. ChestMNIST rows cycle
through the finding sets of ``CHEST_PATTERNS``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPLITS = ("train", "val", "test")
RGB_FLAGS = {"pathmnist", "dermamnist", "retinamnist", "bloodmnist"}
CHEST_PATTERNS = ((), (6,), (2, 6), (2,), (0,))  # no finding, pneumonia, effusion+pneumonia, effusion, atelectasis
DEFAULT_COUNTS = {"train": 10, "val": 3, "test": 3}


def npz_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def make_arrays(flag: str = "pneumoniamnist", size: int = 64, counts: dict | None = None, n_classes: int = 2,
                seed: int = 0) -> dict[str, np.ndarray]:
    """The npz content. Single-label row i of a split has class (i + offset) % n_classes (offset 0, 0, 1)."""
    counts = counts or DEFAULT_COUNTS
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for s, split in enumerate(SPLITS):
        n = counts[split]
        if flag == "chestmnist":
            labels = np.zeros((n, 14), dtype=np.uint8)
            for i in range(n):
                labels[i, list(CHEST_PATTERNS[i % len(CHEST_PATTERNS)])] = 1
            level = labels.sum(axis=1)
        else:
            labels = ((np.arange(n) + (1 if split == "test" else 0)) % n_classes).astype(np.uint8)[:, None]
            level = labels[:, 0]
        shape = (n, size, size, 3) if flag in RGB_FLAGS else (n, size, size)
        base = 40 + 40 * level.reshape((n,) + (1,) * (len(shape) - 1))
        images = np.clip(base + rng.integers(0, 30, size=shape), 0, 255).astype(np.uint8)
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
    # the publisher's key order: images first, then labels
    return {k: out[k] for k in [f"{s}_images" for s in SPLITS] + [f"{s}_labels" for s in SPLITS]}


def write_flag(folder: Path, flag: str = "pneumoniamnist", size: int = 64, **kwargs) -> dict[str, np.ndarray]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = make_arrays(flag, size, **kwargs)
    np.savez_compressed(folder / npz_name(flag, size), **arrays)
    return arrays


def write_raw(folder: Path) -> dict:
    write_flag(folder, "pneumoniamnist", 64)
    return {"params": {"flag": "pneumoniamnist", "size": 64}, "files": ["pneumoniamnist_64.npz"]}
