"""Tiny ``irvis.h5`` in DDcGAN's layout (see :mod:`raw_fixtures.mripet`): channel 0 visible, channel 1 infrared."""

from __future__ import annotations

from pathlib import Path

from .mripet import make_pairs, write_pairs


def write_raw(folder: Path) -> dict:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_pairs(folder / "irvis.h5", make_pairs(seed=1))
    return {"params": {"max_pairs": None, "seed": 0}, "files": ["irvis.h5"]}
