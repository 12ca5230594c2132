"""Fast per-example clipping (dpmedgen.privacy.clipping) against a per-example autograd loop.

The reference differentiates each example's loss on its own (`torch.autograd.grad(losses[i], params)`), so it
shares no code with the ghost norms, the grouped-convolution instantiation or the book-keeping sum. Every
case runs in float64, where both agree to ~1e-12; a clip norm between the smallest and the largest
per-example norm makes some examples clipped and others not.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpmedgen.models import DCGAN, DDPM, SNGAN, DDcGAN, register_clipping_rules
from dpmedgen.models.sngan import SpectralNormConv2d
from dpmedgen.privacy.clipping import PerExampleClipper, UnsupportedLayer, ghost_is_cheaper

register_clipping_rules()


def reference(net: nn.Module, losses: torch.Tensor, max_grad_norm: float):
    params = [p for p in net.parameters() if p.requires_grad]
    grads = [torch.autograd.grad(losses[i], params, retain_graph=True, allow_unused=True) for i in range(len(losses))]
    grads = [[torch.zeros_like(p) if g is None else g for g, p in zip(gs, params)] for gs in grads]
    norms = torch.stack([torch.sqrt(sum(g.square().sum() for g in gs)) for gs in grads])
    c = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
    return norms, [sum(c[i] * grads[i][j] for i in range(len(grads))) for j in range(len(params))]


def check(net: nn.Module, loss_fn, rows_per_example: int = 1, clip_quantile: float = 0.5) -> None:
    """loss_fn(net) -> per-example losses; compares norms and the clipped sum for every parameter."""
    net = net.double()
    torch.manual_seed(1)
    losses = loss_fn(net)
    ref_norms, ref_sums = reference(net, losses, 1.0)
    c = float(ref_norms.quantile(clip_quantile))
    ref_norms, ref_sums = reference(net, loss_fn_seeded(loss_fn, net), c)
    clipper = PerExampleClipper(net, max_grad_norm=c, rows_per_example=rows_per_example)
    with clipper.capture():
        losses = loss_fn_seeded(loss_fn, net)
    norms = clipper.clipped_sum(losses)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-9, atol=1e-12)
    params = [p for p in net.parameters() if p.requires_grad]
    assert any(norms > c) and any(norms < c)  # some examples are clipped, some are not
    for p, expected in zip(params, ref_sums):
        torch.testing.assert_close(p.grad, expected, rtol=1e-9, atol=1e-12)
    clipper.remove()


def loss_fn_seeded(loss_fn, net):
    torch.manual_seed(1)
    return loss_fn(net)


def two_calls(shape):
    """A loss that calls the network twice per example (as a GAN discriminator step on real and fake)."""

    def fn(net):
        x = torch.randn(*shape, dtype=torch.float64)
        out = net(x).reshape(len(x), -1).sum(1)
        return out.square() + net(0.5 * x.flip(-1)).reshape(len(x), -1).sum(1)

    return fn


LAYERS = {
    "conv": lambda: nn.Sequential(nn.Conv2d(2, 4, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(4, 3, 4, 2, 1)),
    "conv_reflect_dilated_nobias": lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3, 1, 2, dilation=2, padding_mode="reflect", bias=False), nn.Tanh(), nn.Conv2d(3, 2, 1)
    ),
    "conv_ghost_deep": lambda: nn.Sequential(nn.Conv2d(2, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1)),
    "conv_transpose": lambda: nn.Sequential(
        nn.ConvTranspose2d(2, 3, 4, 2, 1), nn.ReLU(), nn.ConvTranspose2d(3, 2, 3, 2, 1, output_padding=1)
    ),
    "group_norm": lambda: nn.Sequential(nn.Conv2d(2, 4, 3, 1, 1), nn.GroupNorm(2, 4), nn.SiLU(), nn.GroupNorm(4, 4)),
    "spectral_norm_conv": lambda: nn.Sequential(
        SpectralNormConv2d(2, 4, 4, 2, 1), nn.LeakyReLU(0.1), SpectralNormConv2d(4, 1, 4, 1, 0)
    ),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_matches_per_example_loop(name):
    torch.manual_seed(0)
    check(LAYERS[name](), two_calls((6, 2, 8, 8)))


def test_linear_on_vectors_and_sequences():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    check(net, lambda n: n(torch.randn(6, 4, 5, dtype=torch.float64)).sum((1, 2)) ** 2)  # (b, T, d) input
    check(net, lambda n: n(torch.randn(6, 5, dtype=torch.float64)).sum(1) ** 2)


def test_rows_per_example_fold_replicas():
    """k rows per example (DPDM noise multiplicity): rows i*k .. i*k+k-1 form example i."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.GroupNorm(2, 4), nn.SiLU(), nn.Conv2d(4, 1, 3, 1, 1))

    def fn(n):
        x = torch.randn(5, 1, 6, 6, dtype=torch.float64).repeat_interleave(3, dim=0)
        return n(x + torch.randn_like(x)).flatten(1).square().mean(1).view(5, 3).mean(1)

    check(net, fn, rows_per_example=3)


