"""DDPM: per-example losses, noise multiplicity under Opacus, sampling, schedule and checkpoint loading."""

from __future__ import annotations

import copy
import logging
import warnings

import pytest
import torch
from torch import nn

from diffusers import DDPMScheduler, UNet2DModel  # slow import (seconds): pay it at collection, not in a test

from dpmedgen.models.ddpm import DDPM, fold_replicas

warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")

@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tiny networks gain nothing from more, and on a shared 2-core machine
    OpenMP threads competing with other processes make every test several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = dict(image_size=32, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8)


def tiny(**kwargs) -> DDPM:
    torch.manual_seed(0)
    return DDPM(**(TINY | kwargs))


def images(b: int, size: int = 32, channels: int = 1, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, channels, size, size, generator=g) * 2 - 1


def trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------- construction


def test_interface():
    model = tiny(noise_draws=3)
    assert model.kind == "diffusion"
    assert [(p.name, p.role, p.reads_real_data) for p in model.players()] == [("denoiser", "denoiser", True)]
    assert model.networks() == {"denoiser": model.denoiser}
    assert model.replicas("denoiser") == 3
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.denoiser.modules())
    # the scheduler holds no weights: it is not a module and not in the state dict
    assert not isinstance(model.scheduler, nn.Module)
    assert all(k.startswith("denoiser.") for k in model.state_dict())
    with pytest.raises(KeyError):
        model.loss("generator", model.networks(), images(2), 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=34, block_out_channels=(16, 32, 32)), "divisible by 2"),
        (dict(sampling_steps=0), "sampling_steps"),
        (dict(num_train_timesteps=50, sampling_steps=51), "sampling_steps"),
        (dict(noise_draws=0), "noise_draws"),
        (dict(block_out_channels=(16, 20)), "norm_num_groups"),
        (dict(block_out_channels=()), "block_out_channels"),
        (dict(layers_per_block=0), "layers_per_block"),
        (dict(beta_schedule="quadratic"), "beta_schedule"),
        (dict(num_train_timesteps=0), "num_train_timesteps"),
        (dict(channels=0), "channels"),
        (dict(prediction_type="sample"), "prediction_type"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DDPM(**(TINY | kwargs))


def test_attention_only_at_lowest_resolution():
    cfg = tiny().denoiser.config
    assert cfg.down_block_types == ("DownBlock2D", "AttnDownBlock2D")
    assert cfg.up_block_types == ("AttnUpBlock2D", "UpBlock2D")
    plain = tiny(attention=False)
    assert not plain.attention
    assert not any("Attention" in type(m).__name__ for m in plain.denoiser.modules())


# ---------------------------------------------------------------------------------------- loss


@pytest.mark.parametrize("k", [1, 3])
def test_loss_shape_finite_and_empty_batch(k):
    model = tiny(noise_draws=k)
    nets = model.networks()
    torch.manual_seed(5)
    loss = model.loss("denoiser", nets, images(4), 4)
    assert loss.shape == (4,)
    assert torch.isfinite(loss).all() and (loss > 0).all()
    torch.manual_seed(5)
    assert torch.equal(model.loss("denoiser", nets, images(4), 4), loss)  # draws come from the global RNG
    torch.manual_seed(6)
    assert not torch.equal(model.loss("denoiser", nets, images(4), 4), loss)

    empty = model.loss("denoiser", nets, images(0), 0)
    assert empty.shape == (0,)
    model.zero_grad()
    empty.sum().backward()
    grads = [p.grad for _, p in trainable(model.denoiser)]
    assert all(g is not None and not g.any() for g in grads)


def test_loss_is_the_mean_of_the_rows_of_each_example():
    model = tiny(noise_draws=2)
    real = images(2)
    t = torch.tensor([10, 500, 999, 0])
    eps = torch.randn(4, 1, 32, 32)
    per_example = model.denoising_loss(model.denoiser, real, t, eps)
    single = tiny(noise_draws=1)  # same seed: same weights
    rows = single.denoising_loss(single.denoiser, real.repeat_interleave(2, 0), t, eps)
    torch.testing.assert_close(per_example, rows.view(2, 2).mean(1))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_loss_target_is_the_noise_or_the_velocity(prediction_type):
    """Ho et al.'s eps target, or Salimans & Ho's v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0, written here
    from the schedule's alphas_cumprod (not diffusers' get_velocity), and the sampler predicting the same."""
    model = tiny(prediction_type=prediction_type)
    assert model.prediction_type == prediction_type == model.scheduler.config.prediction_type
    real, t, eps = images(3), torch.tensor([0, 400, 999]), torch.randn(3, 1, 32, 32)
    abar = model.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * real + (1 - abar).sqrt() * eps
    target = eps if prediction_type == "epsilon" else abar.sqrt() * eps - (1 - abar).sqrt() * real
    with torch.no_grad():
        expected = (target - model.denoiser(x_t, t).sample).pow(2).flatten(1).mean(1)
        loss = model.denoising_loss(model.denoiser, real, t, eps)
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-6)
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 32, 32)


