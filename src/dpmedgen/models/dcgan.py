"""DCGAN (Radford et al., 2016) for single-channel images of size 2**k, 32 <= size <= 256.

Generator: z (latent_dim) -> ConvTranspose 4x4 to 4x4 maps, then one stride-2 ConvTranspose per doubling up
to `image_size`, BatchNorm + ReLU between layers, Tanh output in [-1, 1]. The generator never reads real
data, so BatchNorm (which mixes the examples of a batch) is harmless to privacy here.

Discriminator: mirror image with stride-2 convolutions, LeakyReLU(0.2) and **GroupNorm** instead of
BatchNorm: BatchNorm mixes the examples of a batch, which breaks per-example gradient clipping (Opacus
rejects it), whereas GroupNorm normalises each example on its own. Output: one logit per image.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dpmedgen.models.base import GANModel


def _num_doublings(image_size: int) -> int:
    k = math.log2(image_size)
    if image_size < 32 or image_size > 256 or k != int(k):
        raise ValueError(f"image_size must be a power of two in [32, 256]; got {image_size}")
    return int(k) - 2  # from 4x4 to image_size


def _groups(channels: int) -> int:
    return min(8, channels)


class Generator(nn.Module):
    def __init__(self, image_size: int, latent_dim: int = 64, width: int = 32, channels: int = 1) -> None:
        super().__init__()
        n = _num_doublings(image_size)
        ch = width * 2 ** (n - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, ch, 4, 1, 0, bias=False),
            nn.BatchNorm2d(ch),
            nn.ReLU(True),
        ]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.latent_dim = latent_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.shape[0], self.latent_dim, 1, 1))


class Discriminator(nn.Module):
    def __init__(self, image_size: int, width: int = 32, channels: int = 1) -> None:
        super().__init__()
        n = _num_doublings(image_size)
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, inplace=False)]
        ch = width
        for _ in range(n - 1):
            layers += [
                nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
                nn.GroupNorm(_groups(ch * 2), ch * 2),
                nn.LeakyReLU(0.2, inplace=False),
            ]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(x.shape[0])


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) norm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DCGAN(GANModel):
    """Unconditional DCGAN; `width` is the channel count of the first D / last G layer."""

    def __init__(self, image_size: int = 64, latent_dim: int = 64, width: int = 32, channels: int = 1) -> None:
        super().__init__(
            generator=Generator(image_size, latent_dim, width, channels),
            discriminator=Discriminator(image_size, width, channels),
            latent_dim=latent_dim,
        )
        self.apply(_init_weights)
