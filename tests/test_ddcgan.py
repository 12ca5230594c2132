"""DDcGAN (MRI-PET fusion): losses, per-example structure, Opacus per-sample gradients, DP steps."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

from dpmedgen.models.base import Player
from dpmedgen.models.ddcgan import DDcGAN

PLAYERS = ["discriminator_mri", "discriminator_pet", "generator"]


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: one thread is fastest, and intra-op threads thrash on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@contextlib.contextmanager
def frozen(*modules: nn.Module):
    """No gradients into `modules`; Opacus per-sample hooks off (as the training engine does)."""
    flags = [[p.requires_grad for p in m.parameters()] for m in modules]
    for m in modules:
        for p in m.parameters():
            p.requires_grad_(False)
        if hasattr(m, "disable_hooks"):
            m.disable_hooks()
    try:
        yield
    finally:
        for m, fl in zip(modules, flags):
            if hasattr(m, "enable_hooks"):
                m.enable_hooks()
            for p, f in zip(m.parameters(), fl):
                p.requires_grad_(f)


def _frozen_for(player: str, nets) -> list[nn.Module]:
    """The networks frozen while `player` is updated: the discriminators for the generator step, the other
    discriminator for a discriminator step (the generator runs under no_grad there)."""
    if player == "generator":
        return [nets["discriminator_mri"], nets["discriminator_pet"]]
    return [nets["discriminator_pet" if player == "discriminator_mri" else "discriminator_mri"]]


def _pairs(n: int, size: int, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    """Synthetic MRI-PET pairs in [-1, 1]: MRI = sharp-edged rectangles, PET = one smooth Gaussian blob."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=dtype), torch.arange(size, dtype=dtype), indexing="ij")
    out = torch.empty(n, 2, size, size, dtype=dtype)
    for k in range(n):
        a, b = sorted(torch.randint(1, size - 1, (2,), generator=g).tolist())
        c, d = sorted(torch.randint(1, size - 1, (2,), generator=g).tolist())
        mri = torch.full((size, size), -0.6, dtype=dtype)
        mri[a : b + 1, :] = 0.2
        mri[:, c : d + 1] += 0.5
        cy, cx = (torch.rand(2, generator=g, dtype=dtype) * size).tolist()
        pet = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 5) ** 2)) * 1.6 - 0.8
        out[k, 0], out[k, 1] = mri.clamp(-1, 1), pet
    return out


