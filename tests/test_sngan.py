"""SNGAN: spectral normalisation that Opacus accepts, with exact per-sample gradients."""

from __future__ import annotations

import copy
import io
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dpmedgen.models.sngan import SNGAN, Discriminator, SpectralNormConv2d, register_opacus_grad_samplers


def _sn_layers(module: nn.Module) -> list[SpectralNormConv2d]:
    return [m for m in module.modules() if isinstance(m, SpectralNormConv2d)]


def _randomise_uv(module: nn.Module) -> None:
    """Unconverged u, v: makes the u v^T correction term of the gradient matter."""
    for m in _sn_layers(module):
        m.u = F.normalize(torch.randn_like(m.u), dim=0)
        m.v = F.normalize(torch.randn_like(m.v), dim=0)


def _count_power_iterations(layer: SpectralNormConv2d) -> list[int]:
    calls = [0]
    original = layer.power_iteration

    def counted(n=None):
        calls[0] += 1
        original(n)

    layer.power_iteration = counted
    return calls


def test_sigma_converges_to_spectral_norm():
    torch.manual_seed(0)
    conv = SpectralNormConv2d(3, 8, 4, 2, 1).double()
    with torch.no_grad():
        conv.weight.normal_()
    conv.power_iteration(500)
    w_mat = conv.weight.detach().view(8, -1)
    exact = torch.linalg.matrix_norm(w_mat, ord=2)
    assert conv.sigma().item() == pytest.approx(exact.item(), rel=1e-3)
    normalized = conv.normalized_weight().detach().view(8, -1)
    assert torch.linalg.matrix_norm(normalized, ord=2).item() == pytest.approx(1.0, rel=1e-3)


@pytest.mark.parametrize("training", [False, True])
def test_forward_matches_torch_spectral_norm(training):
    torch.manual_seed(1)
    ref = nn.utils.parametrizations.spectral_norm(nn.Conv2d(3, 8, 4, 2, 1).double())
    ours = SpectralNormConv2d(3, 8, 4, 2, 1).double()
    param = ref.parametrizations.weight
    with torch.no_grad():
        ours.weight.copy_(param.original)
        ours.bias.copy_(ref.bias)
    _randomise_uv(ours)  # far from torch's converged u, v: forward must use exactly the given ones
    param[0]._u.copy_(ours.u)
    param[0]._v.copy_(ours.v)
    ref.train(training)
    ours.train(training)
    x = torch.randn(5, 3, 16, 16, dtype=torch.float64)
    # Training mode: both run one power iteration (our weight changed since the last one) from the same u, v.
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.u, param[0]._u, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.v, param[0]._v, rtol=1e-10, atol=1e-12)
    # And independently: conv2d with W / (u^T W v).
    sigma = ours.u @ ours.weight.detach().view(8, -1) @ ours.v
    expected = F.conv2d(x, ours.weight.detach() / sigma, ours.bias.detach(), stride=2, padding=1)
    torch.testing.assert_close(ours(x), expected, rtol=1e-10, atol=1e-12)


