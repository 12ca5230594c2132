"""A plain tiled image grid (no axes or labels) for training-progress snapshots."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from dpmedgen.io import write_atomic


def tile(images: np.ndarray, n_cols: int = 8, pad: int = 2) -> np.ndarray:
    """(N, H, W) images in [0, 1] -> one (rows*(H+pad)-pad, cols*(W+pad)-pad) array, white padding."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3 or len(images) == 0:
        raise ValueError(f"expected a non-empty stack of grey-scale images (N, H, W); got shape {images.shape}")
    n, h, w = images.shape
    cols = min(n_cols, n)
    rows = -(-n // cols)
    out = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad), np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        out[r * (h + pad): r * (h + pad) + h, c * (w + pad): c * (w + pad) + w] = img
    return out


def save_image_grid(images: np.ndarray, path: str | os.PathLike, n_cols: int = 8) -> None:
    """Write `images` (N, H, W) in [0, 1] as an 8-bit grey PNG, atomically."""
    grid = (tile(np.clip(images, 0.0, 1.0), n_cols) * 255.0 + 0.5).astype(np.uint8)
    write_atomic(path, lambda tmp: Image.fromarray(grid, mode="L").save(tmp, format="PNG"))
