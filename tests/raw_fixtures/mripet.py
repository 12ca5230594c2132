"""Tiny ``mripet.h5`` as DDcGAN's MATLAB ``store2hdf5`` writes it: float32 ``data`` of h5py shape (N, 2, W, H).

``make_pairs(seed)`` gives the intended (N, H, W, 2) array (channel 0: MRI / visible, channel 1: PET /
infrared); the file stores its ``np.transpose(.., (0, 3, 2, 1))``, which the authors' reader undoes.
Pair i has a planted level (``0.1 + 0.04 i`` in channel 0, ``0.2 + 0.03 i`` in channel 1), channel 0 is
bright in its top rows and channel 1 in its left columns, so row order, channel order and orientation
are all checkable.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

N_PAIRS = 14
SIZE = 48
TOP_ROWS = 6  # channel 0 is 0.9 in its first TOP_ROWS rows
LEFT_COLS = 6  # channel 1 is 0.95 in its first LEFT_COLS columns


def make_pairs(seed: int = 0, n: int = N_PAIRS, size: int = SIZE) -> np.ndarray:
    """The pairs as (N, H, W, 2) float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, size, size, 2), dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    blob = np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * (size / 6) ** 2))
    for i in range(n):
        high = 0.1 + 0.04 * i + 0.02 * rng.random((size, size))
        high[:TOP_ROWS] = 0.9
        low = 0.2 + 0.03 * i + 0.1 * blob
        low[:, :LEFT_COLS] = 0.95
        out[i, :, :, 0], out[i, :, :, 1] = high, low
    return out


def write_pairs(path: Path, pairs: np.ndarray) -> None:
    """Write (N, H, W, 2) pairs in the MATLAB layout: dataset ``data`` (N, 2, W, H), float32, chunked, unlimited N."""
    stored = np.ascontiguousarray(np.transpose(pairs, (0, 3, 2, 1)), dtype=np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=stored, maxshape=(None, *stored.shape[1:]), chunks=(min(12, len(stored)), *stored.shape[1:]))


def write_raw(folder: Path) -> dict:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_pairs(folder / "mripet.h5", make_pairs(seed=0))
    return {"params": {"max_pairs": None, "seed": 0}, "files": ["mripet.h5"]}