def test_both_norm_methods_are_exercised_and_agree():
    """The cost model picks ghost norms for few positions and instantiation for many; both are exact."""
    assert ghost_is_cheaper(4, 64, 512) and not ghost_is_cheaper(1024, 16, 144)
    torch.manual_seed(0)
    for size in (4, 32):  # T = 4 (ghost) and T = 256 (grouped-convolution instantiation) at the second layer
        net = nn.Sequential(nn.Conv2d(1, 8, 3, 1, 1), nn.ReLU(), nn.Conv2d(8, 8, 4, 2, 1))
        check(net, two_calls((4, 1, size, size)))


MODELS = {
    "dcgan": lambda: DCGAN(image_size=32, latent_dim=8, width=8),
    "sngan": lambda: SNGAN(image_size=32, latent_dim=8, width=8),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_gan_discriminators(name):
    torch.manual_seed(0)
    model = MODELS[name]().double()
    model.train()
    check(model.discriminator, two_calls((6, 1, 32, 32)))


def test_ddcgan_networks():
    torch.manual_seed(0)
    model = DDcGAN(image_size=32, width=4).double()
    check(model.generator, lambda n: n(torch.randn(6, 2, 32, 32, dtype=torch.float64)).flatten(1).square().mean(1))
    check(model.discriminator_mri, two_calls((6, 1, 32, 32)))


@pytest.mark.parametrize("attention", [False, True])
def test_ddpm_unet(attention):
    """diffusers' UNet2DModel: ResNet blocks (Conv2d, GroupNorm, the time-embedding Linear), down/upsampling
    convolutions and, with attention, the attention block's GroupNorm and Linear projections."""
    torch.manual_seed(0)
    model = DDPM(image_size=16, block_out_channels=(8, 16), attention=attention, norm_num_groups=4, noise_draws=2)
    real = torch.rand(4, 1, 16, 16, dtype=torch.float64) * 2 - 1
    check(model.denoiser, lambda n: model.loss("denoiser", {"denoiser": n}, real, 4), rows_per_example=2)


def test_empty_batch_gives_zero_gradients():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 4 * 4, 1))
    clipper = PerExampleClipper(net, 1.0)
    with clipper.capture():
        losses = net(torch.zeros(0, 1, 6, 6)).squeeze(1)
    assert clipper.clipped_sum(losses).shape == (0,)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in net.parameters())


def test_unsupported_layer_is_named():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    with pytest.raises(UnsupportedLayer, match=r"1 \(BatchNorm2d\).*clipping: opacus"):
        PerExampleClipper(net, 1.0)
    with pytest.raises(UnsupportedLayer, match="groups=2"):
        PerExampleClipper(nn.Conv2d(2, 2, 3, groups=2), 1.0)


def test_in_place_modification_of_a_recorded_output_is_refused():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(2 * 4 * 4, 1))
    clipper = PerExampleClipper(net, 1.0)
    with clipper.capture():
        losses = net(torch.randn(3, 1, 6, 6)).squeeze(1)
    with pytest.raises(RuntimeError, match="modified in place"):
        clipper.clipped_sum(losses)


def test_only_captured_forward_passes_are_recorded():
    """A forward outside capture() (e.g. another player's step through a frozen network) leaves no record."""
    net = nn.Sequential(nn.Linear(3, 1))
    clipper = PerExampleClipper(net, 1.0)
    net(torch.randn(4, 3))
    with clipper.capture():
        losses = net(torch.randn(2, 3)).squeeze(1)
    clipper.clipped_sum(losses)  # 2 examples: the earlier 4-row call would fail the row check


def test_group_norm_with_a_zero_scale_recomputes_the_normalised_input():
    """x̂ comes from the output, (y − β) / γ, unless some |γ| is too small to divide by."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, 1, 1), nn.GroupNorm(2, 4), nn.SiLU())
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([1.5, 0.0, -0.7, 2.0]))
    check(net, two_calls((6, 2, 8, 8)))