class _Pairs(torch.utils.data.Dataset):
    """Yields (2, H, W) tensors, so that batches are (b, 2, H, W) tensors."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def test_players_interface_and_validation():
    model = DDcGAN(image_size=16, width=4)
    assert model.kind == "fusion" and model.modalities == ("mri", "pet")
    assert model.players() == [
        Player("discriminator_mri", "discriminator", True),
        Player("discriminator_pet", "discriminator", True),
        Player("generator", "generator", True),
    ]
    assert set(model.networks()) == set(PLAYERS)
    with pytest.raises(NotImplementedError):
        model.sample(2)
    with pytest.raises(ValueError):
        DDcGAN(modalities=("mri",))
    with pytest.raises(ValueError):
        DDcGAN(image_size=16, pet_downsample=3)  # does not divide the grid
    with pytest.raises(ValueError):
        model.loss("generator", model.networks(), None, 4)
    with pytest.raises(KeyError):
        model.loss("discriminator", model.networks(), torch.zeros(1, 2, 16, 16), 1)


@pytest.mark.parametrize("pet_downsample", [1, 2])
def test_loss_shapes_and_fuse_range(pet_downsample):
    torch.manual_seed(0)
    model = DDcGAN(image_size=16, width=4, pet_downsample=pet_downsample)
    real = torch.rand(5, 2, 16, 16) * 2 - 1
    for player in PLAYERS:
        loss = model.loss(player, model.networks(), real, 5)
        assert loss.shape == (5,) and torch.isfinite(loss).all() and (loss >= 0).all(), player
    fake = model.generator(real)
    assert fake.shape == (5, 1, 16, 16) and fake.abs().max() <= 1
    for training in (True, False):
        model.generator.train(training)
        fused = model.fuse(real, batch_size=2)
        assert model.generator.training is training
        assert fused.shape == (5, 1, 16, 16) and fused.device.type == "cpu"
        assert fused.min() >= 0 and fused.max() <= 1
        assert torch.allclose(fused, ((fake + 1) / 2).detach(), atol=1e-6)  # same as the raw output, batch-free
    assert model.fuse(real[:0]).shape == (0, 1, 16, 16)
    with pytest.raises(ValueError):
        model.fuse(real[:, :1])


@pytest.mark.parametrize("player", PLAYERS)
def test_empty_batch_backpropagates(player):
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = DDcGAN(image_size=16, width=4)
    empty = torch.zeros(0, 2, 16, 16)
    loss = model.loss(player, model.networks(), empty, 0)
    assert loss.shape == (0,)
    loss.sum().backward()
    nets = {k: GradSampleModule(v, loss_reduction="sum") for k, v in model.networks().items()}
    with frozen(*_frozen_for(player, nets)):
        loss = model.loss(player, nets, empty, 0)
        assert loss.shape == (0,)
        loss.sum().backward()
    for p in model.networks()[player].parameters():
        assert p.grad_sample is not None and p.grad_sample.abs().sum() == 0
    for net in nets.values():
        net._close()


@pytest.mark.parametrize("player", PLAYERS)
def test_loss_element_depends_only_on_its_example(player):
    torch.manual_seed(0)
    model = DDcGAN(image_size=16, width=4, pet_downsample=2)
    real = torch.rand(4, 2, 16, 16) * 2 - 1
    base = model.loss(player, model.networks(), real, 4).detach()
    for j in range(4):
        changed = real.clone()
        changed[j] = torch.rand(2, 16, 16) * 2 - 1
        loss = model.loss(player, model.networks(), changed, 4).detach()
        others = [i for i in range(4) if i != j]
        assert torch.allclose(loss[others], base[others], rtol=1e-6, atol=1e-7), (player, j)
        assert not torch.isclose(loss[j], base[j], rtol=1e-6, atol=1e-7), (player, j)


@pytest.mark.parametrize("player", PLAYERS)
def test_opacus_per_sample_gradients_match_per_example_autograd(player):
    """Opacus' grad_sample[i] of the summed loss = the gradient of example i's loss alone, for each player,
    with the other networks wrapped too (frozen ones must neither receive nor leak per-sample gradients)."""
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    torch.manual_seed(0)
    model = DDcGAN(image_size=16, width=4, pet_downsample=2).double()
    for net in model.networks().values():
        assert ModuleValidator.validate(net, strict=False) == []
    real = torch.rand(4, 2, 16, 16, dtype=torch.float64) * 2 - 1
    nets = {k: GradSampleModule(v, loss_reduction="sum") for k, v in model.networks().items()}
    with frozen(*_frozen_for(player, nets)):
        model.loss(player, nets, real, 4).sum().backward()
    target = model.networks()[player]
    per_sample = [p.grad_sample.clone() for p in target.parameters()]
    for name, net in model.networks().items():
        if name != player:  # nothing flowed into the networks this player does not update
            assert all(p.grad is None and getattr(p, "grad_sample", None) is None for p in net.parameters()), name
    for net in nets.values():
        net._close()  # remove Opacus' hooks before the reference computation
    params = list(target.parameters())
    for i in range(4):
        expected = torch.autograd.grad(model.loss(player, model.networks(), real[i : i + 1], 1).sum(), params)
        for gs, g in zip(per_sample, expected):
            assert gs.shape[0] == 4
            assert torch.allclose(gs[i], g, rtol=1e-4, atol=1e-10), f"{player}: per-sample gradient mismatch"
        assert any(g.abs().sum() > 0 for g in expected)


def test_dp_sgd_step_for_all_three_players_changes_weights():
    from opacus import PrivacyEngine

    torch.manual_seed(0)
    model = DDcGAN(image_size=16, width=4)
    loader = torch.utils.data.DataLoader(_Pairs(_pairs(12, 16)), batch_size=4)
    engine = PrivacyEngine()
    nets, optimizers = {}, {}
    dp_loader = None
    for p in model.players():
        net = getattr(model, p.name)
        module, opt, dl = engine.make_private(
            module=net,
            optimizer=torch.optim.Adam(net.parameters(), lr=1e-2),
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            poisson_sampling=True,
            loss_reduction="sum",
            noise_generator=torch.Generator().manual_seed(1),
        )
        nets[p.name], optimizers[p.name] = module, opt
        dp_loader = dp_loader or dl
    before = {k: [q.detach().clone() for q in getattr(model, k).parameters()] for k in nets}
    real = next(iter(dp_loader))
    assert real.dim() == 4 and real.shape[1:] == (2, 16, 16)
    for p in model.players():
        opt = optimizers[p.name]
        opt.zero_grad(set_to_none=True)
        with frozen(*_frozen_for(p.name, nets)):
            model.loss(p.name, nets, real, len(real)).sum().backward()
        opt.step()
    for k, old in before.items():
        assert any(not torch.equal(o, q) for o, q in zip(old, getattr(model, k).parameters())), k
    assert len(engine.accountant.history) >= 1 and sum(n for *_, n in engine.accountant.history) == 3
    for net in nets.values():
        net._close()


@pytest.mark.parametrize("pet_downsample", [1, 2])
def test_content_loss_zero_at_the_ideal_and_grows_with_perturbation(pet_downsample):
    model = DDcGAN(image_size=16, width=4, pet_downsample=pet_downsample)
    const = torch.full((2, 2, 16, 16), 0.3)
    assert torch.equal(model.content_loss(const[:, :1], const), torch.zeros(2))
    # L_con = 0 iff G - MRI is constant and ψG = ψPET: holds for G = PET when PET = MRI + constant.
    real = _pairs(3, 16)
    real[:, 1] = real[:, 0] * 0.5 + 0.25
    real[:, 0] = real[:, 0] * 0.5 - 0.1  # PET = MRI + 0.35
    ideal = real[:, 1:2]
    zero = model.content_loss(ideal, real)
    assert torch.allclose(zero, torch.zeros(3), atol=1e-6)
    # Definitions and scale: intensities are compared on [0, 1] (a [-1, 1] offset δ costs (δ/2)^2 per pixel,
    # a unit step of the residual along every row costs 1/W in the TV term.
    # The intensity term runs over ψ's coarser grid but is divided by the full HW (paper): 1/k^2 per pixel.
    intensity, gradient = model.content_terms(ideal + 0.2, real)
    assert torch.allclose(intensity, torch.full((3,), 0.01 / pet_downsample**2), atol=1e-6)
    assert torch.allclose(gradient, zero, atol=1e-6)
    step = torch.where(torch.arange(16) < 8, -1.0, 1.0).expand(3, 1, 16, 16)
    step_cost = model.content_terms(real[:, :1] + step, real)[1]
    assert torch.allclose(step_cost, torch.full((3,), 1 / 16), atol=1e-6)
    noise = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    losses = [model.content_loss(ideal + s * noise, real) for s in (0.0, 0.05, 0.2)]
    assert (losses[1] > losses[0] + 1e-3).all() and (losses[2] > losses[1]).all()


@pytest.mark.parametrize("pet_downsample", [1, 2])
def test_gradient_term_rewards_mri_edges(pet_downsample):
    model = DDcGAN(image_size=16, width=4, pet_downsample=pet_downsample)
    real = _pairs(2, 16)
    stripes = torch.where(torch.arange(16) % 2 == 0, 0.25, -0.25).expand(2, 1, 16, 16)  # sharp, zero-mean edges
    real[:, :1] = stripes - 0.2
    pet = real[:, 1:2]
    without_edges, with_edges = pet, pet + stripes
    assert (model.content_terms(with_edges, real)[1] < 0.5 * model.content_terms(without_edges, real)[1]).all()
    assert (model.content_loss(with_edges, real) < model.content_loss(without_edges, real)).all()
    if pet_downsample == 2:  # 2x2 averaging removes the stripes: the intensity term does not see them at all
        assert torch.allclose(model.content_terms(with_edges, real)[0], torch.zeros(2), atol=1e-6)


def test_short_training_reduces_content_loss():
    torch.manual_seed(0)
    model = DDcGAN(image_size=16, width=4)
    real = _pairs(8, 16, seed=1)
    nets = model.networks()
    opts = {k: torch.optim.Adam(v.parameters(), lr=5e-3, betas=(0.5, 0.999)) for k, v in nets.items()}

    def content() -> float:
        with torch.no_grad():
            return model.content_loss(model.generator(real), real).mean().item()

    start = content()
    for _ in range(60):
        for p in model.players():
            opts[p.name].zero_grad(set_to_none=True)
            with frozen(*_frozen_for(p.name, nets)):
                model.loss(p.name, nets, real, len(real)).mean().backward()
            opts[p.name].step()
    end = content()
    copy_pet = model.content_loss(real[:, 1:2], real).mean().item()  # the trivial fusion: output = PET
    assert end < 0.6 * start and end < copy_pet, (start, end, copy_pet)