# ---------------------------------------------------------------------------------------- Opacus


def test_fold_replicas_sums_the_rows_of_each_example():
    layer = nn.Linear(2, 1)
    layer.weight.grad_sample = torch.arange(6.0).view(6, 1, 1) * torch.ones(6, 1, 2)
    layer.bias.grad_sample = [torch.arange(4.0).view(4, 1), torch.ones(2, 1)]
    fold_replicas(layer, 2)
    assert torch.equal(layer.weight.grad_sample[:, 0, 0], torch.tensor([1.0, 5.0, 9.0]))  # rows (0,1), (2,3), (4,5)
    assert [g.shape[0] for g in layer.bias.grad_sample] == [2, 1]
    assert torch.equal(layer.bias.grad_sample[0][:, 0], torch.tensor([1.0, 5.0]))
    fold_replicas(layer, 2)  # already folded: unchanged
    assert layer.weight.grad_sample.shape[0] == 3
    fold_replicas(layer, 1)

    layer.weight.grad_sample = torch.ones(5, 1, 2)
    with pytest.raises(ValueError, match="multiple"):
        fold_replicas(layer, 2)
    with pytest.raises(RuntimeError, match="grad_sample"):
        fold_replicas(nn.Linear(2, 1), 2)


def test_opacus_per_example_gradients_with_noise_draws():
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    k, b = 2, 3
    model = tiny(noise_draws=k).double()
    assert ModuleValidator.validate(model.denoiser, strict=False) == []
    reference = copy.deepcopy(model.denoiser)  # no Opacus hooks
    gsm = GradSampleModule(model.denoiser, loss_reduction="sum")
    real = images(b).double()
    torch.manual_seed(3)
    t = torch.randint(0, model.num_train_timesteps, (b * k,))
    eps = torch.randn(b * k, 1, 32, 32, dtype=torch.float64)

    model.denoising_loss(gsm, real, t, eps).sum().backward()
    fold_replicas(gsm, k)
    for i in range(b):
        reference.zero_grad()
        rows = slice(i * k, (i + 1) * k)
        model.denoising_loss(reference, real[i : i + 1], t[rows], eps[rows]).sum().backward()
        for (name, p), (_, q) in zip(trainable(model.denoiser), trainable(reference)):
            assert p.grad_sample.shape == (b, *p.shape), name
            # atol: gradients that vanish exactly (attention key biases) come out as rounding noise
            torch.testing.assert_close(p.grad_sample[i], q.grad, rtol=1e-4, atol=1e-10, msg=name)


def test_empty_batch_under_grad_sample_module():
    from opacus import GradSampleModule

    model = tiny(noise_draws=2)
    gsm = GradSampleModule(model.denoiser, loss_reduction="sum")
    loss = model.loss("denoiser", {"denoiser": gsm}, images(0), 0)
    assert loss.shape == (0,)
    loss.sum().backward()
    fold_replicas(gsm, 2)
    for name, p in trainable(model.denoiser):
        assert p.grad_sample.shape == (1, *p.shape), name
        assert not p.grad_sample.any(), name


def test_dp_step_clips_each_example_not_each_row():
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    k, clip = 2, 1e-3
    model = tiny(noise_draws=k)
    before = copy.deepcopy(model.denoiser.state_dict())
    loader = DataLoader(TensorDataset(images(8)), batch_size=4)
    optimizer = torch.optim.SGD(model.denoiser.parameters(), lr=1.0)
    torch.manual_seed(0)
    module, optimizer, loader = PrivacyEngine().make_private(
        module=model.denoiser,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        poisson_sampling=True,
        loss_reduction="sum",
    )
    (real,) = next(iter(loader))
    b = len(real)
    assert b > 0
    optimizer.zero_grad()
    model.loss("denoiser", {"denoiser": module}, real, b).sum().backward()
    fold_replicas(module, model.replicas("denoiser"))
    params = [p for _, p in trainable(model.denoiser)]
    per_example = torch.cat([p.grad_sample.reshape(b, -1) for p in params], dim=1)
    scale = (clip / (per_example.norm(dim=1) + 1e-6)).clamp(max=1.0)
    expected = [torch.einsum("i,i...->...", scale, p.grad_sample) for p in params]
    optimizer.step()
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.grad, e)
    assert any(not torch.equal(before[n], p) for n, p in trainable(model.denoiser))
    # b * clip bounds the norm of the summed update: each example, not each of its k rows, is clipped
    assert torch.cat([p.grad.flatten() for p in params]).norm() <= b * clip * (1 + 1e-4)

    optimizer.zero_grad()  # an empty Poisson batch also steps
    model.loss("denoiser", {"denoiser": module}, real[:0], 0).sum().backward()
    fold_replicas(module, k)
    optimizer.step()