def test_opacus_per_sample_gradients_match_autograd():
    from opacus import GradSampleModule

    register_opacus_grad_samplers()
    torch.manual_seed(2)
    disc = Discriminator(32, width=8).double()
    _randomise_uv(disc)
    ref = copy.deepcopy(disc)  # same weights and u, v; both already iterated for these weights
    gsm = GradSampleModule(disc, loss_reduction="sum")
    real = torch.rand(4, 1, 32, 32, dtype=torch.float64) * 2 - 1
    fake = torch.rand(4, 1, 32, 32, dtype=torch.float64) * 2 - 1
    ones, zeros = torch.ones(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    u_before = [m.u.clone() for m in _sn_layers(disc)]

    bce = nn.BCEWithLogitsLoss(reduction="none")
    loss = bce(gsm(real), ones).sum() + bce(gsm(fake), zeros).sum()  # GAN pattern: real forward first
    loss.backward()

    params = list(disc.parameters())
    ref_params = list(ref.parameters())
    for i in range(4):
        loss_i = bce(ref(real[i : i + 1]), ones[:1]).sum() + bce(ref(fake[i : i + 1]), zeros[:1]).sum()
        grads = torch.autograd.grad(loss_i, ref_params)
        for p, g in zip(params, grads):
            torch.testing.assert_close(p.grad_sample[i], g, rtol=1e-4, atol=1e-10)
    for p in params:  # and they add up to the batch gradient
        torch.testing.assert_close(p.grad_sample.sum(0), p.grad, rtol=1e-4, atol=1e-10)
    for m, u in zip(_sn_layers(disc), u_before):  # no power iteration between forwards and backward
        assert torch.equal(m.u, u)
    for m, r in zip(_sn_layers(disc), _sn_layers(ref)):
        assert torch.equal(m.u, r.u)


def test_opacus_empty_batch_gives_zero_grad_samples():
    from opacus import GradSampleModule

    register_opacus_grad_samplers()
    torch.manual_seed(3)
    gsm = GradSampleModule(Discriminator(32, width=4), loss_reduction="sum")
    out = gsm(torch.zeros(0, 1, 32, 32))
    assert out.shape == (0,)
    out.sum().backward()
    for p in gsm.parameters():
        assert p.grad_sample is not None and not p.grad_sample.any()


def test_dp_sgd_step_with_privacy_engine():
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator
    from torch.utils.data import DataLoader, TensorDataset

    register_opacus_grad_samplers()
    register_opacus_grad_samplers()  # idempotent
    torch.manual_seed(4)
    model = SNGAN(image_size=32, latent_dim=16, width=8)
    assert ModuleValidator.validate(model.discriminator, strict=False) == []
    loader = DataLoader(TensorDataset(torch.rand(16, 1, 32, 32) * 2 - 1), batch_size=8)
    optimizer = torch.optim.SGD(model.discriminator.parameters(), lr=0.5)
    disc, optimizer, loader = PrivacyEngine().make_private(
        module=model.discriminator,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=True,
    )
    before = {n: p.detach().clone() for n, p in disc.named_parameters()}
    layers = _sn_layers(disc)
    v_before = [m.v.clone() for m in layers]  # (u of the final 1-output layer is always [1])
    (real,) = next(iter(loader))
    assert len(real) > 0
    optimizer.zero_grad()
    losses = model.loss("discriminator", {"discriminator": disc, "generator": model.generator}, real, len(real))
    losses.mean().backward()
    optimizer.step()
    for n, p in disc.named_parameters():
        assert p.grad_sample is not None
        assert not torch.equal(p.detach(), before[n]), n
    assert all(torch.equal(m.v, v) for m, v in zip(layers, v_before))  # nothing iterated within the step
    disc(real)  # the next training forward iterates once for the new weights
    assert all(not torch.equal(m.v, v) for m, v in zip(layers, v_before))


def test_state_dict_round_trip_and_dtype():
    torch.manual_seed(5)
    disc = Discriminator(32, width=8)
    _randomise_uv(disc)
    buffer = io.BytesIO()
    torch.save(disc.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(6)
    restored = Discriminator(32, width=8)
    assert not torch.equal(_sn_layers(restored)[0].u, _sn_layers(disc)[0].u)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(_sn_layers(disc), _sn_layers(restored)):
        assert torch.equal(a.u, b.u) and torch.equal(a.v, b.v)
        assert b.is_synced()  # resumes exactly: no extra power iteration on the next forward
    x = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(restored(x), disc(x), rtol=0, atol=0)
    for a, b in zip(_sn_layers(disc), _sn_layers(restored)):
        assert torch.equal(a.u, b.u)

    restored.to(torch.float64)
    for m in _sn_layers(restored):
        assert m.u.dtype == m.v.dtype == torch.float64
        assert m.is_synced()
    assert restored(x.double()).dtype == torch.float64


def test_power_iteration_once_per_weight_change():
    torch.manual_seed(7)
    conv = SpectralNormConv2d(2, 4, 4, 2, 1)
    calls = _count_power_iterations(conv)
    optimizer = torch.optim.SGD(conv.parameters(), lr=0.1)
    x = torch.randn(3, 2, 8, 8)
    u0 = conv.u.clone()

    conv(x)
    (conv(x).sum() + conv(x).sum()).backward()
    assert calls[0] == 0 and torch.equal(conv.u, u0)  # weight unchanged since construction

    optimizer.step()
    conv(x)
    assert calls[0] == 1 and not torch.equal(conv.u, u0)
    u1 = conv.u.clone()
    conv(x)
    assert calls[0] == 1 and torch.equal(conv.u, u1)

    conv.eval()
    optimizer.step()
    conv(x)
    assert calls[0] == 1 and torch.equal(conv.u, u1)  # never in eval mode
    conv.train()
    conv(x)
    assert calls[0] == 2 and not torch.equal(conv.u, u1)


def test_power_iteration_keeps_dtype_under_autocast():
    torch.manual_seed(10)
    conv = SpectralNormConv2d(2, 4, 4, 2, 1)
    with torch.no_grad():
        conv.weight.mul_(2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(torch.randn(1, 2, 8, 8))
    assert conv.is_synced() and conv.u.dtype == conv.v.dtype == torch.float32


def test_deepcopy_keeps_power_iteration_state():
    torch.manual_seed(8)
    conv = SpectralNormConv2d(2, 4, 4, 2, 1)
    twin = copy.deepcopy(conv)
    calls = _count_power_iterations(twin)
    twin(torch.randn(1, 2, 8, 8))
    assert calls[0] == 0 and torch.equal(twin.u, conv.u)
    with torch.no_grad():
        conv.weight.add_(1.0)
    stale = copy.deepcopy(conv)
    calls = _count_power_iterations(stale)
    stale(torch.randn(1, 2, 8, 8))
    assert calls[0] == 1


def test_sngan_shapes_and_losses():
    torch.manual_seed(9)
    model = SNGAN(image_size=64, latent_dim=16, width=4)
    assert not any(m.__class__.__name__ in {"GroupNorm", "BatchNorm2d"} for m in model.discriminator.modules())
    assert len(_sn_layers(model.discriminator)) == 5  # 4 doublings + final layer
    assert all(len(list(m.buffers())) == 0 for m in _sn_layers(model))
    real = torch.rand(3, 1, 64, 64) * 2 - 1
    assert model.discriminator(real).shape == (3,)
    nets = model.networks()
    assert model.loss("discriminator", nets, real, 3).shape == (3,)
    assert model.loss("generator", nets, None, 5).shape == (5,)
    assert model.sample(2).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError):
        SNGAN(image_size=48)


def test_import_does_not_import_opacus():
    code = "import sys, dpmedgen.models.sngan; assert 'opacus' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
