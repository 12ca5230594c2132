"""Interfaces shared by the generative models.

A model is a set of named networks ("players"), each updated by its own optimizer, in a fixed order at
every training step (e.g. discriminator, then generator). The training engine (`dpmedgen.train.engine`)
knows nothing about GANs or diffusion: for each player it asks the model for per-example losses and lets
the privacy mode decide how real data reaches that player and how its gradient becomes an update.

Conventions every model follows
-------------------------------
* Real batches are tensors (b, C, H, W) scaled to [-1, 1]; C is the number of modalities the model reads
  (1 for the unconditional models, 2 for MRI-PET fusion: channel 0 = MRI, channel 1 = PET).
* `loss(player, nets, real, batch_size)` returns per-example losses, shape (b,). For a player that reads
  real data, b = len(real), which may be 0 under Poisson sampling, and element i depends on real[i] (and on
  no other real example): per-example clipping then bounds each privacy unit's influence. A player that
  reads no real data gets `real=None` and returns `batch_size` losses over fresh latents.
* `public_loss(player, nets, batch_size)` returns the part of a player's loss that reads no real data (a
  scalar, e.g. a GAN discriminator's loss on generated images), or None. Privacy modes keep it out of
  per-example clipping and noise; the update descends mean(loss) + public_loss.
* Networks are called through `nets[name]`, never `self.<name>`: a privacy mode may wrap them (Opacus'
  GradSampleModule) or replace them (the functional mechanism's linear head).
* Training randomness (latents, diffusion noise, timesteps) comes from torch's global RNG, which the engine
  seeds and checkpoints, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Mapping

import torch
from torch import nn


@dataclass(frozen=True)
class Player:
    """One network trained by its own optimizer.

    name: attribute of the model holding the network, and its key in `nets`.
    role: learning-rate key in the train config (`train.lr.<role>`): generator, discriminator or denoiser.
    reads_real_data: whether its loss reads real training examples (then a privacy mode controls it).
    """

    name: str
    role: str
    reads_real_data: bool


class GenerativeModel(nn.Module):
    """Base class of every registered model."""

    #: "gan" (unconditional GAN), "fusion" (conditional: fuses the modalities of one example) or "diffusion".
    kind: ClassVar[str] = ""
    #: Modalities per example, in channel order; None = the dataset's configured modality.
    #: A model may also set this per instance (e.g. the modalities it fuses).
    modalities: tuple[str, ...] | None = None

    def players(self) -> list[Player]:
        raise NotImplementedError

    def networks(self) -> dict[str, nn.Module]:
        return {p.name: getattr(self, p.name) for p in self.players()}

    def loss(self, player: str, nets: Mapping[str, nn.Module], real: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """Per-example losses of one update of `player`, shape (b,); see the module docstring."""
        raise NotImplementedError

    def public_loss(self, player: str, nets: Mapping[str, nn.Module], batch_size: int) -> torch.Tensor | None:
        """The part of `player`'s loss that reads no real data (a scalar, already averaged), or None.
        Privacy modes leave it out of per-example clipping and noise: its gradient depends only on the
        current weights and fresh randomness. Default: none."""
        return None

    def replicas(self, player: str) -> int:
        """Rows each example occupies in the player's network batch (1 unless the loss repeats examples,
        e.g. several diffusion noise draws per example); per-example gradients sum over them."""
        return 1

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, batch_size: int = 256) -> torch.Tensor:
        """`n` unconditional samples in [0, 1], shape (n, 1, H, W), generated in eval mode."""
        raise NotImplementedError(f"{type(self).__name__} does not sample unconditionally")


class GANModel(GenerativeModel):
    """A generator/discriminator pair working on images scaled to [-1, 1], trained with the
    non-saturating GAN loss.

    Only the discriminator reads real data in an unconditional GAN; the generator learns from the
    discriminator's outputs, so any privacy guarantee of the discriminator's training carries over to the
    generator and its samples by post-processing.
    """

    kind = "gan"

    def __init__(self, generator: nn.Module, discriminator: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = latent_dim

    def players(self) -> list[Player]:
        return [Player("discriminator", "discriminator", True), Player("generator", "generator", False)]

    def sample_latent(self, n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, device=device)

    def loss(self, player: str, nets: Mapping[str, nn.Module], real: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """discriminator: BCE(D(real_i), 1) per real image (its generated half is `public_loss`);
        generator: BCE(D(G(z_j)), 1) over `batch_size` fresh latents."""
        bce = nn.BCEWithLogitsLoss(reduction="none")
        disc = nets["discriminator"]
        if player == "discriminator":
            if real is None:
                raise ValueError("the discriminator update needs a real batch")
            return bce(disc(real), torch.ones(len(real), device=real.device))
        if player == "generator":
            device = next(nets["generator"].parameters()).device
            fake = nets["generator"](self.sample_latent(batch_size, device=device))
            return bce(disc(fake), torch.ones(batch_size, device=device))
        raise KeyError(f"{type(self).__name__} has no player {player!r}")

    def public_loss(self, player: str, nets: Mapping[str, nn.Module], batch_size: int) -> torch.Tensor | None:
        """discriminator: mean BCE(D(G(z_j)), 0) over `batch_size` fresh latents, the generated half of its
        loss. It reads no real data: G and D are the current (already released) weights and z is fresh, so
        under DP-SGD its gradient is added exactly, outside clipping and noise, as post-processing. Its batch
        size is fixed, so the generator's BatchNorm statistics in this step never depend on how many real
        images were sampled. The generator has no public part (None)."""
        if player != "discriminator":
            return None
        device = next(nets["generator"].parameters()).device
        with torch.no_grad():
            fake = nets["generator"](self.sample_latent(batch_size, device=device))
        return nn.functional.binary_cross_entropy_with_logits(nets["discriminator"](fake), torch.zeros(batch_size, device=device))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, batch_size: int = 256) -> torch.Tensor:
        was_training = self.generator.training
        self.generator.eval()
        device = next(self.generator.parameters()).device
        out = []
        for start in range(0, n, batch_size):
            z = self.sample_latent(min(batch_size, n - start), generator=generator).to(device)
            out.append(((self.generator(z) + 1.0) / 2.0).clamp(0.0, 1.0).cpu())
        self.generator.train(was_training)
        return torch.cat(out) if out else torch.empty(0)
