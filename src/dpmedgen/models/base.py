"""Interfaces shared by the generative models."""

from __future__ import annotations

import torch
from torch import nn


class GANModel(nn.Module):
    """A generator/discriminator pair working on images scaled to [-1, 1].

    Only the discriminator reads real data in an unconditional GAN; the generator learns from the
    discriminator's outputs, so any privacy guarantee of the discriminator's training carries over to the
    generator and its samples by post-processing.
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.generator = generator
        self.discriminator = discriminator
        self.latent_dim = latent_dim

    def sample_latent(self, n: int, generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> torch.Tensor:
        return torch.randn(n, self.latent_dim, generator=generator, device=device)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, batch_size: int = 256) -> torch.Tensor:
        """`n` images in [0, 1], shape (n, C, H, W), generated in eval mode."""
        was_training = self.generator.training
        self.generator.eval()
        device = next(self.generator.parameters()).device
        out = []
        for start in range(0, n, batch_size):
            z = self.sample_latent(min(batch_size, n - start), generator=generator).to(device)
            out.append(((self.generator(z) + 1.0) / 2.0).clamp(0.0, 1.0).cpu())
        self.generator.train(was_training)
        return torch.cat(out) if out else torch.empty(0)
