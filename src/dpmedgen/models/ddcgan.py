"""DDcGAN (Ma, Xu, Jiang, Mei & Zhang, "DDcGAN: A Dual-Discriminator Conditional Generative Adversarial
Network for Multi-Resolution Image Fusion", IEEE TIP 29, 2020) for MRI-PET fusion.

Notation: an example x = (v, i) is one slice of one patient, v = MRI (the paper's high-resolution visible
image: structure, edges), i = PET (the paper's low-resolution infrared image: function, intensity).
G(x) is the fused image, D_v tells fused from MRI, D_i tells (downsampled) fused from PET, ψ is the
downsampling operator, ∇ the image gradient.

Losses (the paper's, per example; D outputs probabilities, computed here from logits with
BCE-with-logits, so -log D(.) = BCE(logit, 1) and -log(1 - D(.)) = BCE(logit, 0)):

    L_Dv = -log D_v(v) - log(1 - D_v(G(x)))
    L_Di = -log D_i(ψ i) - log(1 - D_i(ψ G(x)))
    L_G  = L_adv + λ L_con,        L_adv = -log D_v(G(x)) - log D_i(ψ G(x))      (non-saturating)
    L_con = 1/(HW) * ( ||ψ G(x) - ψ i||_F^2 + η ||∇G(x) - ∇v||_TV )

The first content term keeps PET's intensities (on PET's grid), the second MRI's edges. D_v sees
images, as written in the paper (the authors' multi-resolution code feeds it gradient maps ∇v, ∇G). ∇ is taken
with forward finite differences, ∇u = (u[y, x+1] - u[y, x], u[y+1, x] - u[y, x]), and the TV norm of the
gradient difference is its l1 norm summed over pixels, ||∇G - ∇v||_TV = Σ |∂x(G - v)| + |∂y(G - v)|, i.e.
the anisotropic total variation of the residual G - v (the paper's "TV norm"; the authors' code uses the
l1 norm of a 3x3 Laplacian-type response instead of first differences). L_con = 0 exactly when G - v
is constant and ψG = ψi, e.g. G = i when PET is the MRI shifted by a constant.
L_con is evaluated on intensities mapped back to [0, 1] ((u + 1) / 2), the paper's range, so λ and η
keep the paper's meaning; on our [-1, 1] scale the two terms would be 4x and 2x larger.

Weights. η (`gradient_weight`) = 1.2 as in the authors' PET-MRI code (and, as far as we recall, the
paper). λ (`content_weight`): the authors' code weights an *un-normalised* content loss (sums over
pixels) by 0.6 (PET-MRI; 3 for multi-resolution IR-VIS), i.e. ~0.6 HW on the 1/(HW)-normalised L_con
above, and the value printed in the paper could not be verified here. We default to λ = 100 (FusionGAN's
value for its 1/(HW)-normalised content loss; pix2pix uses the same weight on its l1 term): the content
loss then dominates the adversarial terms (~1.4 at equilibrium) as in the authors' code, while the
discriminators still push towards realistic MRI-like structure and PET-like intensity.

ψ (`pet_downsample` = k): k = 1 (default; our PET is resampled onto the MRI grid) is the identity.
k > 1 is k x k average pooling. The real batch still carries PET on the full grid (upsampled from its
native resolution), so ψ is applied to the PET channel as well as to the fused image: D_i and the
intensity term compare ψG(x) with ψi on the k-times coarser grid (the paper feeds the native low-res i).
As in the paper, that term sums over the coarse grid but is divided by the full HW, so it weighs 1/k^2 of
its k = 1 value (the authors' same-grid PET-MRI code divides its PET term by 16, the weight of k = 4).

Architecture (paper in spirit, ~DenseFuse; every 3x3 convolution uses reflection padding, done with
slicing so that backward is deterministic on GPU and Opacus sees the padded input):
* generator: concat(v, i) -> conv 2->w -> dense block of 4 convs (each sees the concatenation of all
  previous maps, adds w channels) -> 5w maps -> 1x1 transition conv 5w -> 2w (DenseNet-style, for speed;
  the authors' decoder is 3x3 throughout) -> 3x3 decoder convs 2w -> w -> w/2 -> 1, ReLU between, tanh
  output in [-1, 1]. Full resolution throughout (no pooling), as in the paper. No normalisation:
  BatchNorm mixes examples (forbidden under DP-SGD) and a per-example GroupNorm would discard each image's
  absolute intensity scale, which the content loss asks G to reproduce. Kaiming-normal init (no
  normalisation to rescue N(0, 0.02)), zero biases.
* discriminators D_v, D_i: three stride-2 3x3 convs w -> 2w -> 4w with LeakyReLU(0.2), GroupNorm after
  the 2nd and 3rd (the authors' BatchNorm, made per-example), then a linear layer to one logit (the paper's
  tanh(z)/2 + 1/2 = sigmoid(2z), i.e. a logit up to a factor 2). DCGAN init: N(0, 0.02) weights,
  N(1, 0.02) GroupNorm scales, zero biases.
All layers are Conv2d, Linear, GroupNorm and activations, which Opacus 1.6 supports.

Privacy. Unlike an unconditional GAN, the generator reads real data: its input is the real MRI-PET pair
and its content loss compares the output with the real MRI and PET. So all three players are trained on
private data and, under DP-SGD, all three are clipped and noised. The engine gives each of them its own
independently Poisson-sampled batch, so a step is three subsampled Gaussian mechanisms, and the DP-SGD
accountant composes all 3 x steps of them (`dpmedgen.privacy.dpsgd`). (Had the three updates shared one
sampled batch, counting them as independently sampled steps would under-state epsilon.)
Each loss element i depends only on real[i]: the generator is applied per example, all normalisations
are per example, and the discriminator steps pair real[i] only with G(real[i]).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from dpmedgen.models.base import GenerativeModel, Player


def _reflect_pad1(x: torch.Tensor) -> torch.Tensor:
    """Reflection padding by one pixel on each side, built from slices (deterministic backward)."""
    x = torch.cat([x[..., 1:2, :], x, x[..., -2:-1, :]], dim=-2)
    return torch.cat([x[..., :, 1:2], x, x[..., :, -2:-1]], dim=-1)


class Conv3x3(nn.Module):
    """3x3 convolution with reflection padding."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(_reflect_pad1(x))


