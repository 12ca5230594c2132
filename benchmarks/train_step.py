"""Seconds per training step of every registered model, non-private and under DP-SGD, measured in one run.

    .venv/bin/python benchmarks/train_step.py [--image-size 64] [--batch-size 16] [--steps 6] [--config config.yaml]

Model sizes come from the config's `models:` section (the default study's CPU-sized models). Prints one
line per (model, mode) and the DP-SGD / non-private ratio; a step updates every network of the model once.
The first step of each run (allocation, Opacus set-up) is excluded. Absolute times depend on the machine
and its load; compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from dpmedgen.config import load_config, model_params
from dpmedgen.models import MODELS
from dpmedgen.privacy import PRIVACY_MODES, TrainingData
from dpmedgen.train import TrainConfig, train_model


def _seconds_per_step(model_name: str, params: dict, mode: str, data: TrainingData, steps: int, batch: int) -> float:
    torch.manual_seed(0)
    model = MODELS.get(model_name)(image_size=data.images.shape[-1], **params)
    privacy = PRIVACY_MODES.get(mode)(target_epsilon=math.inf if mode == "none" else 10.0, delta=1e-5, seed=0)
    cfg = TrainConfig(steps=steps, batch_size=batch, device="cpu", checkpoint_every=0)
    times: list[float] = []
    from dpmedgen.train import engine

    original = engine._update

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        times.append(time.perf_counter() - t0)
        return out

    engine._update = timed
    try:
        train_model(model, data, privacy, cfg, progress=False)
    finally:
        engine._update = original
    n_players = len(model.players())
    per_step = [sum(times[i : i + n_players]) for i in range(0, len(times), n_players)]
    return float(np.median(per_step[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "config.yaml"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--patients", type=int, default=48)
    args = parser.parse_args()

    config = load_config(args.config)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    n = args.patients * 3
    images = torch.rand(n, 2, args.image_size, args.image_size, generator=gen) * 2 - 1
    patients = np.repeat([f"P{i:03d}" for i in range(args.patients)], 3)
    print(f"{args.image_size}x{args.image_size}, batch {args.batch_size} (expected, Poisson under DP-SGD), 1 thread, "
          f"median of {args.steps - 1} steps")
    print(f"{'model':8s} {'none s/step':>12s} {'dpsgd s/step':>13s} {'ratio':>6s}")
    for name in config["models"]:
        params = model_params(config, name)
        channels = 2 if MODELS.get(name).kind == "fusion" else 1
        data = TrainingData(images=images[:, :channels].contiguous(), patient_ids=patients)
        plain = _seconds_per_step(name, params, "none", data, args.steps, args.batch_size)
        # Poisson sampling of patients at q = batch / patients gives the same expected batch
        private = _seconds_per_step(name, params, "dpsgd", data, args.steps, args.batch_size)
        print(f"{name:8s} {plain:12.3f} {private:13.3f} {private / plain:6.2f}")


if __name__ == "__main__":
    main()
