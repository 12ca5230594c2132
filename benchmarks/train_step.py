"""Seconds per update of the networks that read real data, non-private and under DP-SGD, measured in one run;
then one default DP-SGD run, timed, with the share of its wall time spent in the privacy accountant.

    .venv/bin/python benchmarks/train_step.py [--config config.yaml] [--batches 16 64 256] [--reps 9]
                                              [--clipping fast] [--threads 1] [--no-run]

Models and image size come from the config (the default study's). For each model and batch size b, the
private networks (every player with `reads_real_data`: a GAN's discriminator, DDcGAN's three networks, the
DDPM denoiser) are updated on the same fixed real batch of b images, alternately non-private and DP-SGD
(interleaved repetitions, the first two of each dropped); the line reports the medians:

    model=<m> batch=<b> nonprivate_s=<t> dpsgd_s=<t> ratio=<r> clipping=<mode>

A step's other players (a GAN's generator) cost the same in both modes and are not timed. Absolute times
depend on the machine and its load; compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from dpmedgen.config import load_config, model_params, privacy_params, train_settings
from dpmedgen.models import MODELS
from dpmedgen.privacy import PRIVACY_MODES, TrainingData
from dpmedgen.runtime import limit_threads, retain_freed_memory
from dpmedgen.train import TrainConfig, engine, train_model


def _setup(name: str, params: dict, image_size: int, mode_name: str, batch: int, clipping: str):
    torch.manual_seed(0)
    model = MODELS.get(name)(image_size=image_size, **params)
    channels = len(model.modalities) if model.kind == "fusion" else 1
    n = max(4 * batch, 64)  # patients, one image each: a Poisson rate of about 1/4
    images = torch.rand(n, channels, image_size, image_size) * 2 - 1
    data = TrainingData(images=images, patient_ids=np.array([f"P{i:05d}" for i in range(n)]))
    extra = {"clipping": clipping} if mode_name == "dpsgd" else {}
    privacy = PRIVACY_MODES.get(mode_name)(
        target_epsilon=math.inf if mode_name == "none" else 10.0, delta=1e-5, **extra
    )
    players = model.players()
    nets = model.networks()
    opts = {p.name: torch.optim.Adam(nets[p.name].parameters(), lr=1e-4) for p in players}
    nets, opts, _ = privacy.attach(model, nets, opts, data, batch, 1000)
    real = images[:batch]
    private = [p for p in players if p.reads_real_data]
    iters = {p.name: itertools.repeat(real) for p in private}

    def update() -> float:
        t0 = time.perf_counter()
        for p in private:
            engine._update(model, p, nets, opts, iters, privacy, batch, torch.device("cpu"), False, players)
        return time.perf_counter() - t0

    return update


def step_ratios(config: dict, batches: list[int], reps: int, clipping: str) -> None:
    image_size = int(config["image_size"])
    for name in config["models"]:
        params = model_params(config, name)
        for batch in batches:
            plain = _setup(name, params, image_size, "none", batch, clipping)
            private = _setup(name, params, image_size, "dpsgd", batch, clipping)
            times = {"none": [], "dpsgd": []}
            for _ in range(reps + 2):
                times["none"].append(plain())
                times["dpsgd"].append(private())
            a, b = (statistics.median(times[k][2:]) for k in ("none", "dpsgd"))
            print(
                f"model={name} batch={batch} nonprivate_s={a:.4f} dpsgd_s={b:.4f} ratio={b / a:.2f} "
                f"clipping={clipping}",
                flush=True,
            )


def default_run(config: dict, clipping: str) -> None:
    """One DP-SGD training of the config's first model at its first epsilon, on a synthetic cohort with the
    default study's size per class generator and the configured steps and batch; the accountant's share."""
    name = next(iter(config["models"]))
    settings = train_settings(config, name)
    params = model_params(config, name)
    dataset = next(iter(config["datasets"].values()))
    n_patients = int(dataset["params"].get("n_patients", 64))
    train_fraction = float(config["split"]["fractions"]["train"])
    classes = 2 if settings.get("class_generators") else 1
    n = max(2, int(n_patients * train_fraction / classes))
    steps = math.ceil(int(settings["steps"]) / classes)
    image_size = int(config["image_size"])
    torch.manual_seed(0)
    model = MODELS.get(name)(image_size=image_size, **params)
    images = torch.rand(n, 1, image_size, image_size) * 2 - 1
    data = TrainingData(images=images, patient_ids=np.array([f"P{i:05d}" for i in range(n)]))
    epsilon = float(config["privacy"]["epsilons"][0])
    mode_params = privacy_params(config, "dpsgd") | {"clipping": clipping}
    mode = PRIVACY_MODES.get("dpsgd")(target_epsilon=epsilon, delta=float(config["privacy"]["delta"]), **mode_params)
    cfg = TrainConfig(
        **{k: v for k, v in settings.items() if k != "class_generators"}
        | {"steps": steps, "device": "cpu", "checkpoint_every": 0}
    )
    t0 = time.perf_counter()
    train_model(model, data, mode, cfg, progress=False)
    mode.ledger()  # the final PRV epsilon, as the trainer writes it
    wall = time.perf_counter() - t0
    print(
        f"default_run model={name} epsilon={epsilon:g} patients={n} batch={cfg.batch_size} steps={steps} "
        f"wall_s={wall:.1f} accounting_s={mode.accounting_seconds:.2f} "
        f"accounting_share={mode.accounting_seconds / wall:.2%} "
        f"clipping={clipping}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "config.yaml"))
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--clipping", default="fast", choices=["fast", "opacus"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-run", action="store_true", help="skip the timed default run")
    args = parser.parse_args()
    retain_freed_memory()
    limit_threads(args.threads)
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    print(
        f"image_size={config['image_size']} threads={args.threads} reps={args.reps} (medians, first 2 dropped)",
        flush=True,
    )
    step_ratios(config, args.batches, args.reps, args.clipping)
    if not args.no_run:
        default_run(config, args.clipping)


if __name__ == "__main__":
    main()