# ---------------------------------------------------------------------------------------- sampling


def test_sample_shape_range_determinism_and_steps():
    model = tiny(sampling_steps=4)
    calls = []
    model.denoiser.register_forward_hook(lambda *_: calls.append(1))
    model.train()
    out = model.sample(3, generator=torch.Generator().manual_seed(0), batch_size=2)
    assert out.shape == (3, 1, 32, 32) and out.device.type == "cpu"
    assert out.min() >= 0 and out.max() <= 1
    assert len(calls) == 4 * 2  # sampling_steps network calls per batch, two batches
    assert model.denoiser.training
    again = model.sample(3, generator=torch.Generator().manual_seed(0), batch_size=2)
    other = model.sample(3, generator=torch.Generator().manual_seed(1), batch_size=2)
    assert torch.equal(out, again)
    assert not torch.equal(out, other)
    assert model.sample(0).shape == (0, 1, 32, 32)


# ---------------------------------------------------------------------------------------- learning


def test_schedule():
    model = tiny()
    abar = model.scheduler.alphas_cumprod
    assert len(abar) == model.num_train_timesteps
    assert (abar[1:] < abar[:-1]).all()
    assert abar[-1] < 1e-3  # x_{T-1} is almost pure noise
    x0, eps = images(4), torch.randn(4, 1, 32, 32)
    x_t = model.scheduler.add_noise(x0, eps, torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(x_t, x0, atol=0.05, rtol=0)
    x_t = model.scheduler.add_noise(x0, eps, torch.full((4,), model.num_train_timesteps - 1))
    torch.testing.assert_close(x_t, eps, atol=0.05, rtol=0)


def test_denoiser_fits_a_constant_image():
    model = tiny(block_out_channels=(8, 16), attention=False)
    real = torch.full((8, 1, 32, 32), 0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = model.loss("denoiser", model.networks(), real, len(real)).mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.7 * first, losses


# ---------------------------------------------------------------------------------------- init_from


@pytest.mark.parametrize("layout", ["subfolders", "flat"])
def test_init_from_adapts_an_rgb_checkpoint(tmp_path, caplog, layout):
    torch.manual_seed(0)
    rgb = UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    with torch.no_grad():  # a non-trivial output layer (diffusers' default init is fine, but be sure)
        rgb.conv_out.weight.normal_(0, 0.1)
        rgb.conv_out.bias.normal_(0, 0.1)
    subfolders = layout == "subfolders"
    rgb.save_pretrained(tmp_path / "unet" if subfolders else tmp_path)
    DDPMScheduler(num_train_timesteps=50, beta_schedule="squaredcos_cap_v2").save_pretrained(
        tmp_path / "scheduler" if subfolders else tmp_path
    )

    with caplog.at_level(logging.WARNING, logger="dpmedgen.models.ddpm"):
        model = DDPM(image_size=16, channels=1, block_out_channels=(64, 64), sampling_steps=10, init_from=tmp_path)
    assert "block_out_channels" in caplog.text
    assert model.block_out_channels == (16, 32) and model.attention
    assert model.num_train_timesteps == 50 and model.beta_schedule == "squaredcos_cap_v2"
    assert model.denoiser.training
    unet = model.denoiser
    assert unet.config.in_channels == unet.config.out_channels == 1
    torch.testing.assert_close(unet.conv_in.weight, rgb.conv_in.weight.sum(dim=1, keepdim=True))

    rgb.eval()
    unet.eval()
    x = images(2, size=16)
    t = torch.tensor([3, 40])
    with torch.no_grad():
        expected = rgb(x.repeat(1, 3, 1, 1), t).sample.mean(dim=1, keepdim=True)
        torch.testing.assert_close(unet(x, t).sample, expected, rtol=1e-4, atol=1e-5)
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, 16, 16)

    with pytest.raises(ValueError, match="divisible"):
        DDPM(image_size=15, init_from=tmp_path)


def test_init_from_missing_directory(tmp_path):
    missing = tmp_path / "ddpm-cifar10-32"
    with pytest.raises(FileNotFoundError, match="ddpm-cifar10-32.*config.json"):
        DDPM(init_from=missing)
    missing.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        DDPM(init_from=missing)
