"""Images per second of every metric family on one evaluation, measured in one run.

    .venv/bin/python benchmarks/evaluate_metrics.py [--n 1000] [--image-size 64] [--threads 2]

The images are slices of the embedded brain phantom (real: N held-out-like slices; fake: the same slices
with noise and a shift, so distances and features are realistic). Members/non-members for the
membership-inference families are N/2 and N/6 further slices; fusion families get (MRI, PET) source pairs;
the downstream classifier trains on the N fakes with their source slices' labels, picks its epoch on the
non-members and is tested on the N real images (30 epochs, the default).
The encoder features shared by fid/kid/prdc are timed on their own ("features"), so each family's line is
its own work. A family's rate is images scored per second: N fake images. Absolute rates depend on the
machine and its load; the study's evaluation of one run is the sum of the lines.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from dpmedgen.data.phantom import make_brain_phantom
from dpmedgen.data.preprocess import preprocess
from dpmedgen.metrics import METRICS, EvalContext, PatientImages, skip_reason
from dpmedgen.metrics.downstream import LabelledImages, LabelledSplits


def _images(n: int, size: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """2n slices per modality, with their labels and patients."""
    per_patient = 12
    cohort = preprocess(make_brain_phantom(n_patients=-(-2 * n // per_patient), slices_per_patient=per_patient,
                                           size=128, seed=0), size)
    return {m: v[: 2 * n] for m, v in cohort.modalities.items()}, cohort.label[: 2 * n], cohort.patient_id[: 2 * n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="fake (and real) images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n
    t0 = time.perf_counter()
    images, labels, patients = _images(n, args.image_size)
    mri, pet = images["mri"], images["pet"]
    print(f"phantom images: {time.perf_counter() - t0:.1f} s (not part of any metric)")
    rng = np.random.default_rng(0)
    real = mri[:n]
    fake = np.clip(np.roll(mri[n:], 2, axis=-1) + rng.normal(0, 0.05, mri[n:].shape), 0, 1).astype(np.float32)
    members = PatientImages(mri[n : n + n // 2], np.arange(n // 2) // 12)
    nonmembers = PatientImages(mri[: n // 6], np.arange(n // 6) // 12 + 10_000)
    sources = {"mri": mri[n:], "pet": pet[n:]}
    # downstream: the fakes labelled as their source slices; selection on the non-members, test on `real`
    labelled_real = LabelledSplits(val=LabelledImages(nonmembers.images, labels[: n // 6], patients[: n // 6]),
                                   test=LabelledImages(real, labels[:n], patients[:n]))

    def scorer(x: torch.Tensor) -> torch.Tensor:  # a stand-in discriminator costing what a small CNN does
        return torch.nn.functional.avg_pool2d(x, 4).flatten(1).mean(1)

    ctx = EvalContext(real, fake, sources=sources, members=members, nonmembers=nonmembers, discriminator=scorer,
                      fake_labels=labels[n:], labelled_real=labelled_real, canary=0.05,
                      ledger={"guarantee": "formal", "privacy": "dpsgd", "epsilon_per_patient": 1.0,
                              "delta_per_patient": 1e-5, "epsilon_per_image": 2.0, "delta_per_image": 5e-5})
    t0 = time.perf_counter()
    ctx.real_features, ctx.fake_features  # noqa: B018  (computed once, shared by the feature families)
    unconditional = copy.copy(ctx)  # the same images and cached features, as samples of an unconditional model
    unconditional.sources = None
    seconds = time.perf_counter() - t0
    print(f"{'features (EfficientNet-Lite0)':34s} {seconds:7.2f} s  {2 * n / seconds:8.0f} images/s (real + fake)")
    total = seconds
    for family in METRICS.names():
        runnable = [c for c in (ctx, unconditional) if skip_reason(family, c) is None]
        if not runnable:
            print(f"{family:34s} skipped: {skip_reason(family, ctx)}")
            continue
        t0 = time.perf_counter()
        METRICS.get(family)(runnable[0])
        seconds = time.perf_counter() - t0
        total += seconds
        print(f"{family:34s} {seconds:7.2f} s  {n / seconds:8.0f} images/s")
    print(f"{'all families':34s} {total:7.2f} s for {n} fake images at {args.image_size}x{args.image_size}")


if __name__ == "__main__":
    main()
