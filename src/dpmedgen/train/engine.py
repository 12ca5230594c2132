"""One GAN training loop shared by every model and privacy mode.

The privacy mode decides how real data reaches the discriminator (`PrivacyMode.attach`); this loop only
alternates discriminator and generator steps, logs, and stops loudly on divergence.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dpmedgen.models.base import GANModel
from dpmedgen.privacy.base import PrivacyMode, TrainingData


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


@dataclass
class TrainConfig:
    steps: int = 600
    batch_size: int = 32
    lr_generator: float = 2e-4
    lr_discriminator: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    threads: int = 1

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 2 or self.log_every < 1:
            raise ValueError(f"train config needs steps >= 1, batch_size >= 2, log_every >= 1; got {asdict(self)}")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients into `module`; for an Opacus GradSampleModule also switch off its
    per-sample hooks, so that the generator step neither computes nor leaks into per-sample gradients."""
    flags = [p.requires_grad for p in module.parameters()]
    opacus_hooks = hasattr(module, "disable_hooks") and hasattr(module, "enable_hooks")
    for p in module.parameters():
        p.requires_grad_(False)
    if opacus_hooks:
        module.disable_hooks()
    try:
        yield
    finally:
        if opacus_hooks:
            module.enable_hooks()
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def _forever(loader: torch.utils.data.DataLoader) -> Iterator[torch.Tensor]:
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise RuntimeError("the training data loader yields no batches")


def train_gan(
    model: GANModel,
    data: TrainingData,
    privacy: PrivacyMode,
    cfg: TrainConfig,
    run_name: str = "run",
    log_csv: str | os.PathLike | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train `model` in place with the standard non-saturating GAN loss; return the logged rows.

    Discriminator step: BCE(D(real), 1) + BCE(D(G(z)), 0) summed over the batch; the privacy mode's
    optimizer turns the gradient into its update (plain Adam, or clip + noise + Adam for DP-SGD).
    Generator step: BCE(D(G(z)), 1) averaged over `batch_size` fresh latents, with D frozen; it reads
    no real data.
    """
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    model.to(device)
    data = TrainingData(images=data.images.to(device), patient_ids=data.patient_ids)

    opt_d = torch.optim.Adam(model.discriminator.parameters(), lr=cfg.lr_discriminator, betas=(cfg.beta1, cfg.beta2))
    opt_g = torch.optim.Adam(model.generator.parameters(), lr=cfg.lr_generator, betas=(cfg.beta1, cfg.beta2))
    disc, opt_d, loader = privacy.attach(model.discriminator, opt_d, data, cfg.batch_size, cfg.steps)
    gen = model.generator
    bce = nn.BCEWithLogitsLoss(reduction="sum")
    batches = _forever(loader) if loader is not None else None

    rows: list[dict[str, float]] = []
    writer = None
    fh = None
    if log_csv is not None:
        Path(log_csv).parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_csv, "w", newline="")
        writer = csv.DictWriter(fh, fieldnames=["step", "loss_d", "loss_g", "real_batch", "epsilon", "seconds_per_step"])
        writer.writeheader()
    try:
        t_last, loss_d_acc, loss_g_acc, n_pairs_acc, n_real_acc, n_acc = time.perf_counter(), 0.0, 0.0, 0, 0, 0
        bar = tqdm(range(1, cfg.steps + 1), desc=run_name, disable=not progress, mininterval=2.0)
        for step in bar:
            real = next(batches).to(device) if batches is not None else None
            b = real.shape[0] if real is not None else cfg.batch_size  # varies under Poisson sampling, may be 0

            # Discriminator: each real image is paired with one fake (the fake half holds no private data).
            opt_d.zero_grad(set_to_none=True)
            z = model.sample_latent(max(b, 2), device=device)
            fake = gen(z)[:b].detach()
            loss_d = privacy.discriminator_loss(disc, real, fake)
            loss_d.backward()
            opt_d.step()

            # Generator: fresh latents, discriminator frozen.
            opt_g.zero_grad(set_to_none=True)
            with frozen(disc):
                z = model.sample_latent(cfg.batch_size, device=device)
                loss_g = bce(disc(gen(z)), torch.ones(cfg.batch_size, device=device)) / cfg.batch_size
                loss_g.backward()
            opt_g.step()

            ld, lg = loss_d.detach().item(), loss_g.detach().item()
            if not (math.isfinite(ld) and math.isfinite(lg)):
                raise TrainingDiverged(f"{run_name}: non-finite loss at step {step} (loss_d={ld}, loss_g={lg})")
            loss_d_acc += ld
            loss_g_acc += lg
            n_pairs_acc += b
            n_real_acc += real.shape[0] if real is not None else 0  # real images read (0 after a one-time release)
            n_acc += 1
            if step % cfg.log_every == 0 or step == cfg.steps:
                now = time.perf_counter()
                row = {
                    "step": step,
                    "loss_d": loss_d_acc / max(n_pairs_acc, 1),
                    "loss_g": loss_g_acc / n_acc,
                    "real_batch": n_real_acc / n_acc,
                    "epsilon": privacy.epsilon_spent(),
                    "seconds_per_step": (now - t_last) / n_acc,
                }
                rows.append(row)
                if writer is not None:
                    writer.writerow(row)
                    fh.flush()
                bar.set_postfix(loss_d=f"{row['loss_d']:.3f}", loss_g=f"{row['loss_g']:.3f}", eps=f"{row['epsilon']:.2f}")
                t_last, loss_d_acc, loss_g_acc, n_pairs_acc, n_real_acc, n_acc = now, 0.0, 0.0, 0, 0, 0
    finally:
        if fh is not None:
            fh.close()
    return rows
