"""Does a fidelity metric order the obvious cases? Scores of controlled image sets against real test images.

    .venv/bin/python benchmarks/fidelity_sanity.py [--results results] [--dataset brain_phantom] [--n 1000]
                                                   [--samples results/.../samples.h5 ...]

On a study's preprocessed images and patient split (`<results>/<dataset>/images.h5`, `splits.parquet`, as
the pipeline writes them), every set below is compared with `n` real test images, with the same `n` on both
sides for every set (FID is biased at small n, so only equal-n numbers are comparable):

  real_train      n real training images (other patients): the floor a perfect generator reaches
  blurred         real training images, Gaussian blur sigma 1.5 px
  mean_image      n copies of the mean training image (no diversity)
  shuffled        real training images cut into 8x8-pixel patches, shuffled within each image
  noise           uniform noise in [0, 1]
  <samples.h5>    each file given with --samples (a trained run's generated images)

Prints one line per set and metric; a metric that orders the cases puts real_train first and noise last.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import torch
from scipy import ndimage

from dpmedgen.data.schema import read_image_set
from dpmedgen.metrics.encoder import DEFAULT_INPUT_SIZE, extract_features
from dpmedgen.metrics.fidelity import frechet_distance, kernel_distance, prdc_scores


def _shuffle_patches(images: np.ndarray, patch: int, rng: np.random.Generator) -> np.ndarray:
    n, h, w = images.shape
    g = images.reshape(n, h // patch, patch, w // patch, patch).transpose(0, 1, 3, 2, 4).reshape(n, -1, patch, patch)
    out = np.stack([img[rng.permutation(len(img))] for img in g])
    k = h // patch
    return out.reshape(n, k, k, patch, patch).transpose(0, 1, 3, 2, 4).reshape(n, h, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--dataset", default="brain_phantom")
    parser.add_argument("--modality", default="mri")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--samples", nargs="*", default=[])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=DEFAULT_INPUT_SIZE, help="encoder input resolution")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.results) / args.dataset
    images = read_image_set(folder / "images.h5")
    modality, name = args.modality, args.dataset
    splits = pd.read_parquet(folder / "splits.parquet")
    split_of = dict(zip(splits["patient_id"], splits["split"]))
    which = np.array([split_of[p] for p in images.patient_id])
    pixels = images.modalities[modality]
    rng = np.random.default_rng(0)
    test = pixels[which == "test"]
    train = pixels[which == "train"]
    n = min(args.n, len(test), len(train))
    test, train = test[rng.permutation(len(test))[:n]], train[rng.permutation(len(train))[:n]]
    sets = {
        "real_train": train,
        "blurred": ndimage.gaussian_filter(train, (0, 1.5, 1.5)),
        "mean_image": np.repeat(train.mean(0, keepdims=True), n, axis=0),
        "shuffled": _shuffle_patches(train, 8, rng),
        "noise": rng.random(train.shape, dtype=np.float32),
    }
    for path in args.samples:
        with h5py.File(path, "r") as f:
            fake = np.asarray(f["modalities"][modality][:n])
        sets[Path(path).parent.as_posix()] = fake
    real_features = extract_features(test, input_size=args.input_size)
    print(f"dataset={name} modality={modality} n={n} image_size={pixels.shape[-1]} input_size={args.input_size}")
    for label, fake in sets.items():
        fake_features = extract_features(fake.astype(np.float32), input_size=args.input_size)
        fid = frechet_distance(real_features, fake_features)
        kid, _ = kernel_distance(real_features, fake_features)
        prdc = prdc_scores(real_features, fake_features)
        print(
            f"set={label} fid_effnetlite0={fid:.2f} kid_effnetlite0={kid:.4f} "
            + " ".join(f"{k}={v:.3f}" for k, v in prdc.items()),
            flush=True,
        )


if __name__ == "__main__":
    main()
