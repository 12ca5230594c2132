"""Shared test helpers."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from dpmedgen.models.base import GenerativeModel, Player


class DiscriminatorOnly(GenerativeModel):
    """A one-player model around a bare discriminator, to attach a privacy mode to it in isolation."""

    kind = "gan"

    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        self.discriminator = discriminator

    def players(self) -> list[Player]:
        return [Player("discriminator", "discriminator", True)]


def attach_one(mode, disc, optimizer, data, batch_size, steps):
    """`mode.attach` for a single discriminator: returns (network, optimizer, loader or None)."""
    nets, opts, loaders = mode.attach(
        DiscriminatorOnly(disc), {"discriminator": disc}, {"discriminator": optimizer}, data, batch_size, steps
    )
    return nets["discriminator"], opts["discriminator"], loaders.get("discriminator")


def paired_loss(disc: nn.Module, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The GAN discriminator loss summed over pairs: BCE(D(real_i), 1) + BCE(D(fake_i), 0), real pass first."""
    bce = nn.BCEWithLogitsLoss(reduction="sum")
    return bce(disc(real), torch.ones(len(real))) + bce(disc(fake), torch.zeros(len(fake)))


def functional_discriminator_loss(mode, head, fake: torch.Tensor, real=None) -> torch.Tensor:
    """The functional mechanism's discriminator loss on fixed fakes (a stub generator returns them)."""
    model = SimpleNamespace(sample_latent=lambda n, device=None: torch.zeros(n, 1))
    nets = {"discriminator": head, "generator": lambda z: fake[: len(z)]}
    return mode.player_loss(model, Player("discriminator", "discriminator", True), nets, real, len(fake)).sum()
