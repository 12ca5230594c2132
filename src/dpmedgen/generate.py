"""Draw samples from a trained model into the common HDF5 schema.

Unconditional models (GANs, diffusion) draw `n_samples` images from their latent/noise distribution;
the modality is the one they were trained on. A run of one generator per class (`train.class_generators`)
draws every class equally often and stores each sample's class in `label` (-1 otherwise). A fusion model's
"samples" are its fusions of `n_samples` (MRI, PET) pairs of the evaluation split (held-out patients;
:func:`fused_pair_indices`: evenly spaced, the same pairs for every run, all of them when there are fewer),
stored as modality ``fused`` with the pairs' patient, slice and label: every run's evaluation then compares the
same number of generated images with the real ones, which FID / KID / PRDC need to be comparable.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from dpmedgen.data.schema import ImageSet, write_image_set
from dpmedgen.io import verify_zip
from dpmedgen.models.mixture import ClassMixture
from dpmedgen.privacy import PRIVACY_MODES, read_ledger
from dpmedgen.privacy.randomness import check_randomness, new_secret, stream_seed
from dpmedgen.train.run import load_model, load_split_images

FUSED = "fused"


def fused_pair_indices(n_pairs: int, n_samples: int) -> np.ndarray:
    """Which of a split's `n_pairs` pairs a fusion model fuses: `min(n_samples, n_pairs)` evenly spaced
    positions, first and last included (the split's order is by patient and slice, so every part of it is
    represented); the same for every run, as they depend on neither the run nor its seed.

    >>> fused_pair_indices(10, 4).tolist()
    [0, 3, 6, 9]
    >>> fused_pair_indices(3, 256).tolist()
    [0, 1, 2]
    """
    if n_pairs < 1 or n_samples < 1:
        raise ValueError(f"need at least one pair and one sample; got {n_pairs} pairs, n_samples {n_samples}")
    if n_samples >= n_pairs:
        return np.arange(n_pairs)
    return np.round(np.linspace(0, n_pairs - 1, n_samples)).astype(np.int64)


def generate_samples(
    checkpoint: str | os.PathLike,
    out_h5: str | os.PathLike,
    n_samples: int,
    seed: int,
    threads: int = 1,
    ledger: str | os.PathLike | None = None,
    images_h5: str | os.PathLike | None = None,
    splits_parquet: str | os.PathLike | None = None,
    split: str = "test",
    randomness: str = "secret",
) -> ImageSet:
    """Write the run's samples (values in [0, 1]) to `out_h5` and return them.

    With the run's privacy `ledger`, its mode's `postprocess_samples` is applied before release
    (output perturbation adds its noise there). Fusion models need `images_h5` and `splits_parquet`
    (`n_samples` pairs of `split` are fused, :func:`fused_pair_indices`). The sampling latents come from the public
    `seed`; the output-perturbation noise from a fresh OS secret unless `randomness` is "deterministic"."""
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1; got {n_samples}")
    torch.set_num_threads(threads)
    verify_zip(checkpoint)  # CRC-32s: torch.load does not check them
    model, state = load_model(checkpoint)
    rng = torch.Generator().manual_seed(int(seed))
    if model.kind == "fusion":
        if images_h5 is None or splits_parquet is None:
            raise ValueError(f"{checkpoint}: a fusion model fuses real pairs; give images_h5 and splits_parquet")
        pairs = load_split_images(images_h5, splits_parquet, tuple(state["modalities"]), split=split)
        chosen = fused_pair_indices(len(pairs.images), n_samples)
        pixels = model.fuse(pairs.images[torch.from_numpy(chosen)])[:, 0].numpy()
        modality = FUSED
        meta = {k: v[chosen] for k, v in _split_meta(images_h5, splits_parquet, state["modalities"][0], split).items()}
    else:
        if isinstance(model, ClassMixture):
            images, labels = model.sample_labelled(n_samples, generator=rng)
            labels = labels.numpy()
        else:
            images, labels = model.sample(n_samples, generator=rng), np.full(n_samples, -1)
        pixels = images[:, 0].numpy()
        modality = state["modalities"][0]
        meta = {"patient_id": np.full(n_samples, "", dtype=object), "slice": np.full(n_samples, -1), "label": labels}
    if ledger is not None:
        record = read_ledger(ledger)
        mode = PRIVACY_MODES.get(record["privacy"])
        noise_root = int(seed) if check_randomness(randomness) == "deterministic" else new_secret()
        pixels = mode.postprocess_samples(pixels, record, np.random.default_rng(stream_seed(noise_root, "output_noise")))
    samples = ImageSet(
        modalities={modality: np.ascontiguousarray(pixels, dtype=np.float32)},
        **meta,
        dataset=state["run"]["dataset"],
        provenance={"run": state["run"], "checkpoint": os.fspath(checkpoint), "sampling_seed": int(seed)},
    )
    write_image_set(out_h5, samples)
    return samples


def _split_meta(images_h5, splits_parquet, modality: str, split: str) -> dict[str, np.ndarray]:
    from dpmedgen.data.schema import read_image_set
    from dpmedgen.data.split import read_splits, select_split

    part = select_split(read_image_set(images_h5, modalities=[modality]), read_splits(splits_parquet), split)
    return {"patient_id": part.patient_id, "slice": part.slice, "label": part.label}