class Generator(nn.Module):
    """(b, 2, H, W) MRI-PET pair -> (b, 1, H, W) fused image in [-1, 1]."""

    def __init__(self, width: int = 16, dense_layers: int = 4, in_channels: int = 2) -> None:
        super().__init__()
        self.stem = Conv3x3(in_channels, width)
        self.dense = nn.ModuleList(Conv3x3(width * (k + 1), width) for k in range(dense_layers))
        # DenseNet transition: a 1x1 conv shrinks the (dense_layers + 1) * width maps; a 3x3 conv there would
        # cost as much as the whole dense block.
        self.transition = nn.Conv2d(width * (dense_layers + 1), 2 * width, 1)
        chans = [2 * width, width, max(width // 2, 1)]
        self.decoder = nn.ModuleList(Conv3x3(a, b) for a, b in zip(chans[:-1], chans[1:]))
        self.head = Conv3x3(chans[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        for conv in self.dense:
            h = torch.cat([h, F.relu(conv(h))], dim=1)
        h = F.relu(self.transition(h))
        for conv in self.decoder:
            h = F.relu(conv(h))
        return torch.tanh(self.head(h))


def _groups(channels: int) -> int:
    return min(8, channels)


class Discriminator(nn.Module):
    """(b, 1, S, S) image -> (b,) logits."""

    def __init__(self, size: int, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = [Conv3x3(1, width, 2), nn.LeakyReLU(0.2)]
        ch = width
        for _ in range(2):
            layers += [Conv3x3(ch, 2 * ch, 2), nn.GroupNorm(_groups(2 * ch), 2 * ch), nn.LeakyReLU(0.2)]
            ch *= 2
        for _ in range(3):
            size = (size + 1) // 2  # 3x3, stride 2, padding 1
        self.features = nn.Sequential(*layers)
        self.logit = nn.Linear(ch * size * size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit(self.features(x).flatten(1)).view(x.shape[0])


def _init_weights(module: nn.Module, kaiming: bool) -> None:
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        if kaiming:
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        else:
            nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.GroupNorm):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class DDcGAN(GenerativeModel):
    """Dual-discriminator conditional GAN fusing (MRI, PET) pairs; see the module docstring.

    content_weight: λ; gradient_weight: η; pet_downsample: the factor k of ψ (1 = identity).
    """

    kind = "fusion"
    default_modalities = ("mri", "pet")

    def __init__(
        self,
        image_size: int = 64,
        modalities: tuple[str, ...] | list[str] = ("mri", "pet"),
        width: int = 16,
        content_weight: float = 100.0,
        gradient_weight: float = 1.2,
        pet_downsample: int = 1,
        dense_layers: int = 4,
    ) -> None:
        super().__init__()
        if len(modalities) != 2:
            raise ValueError(f"DDcGAN fuses exactly two modalities (structural, functional); got {modalities}")
        if int(pet_downsample) != pet_downsample or pet_downsample < 1 or image_size % pet_downsample:
            raise ValueError(f"pet_downsample must be a positive integer dividing image_size {image_size}: {pet_downsample}")
        if image_size // pet_downsample < 8 or width < 2:
            raise ValueError(f"need image_size / pet_downsample >= 8, width >= 2: {image_size}, {pet_downsample}, {width}")
        self.modalities = tuple(modalities)
        self.image_size = image_size
        self.content_weight = float(content_weight)
        self.gradient_weight = float(gradient_weight)
        self.pet_downsample = int(pet_downsample)
        self.generator = Generator(width, dense_layers)
        self.discriminator_mri = Discriminator(image_size, width)
        self.discriminator_pet = Discriminator(image_size // self.pet_downsample, width)
        self.generator.apply(lambda m: _init_weights(m, kaiming=True))
        self.discriminator_mri.apply(lambda m: _init_weights(m, kaiming=False))
        self.discriminator_pet.apply(lambda m: _init_weights(m, kaiming=False))

    def players(self) -> list[Player]:
        return [
            Player("discriminator_mri", "discriminator", True),
            Player("discriminator_pet", "discriminator", True),
            Player("generator", "generator", True),
        ]

    def psi(self, x: torch.Tensor) -> torch.Tensor:
        """The downsampling operator ψ: k x k average pooling (identity for k = 1)."""
        k = self.pet_downsample
        return x if k == 1 else F.avg_pool2d(x, k)

    def content_terms(self, fused: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example (intensity, gradient) terms of L_con, each divided by HW, on [0, 1] intensities:
        ||ψG - ψi||_F^2 / HW and ||∇G - ∇v||_TV / HW (without η)."""
        g, v, i = (fused + 1) / 2, (real[:, 0:1] + 1) / 2, (real[:, 1:2] + 1) / 2
        hw = g.shape[-2] * g.shape[-1]
        intensity = (self.psi(g) - self.psi(i)).pow(2).sum(dim=(1, 2, 3)) / hw
        r = g - v  # ∇G - ∇v = ∇(G - v)
        dx, dy = r[..., :, 1:] - r[..., :, :-1], r[..., 1:, :] - r[..., :-1, :]
        tv = dx.abs().sum(dim=(1, 2, 3)) + dy.abs().sum(dim=(1, 2, 3))
        return intensity, tv / hw

    def content_loss(self, fused: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """L_con per example, shape (b,)."""
        intensity, gradient = self.content_terms(fused, real)
        return intensity + self.gradient_weight * gradient

    def loss(
        self, player: str, nets: Mapping[str, nn.Module], real: torch.Tensor | None, batch_size: int
    ) -> torch.Tensor:
        """Per-example losses of one update of `player`, shape (len(real),); see the module docstring."""
        if player not in ("discriminator_mri", "discriminator_pet", "generator"):
            raise KeyError(f"{type(self).__name__} has no player {player!r}")
        if real is None:
            raise ValueError(f"the {player} update needs a real batch (every DDcGAN player reads real data)")
        bce = nn.BCEWithLogitsLoss(reduction="none")
        ones, zeros = real.new_ones(len(real)), real.new_zeros(len(real))
        if player == "generator":
            fused = nets["generator"](real)
            adversarial = bce(nets["discriminator_mri"](fused), ones)
            adversarial = adversarial + bce(nets["discriminator_pet"](self.psi(fused)), ones)
            return adversarial + self.content_weight * self.content_loss(fused, real)
        with torch.no_grad():  # the generator is not updated by a discriminator step
            fused = nets["generator"](real)
        disc = nets[player]
        if player == "discriminator_mri":
            target, fake = real[:, 0:1], fused
        else:
            target, fake = self.psi(real[:, 1:2]), self.psi(fused)
        # Real pass first, then fake: Opacus pairs each backward with its forward (LIFO).
        real_loss = bce(disc(target), ones)
        return real_loss + bce(disc(fake), zeros)

    @torch.no_grad()
    def fuse(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Fuse (n, 2, H, W) MRI-PET pairs in [-1, 1] into (n, 1, H, W) images in [0, 1], on the CPU."""
        if images.dim() != 4 or images.shape[1] != 2:
            raise ValueError(f"fuse expects (n, 2, H, W) MRI-PET pairs; got shape {tuple(images.shape)}")
        was_training = self.generator.training
        self.generator.eval()
        device = next(self.generator.parameters()).device
        out = [
            ((self.generator(images[s : s + batch_size].to(device)) + 1) / 2).clamp(0, 1).cpu()
            for s in range(0, len(images), batch_size)
        ]
        self.generator.train(was_training)
        return torch.cat(out) if out else torch.empty(0, 1, *images.shape[2:])
