"""Draw samples from a trained generator into the common HDF5 schema."""

from __future__ import annotations

import os

import numpy as np
import torch

from dpmedgen.data.schema import ImageSet, write_image_set
from dpmedgen.privacy import PRIVACY_MODES, read_ledger
from dpmedgen.train.run import load_generator


def generate_samples(
    checkpoint: str | os.PathLike,
    out_h5: str | os.PathLike,
    n_samples: int,
    seed: int,
    threads: int = 1,
    ledger: str | os.PathLike | None = None,
) -> ImageSet:
    """Write `n_samples` generated images (modality as trained, values in [0, 1]) to `out_h5`.

    With the run's privacy `ledger`, its mode's `postprocess_samples` is applied before release
    (output perturbation adds its noise there)."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1; got {n_samples}")
    torch.set_num_threads(threads)
    model, state = load_generator(checkpoint)
    rng = torch.Generator().manual_seed(int(seed))
    pixels = model.sample(n_samples, generator=rng)[:, 0].numpy()
    if ledger is not None:
        record = read_ledger(ledger)
        mode = PRIVACY_MODES.get(record["privacy"])
        pixels = mode.postprocess_samples(pixels, record, np.random.default_rng([int(seed), 104729]))
    samples = ImageSet(
        modalities={state["modality"]: pixels},
        patient_id=np.full(n_samples, "", dtype=object),
        slice=np.full(n_samples, -1),
        label=np.full(n_samples, -1),
        dataset=state["run"]["dataset"],
        provenance={"run": state["run"], "checkpoint": os.fspath(checkpoint), "sampling_seed": int(seed)},
    )
    write_image_set(out_h5, samples)
    return samples
