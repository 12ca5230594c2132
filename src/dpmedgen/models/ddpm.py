"""DDPM (Ho et al., 2020): a denoising diffusion model whose UNet denoiser is trained from scratch (or
fine-tuned from a local diffusers checkpoint), usable under DP-SGD.

Forward process, T = `num_train_timesteps`, betas beta_t from `beta_schedule`, t = 0..T-1:

    q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I),   abar_t = prod_{s<=t} (1 - beta_s).

Training ("simple" loss, Ho et al. eq. 14): with `prediction_type` "epsilon" the denoiser eps_theta(x_t, t)
predicts the noise,

    L(x_0) = E_{t ~ U{0..T-1}, eps ~ N(0, I)} mean_pixels (eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t))^2;

with "v_prediction" (Salimans & Ho, 2022, sec. 4) it predicts the velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0
with the same squared loss. At large t an epsilon predictor carries almost no information about x_0
(x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) divides its error by sqrt(abar_t) ~ 0.01), so a briefly
trained one gets the global brightness wrong: in our CPU-sized study its samples were far brighter than its own
training images (mean pixel 0.47-0.51 against 0.31, at 10 to 100 sampling steps). v keeps x_0 in the target at
every t (x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v_hat).

Sampling (ancestral, `sampling_steps` = S timesteps t_1 > ... > t_S = 0 evenly strided over 0..T-1, as in
Nichol & Dhariwal 2021): x ~ N(0, I); at each t, x0_hat = (x - sqrt(1 - abar_t) eps_theta(x, t)) / sqrt(abar_t)
clipped to [-1, 1], then x ~ N(mu(x, x0_hat), sigma_t^2 I) with the Gaussian posterior q(x_t' | x_t, x_0 = x0_hat)
of the previous kept timestep t' (Ho et al. eq. 7, "fixed_small" variance; no noise at t = 0).

Noise multiplicity (DPDM, Dockhorn et al., 2023): with K = `noise_draws`, each example's loss is the mean of
K independent (t, eps) draws. That is the same unbiased estimate of L(x_0) with 1/K the variance; DP-SGD
clips the gradient of that mean, so the clipped unit is still the example and the sensitivity (hence the
privacy cost) is unchanged, while the signal-to-noise ratio of each update improves. In the network batch
example i occupies rows i*K .. i*K+K-1; Opacus computes per-*row* gradients, so call `fold_replicas` after
backward and before the DP optimizer step, and wrap the denoiser with ``loss_reduction="sum"``.

GroupNorm everywhere: BatchNorm mixes the examples of a batch, so a per-example gradient is undefined
(Opacus rejects it); GroupNorm normalises each example on its own, and self-attention attends within one
image, so every row of the batch is computed independently and per-example clipping bounds each unit.
Every convolution's input is made contiguous (`_contiguous_inputs`): Opacus 1.6 computes wrong per-sample
convolution gradients for the channels-last tensors that diffusers' attention blocks produce.

References
----------
* J. Ho, A. Jain, P. Abbeel. Denoising Diffusion Probabilistic Models. NeurIPS 2020.
* A. Nichol, P. Dhariwal. Improved Denoising Diffusion Probabilistic Models. ICML 2021 (strided sampling).
* T. Dockhorn, T. Cao, A. Vahdat, K. Kreis. Differentially Private Diffusion Models. TMLR 2023 (DPDM).
* T. Salimans, J. Ho. Progressive Distillation for Fast Sampling of Diffusion Models. ICLR 2022 (v-prediction).
* S. Ghalebikesabi et al. Differentially Private Diffusion Models Generate Useful Synthetic Images. 2023
  (public pre-training, then DP fine-tuning: `init_from`).
* M. Abadi et al. Deep Learning with Differential Privacy. CCS 2016 (DP-SGD).
* A. Yousefpour et al. Opacus: User-Friendly Differential Privacy Library in PyTorch. 2021.
* Y. Wu, K. He. Group Normalization. ECCV 2018.
* P. von Platen et al. Diffusers: State-of-the-art diffusion models. 2022 (UNet2DModel, DDPMScheduler).
"""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from dpmedgen.models.base import GenerativeModel, Player

logger = logging.getLogger(__name__)

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
PREDICTION_TYPES = ("epsilon", "v_prediction")
ATTENTION_HEAD_DIM = 8
_ARCHITECTURE = ("block_out_channels", "layers_per_block", "attention", "norm_num_groups")
_SCHEDULE = ("num_train_timesteps", "beta_schedule", "prediction_type")


def _diffusers() -> tuple[type, type]:
    """Import diffusers on first use: importing it takes seconds, and most jobs never build a DDPM."""
    from diffusers import DDPMScheduler, UNet2DModel

    return UNet2DModel, DDPMScheduler


def fold_replicas(module: nn.Module, k: int) -> None:
    """Turn Opacus' per-row gradients into per-example gradients: rows i*k .. i*k+k-1 belong to example i.

    Call after ``loss.sum().backward()`` through an ``opacus.GradSampleModule`` (``loss_reduction="sum"``)
    and before ``DPOptimizer.step()``. Opacus 1.6 stores the per-sample gradients of the last complete
    backward pass in ``p.grad_sample`` (a tensor (rows, *p.shape), or a list of such tensors after several
    backward passes), and the DP optimizer reads nothing else to compute per-sample norms, clip and sum.
    Each tensor is replaced by its sum over the k rows of each example, shape (rows / k, *p.shape): the
    per-example loss is the mean of its k row losses, so its gradient is the sum of the per-row gradients of
    (row loss / k), which is what Opacus computed for each row. ``p.grad`` (the unclipped sum over all rows)
    is unchanged and still correct, and the DP optimizer overwrites it anyway. Tensors already folded or
    already consumed by an optimizer step are left alone, so calling this once after every backward pass is
    safe with gradient accumulation. k = 1 is a no-op.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    if k == 1:
        return
    found = False
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if hasattr(p, "_current_grad_sample"):
            raise RuntimeError(
                f"{name}: Opacus is still accumulating per-sample gradients; call fold_replicas after a "
                "complete backward pass"
            )
        grad_sample = getattr(p, "grad_sample", None)
        if grad_sample is None:
            continue
        found = True
        if isinstance(grad_sample, list):
            p.grad_sample = [_fold(g, k, name) for g in grad_sample]
        else:
            p.grad_sample = _fold(grad_sample, k, name)
    if not found:
        raise RuntimeError(
            "no parameter holds per-sample gradients (p.grad_sample); call fold_replicas after backward "
            "through an opacus GradSampleModule (ghost clipping is not supported)"
        )


def _fold(g: torch.Tensor, k: int, name: str) -> torch.Tensor:
    if getattr(g, "_replicas_folded", False) or hasattr(g, "_processed"):
        return g
    if g.shape[0] % k:
        raise ValueError(f"{name}: {g.shape[0]} per-sample gradient rows are not a multiple of k = {k}")
    folded = g.reshape(g.shape[0] // k, k, *g.shape[1:]).sum(dim=1)
    folded._replicas_folded = True
    return folded


class DDPM(GenerativeModel):
    """Unconditional DDPM on (C, image_size, image_size) images in [-1, 1].

    Denoiser (`self.denoiser`): a diffusers ``UNet2DModel`` with one resolution level per entry of
    `block_out_channels` (halving the resolution between levels), `layers_per_block` ResNet blocks per level,
    GroupNorm with `norm_num_groups` groups, and, if `attention`, self-attention (heads of 8 channels) only at
    the lowest resolution (its last down block, the middle block and its first up block).
    Noise schedule (`self.scheduler`): a diffusers ``DDPMScheduler`` (plain attribute, not a module: it holds
    no weights and is rebuilt from its config).

    `init_from`: a local diffusers checkpoint directory (e.g. a downloaded ``google/ddpm-cifar10-32``) with
    the UNet's ``config.json`` and weights either in ``unet/`` or at the top level, and optionally
    ``scheduler/scheduler_config.json`` (or a top-level ``scheduler_config.json``). The architecture
    (`block_out_channels`, `layers_per_block`, `attention`, `norm_num_groups`) and, when the checkpoint holds a
    scheduler config, the schedule (`num_train_timesteps`, `beta_schedule`) are then taken from the
    checkpoint; values passed that differ from the checkpoint's are ignored with a logged warning. A
    checkpoint with C' != C channels is adapted so that the new network computes the pretrained one on the
    channel mean: the first convolution's weight is summed over its C' input channels (then split equally
    over the C new ones: for C = 1, a grayscale image replicated into RGB gives the same activations), and
    the last convolution's weight and bias are averaged over its C' output channels (then copied to each of
    the C new ones). A different `image_size` than the checkpoint's is accepted (the UNet is convolutional)
    if it is divisible by the UNet's total downsampling. Nothing is ever downloaded.
    """

    kind = "diffusion"

    def __init__(
        self,
        image_size: int = 64,
        channels: int = 1,
        block_out_channels: tuple[int, ...] = (32, 64, 64),
        layers_per_block: int = 1,
        attention: bool = True,
        norm_num_groups: int = 8,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "linear",
        sampling_steps: int = 100,
        noise_draws: int = 1,
        prediction_type: str = "epsilon",
        init_from: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        UNet2DModel, DDPMScheduler = _diffusers()
        if image_size < 1 or channels < 1:
            raise ValueError(f"image_size and channels must be >= 1; got {image_size}, {channels}")
        if noise_draws < 1:
            raise ValueError(f"noise_draws must be >= 1; got {noise_draws}")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}; got {prediction_type!r}")
        asked = {
            "block_out_channels": tuple(block_out_channels),
            "layers_per_block": layers_per_block,
            "attention": bool(attention),
            "norm_num_groups": norm_num_groups,
            "num_train_timesteps": num_train_timesteps,
            "beta_schedule": beta_schedule,
            "prediction_type": prediction_type,
        }
        if init_from is None:
            _check_architecture(**{k: asked[k] for k in _ARCHITECTURE})
            self.denoiser = UNet2DModel(**_unet_config(image_size, channels, **{k: asked[k] for k in _ARCHITECTURE}))
            scheduler_config: dict[str, Any] | None = None
        else:
            self.denoiser, scheduler_config = _load_pretrained(Path(init_from), channels, image_size)

        for module in self.denoiser.modules():
            if isinstance(module, nn.Conv2d):
                module.register_forward_pre_hook(_contiguous_inputs)
        cfg = self.denoiser.config
        self.image_size = image_size
        self.channels = channels
        self.block_out_channels = tuple(cfg.block_out_channels)
        self.layers_per_block = cfg.layers_per_block
        self.attention = _has_attention(cfg)
        self.norm_num_groups = cfg.norm_num_groups
        factor = 2 ** (len(self.block_out_channels) - 1)
        if image_size % factor:
            raise ValueError(
                f"image_size ({image_size}) must be divisible by 2**(len(block_out_channels) - 1) = {factor}, "
                "the UNet's total downsampling"
            )

        if scheduler_config is None:
            if num_train_timesteps < 1:
                raise ValueError(f"num_train_timesteps must be >= 1; got {num_train_timesteps}")
            if beta_schedule not in BETA_SCHEDULES:
                raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}; got {beta_schedule!r}")
            self.scheduler = DDPMScheduler(
                num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type=prediction_type
            )
        else:
            self.scheduler = DDPMScheduler.from_config(scheduler_config)
            if self.scheduler.config.prediction_type not in PREDICTION_TYPES:
                raise ValueError(
                    f"{init_from}: the scheduler predicts {self.scheduler.config.prediction_type!r}; only "
                    f"{PREDICTION_TYPES} checkpoints are supported"
                )
        self.prediction_type = self.scheduler.config.prediction_type
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.beta_schedule = self.scheduler.config.beta_schedule
        if not 1 <= sampling_steps <= self.num_train_timesteps:
            raise ValueError(
                f"sampling_steps must be in [1, num_train_timesteps = {self.num_train_timesteps}]; got {sampling_steps}"
            )
        self.sampling_steps = sampling_steps
        self.noise_draws = noise_draws
        if init_from is not None:
            self._warn_ignored(asked, scheduler_config is not None, init_from)

    def _warn_ignored(self, asked: dict[str, Any], schedule_from_checkpoint: bool, path: str | os.PathLike) -> None:
        """Log the architecture (and schedule) arguments that were set but lost to the checkpoint's."""
        defaults = {k: v.default for k, v in inspect.signature(DDPM.__init__).parameters.items()}
        names = _ARCHITECTURE + (_SCHEDULE if schedule_from_checkpoint else ())
        for name in names:
            value, used = asked[name], getattr(self, name)
            if value != defaults[name] and value != used:
                logger.warning("init_from=%s: ignoring %s=%r, the checkpoint has %r", path, name, value, used)

    # ------------------------------------------------------------------ GenerativeModel interface

    def players(self) -> list[Player]:
        return [Player("denoiser", "denoiser", True)]

    def replicas(self, player: str) -> int:
        if player != "denoiser":
            raise KeyError(f"{type(self).__name__} has no player {player!r}")
        return self.noise_draws

    def loss(self, player: str, nets: Mapping[str, nn.Module], real: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        """Per-example DDPM loss, shape (b,): each example repeated K times, t ~ U{0..T-1} and eps ~ N(0, I)
        drawn per row from torch's global RNG, loss = mean over the K rows of mean_pixels (eps - eps_theta)^2."""
        if player != "denoiser":
            raise KeyError(f"{type(self).__name__} has no player {player!r}")
        if real is None:
            raise ValueError("the denoiser update needs a real batch")
        rows = len(real) * self.noise_draws
        t = torch.randint(0, self.num_train_timesteps, (rows,), device=real.device)
        eps = torch.randn((rows, *real.shape[1:]), device=real.device, dtype=real.dtype)
        return self.denoising_loss(nets["denoiser"], real, t, eps)

    def denoising_loss(self, net: nn.Module, real: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """`loss` for given draws: `t` (b*K,) timesteps and `eps` (b*K, C, H, W) noises, row i*K + j belonging
        to example i. An empty batch runs the network on K all-zero dummy rows and returns their loss sliced
        to shape (0,): the attention layers cannot reshape a batch of 0, and Opacus needs a backward pass
        through its hooks. Backward through the slice sends exactly zero gradient, so the DP optimizer sees
        one all-zero per-example gradient, which adds nothing to the clipped sum."""
        b, k = len(real), self.noise_draws
        if t.shape != (b * k,) or eps.shape != (b * k, *real.shape[1:]):
            raise ValueError(
                f"need t of shape ({b * k},) and eps of shape ({b * k}, ...); got {tuple(t.shape)}, {tuple(eps.shape)}"
            )
        if b == 0:
            x0 = real.new_zeros((k, *real.shape[1:]))
            t0 = torch.zeros(k, dtype=torch.long, device=real.device)
            return self._row_losses(net, x0, t0, torch.zeros_like(x0)).view(1, k).mean(dim=1)[:0]
        x0 = real.repeat_interleave(k, dim=0)
        return self._row_losses(net, x0, t, eps).view(b, k).mean(dim=1)

    def _row_losses(self, net: nn.Module, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        x_t = self.scheduler.add_noise(x0, eps, t)  # moves the schedule to x0's device
        target = eps if self.prediction_type == "epsilon" else self.scheduler.get_velocity(x0, eps, t)
        return (target - net(x_t, t).sample).pow(2).flatten(1).mean(dim=1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, batch_size: int = 256) -> torch.Tensor:
        """`n` samples in [0, 1], (n, C, H, W) on the CPU, by ancestral sampling over `sampling_steps`
        timesteps in eval mode; start noise and every step's noise come from `generator` (deterministic
        given it) or, if None, from torch's global RNG."""
        if n < 0 or batch_size < 1:
            raise ValueError(f"need n >= 0 and batch_size >= 1; got {n}, {batch_size}")
        net = self.denoiser
        param = next(net.parameters())
        shape = (self.channels, self.image_size, self.image_size)
        scheduler = type(self.scheduler).from_config(self.scheduler.config)  # set_timesteps mutates it
        scheduler.set_timesteps(self.sampling_steps)
        timesteps = [int(t) for t in scheduler.timesteps]  # ints: the schedule may stay on the CPU
        noise_device = generator.device if generator is not None else param.device
        was_training = net.training
        net.eval()
        out = []
        bar = tqdm(
            total=-(-n // batch_size) * len(timesteps),
            desc="DDPM sampling",
            unit="step",
            mininterval=2.0,
            leave=False,
            disable=n < 64,
        )
        try:
            for start in range(0, n, batch_size):
                x = torch.randn((min(batch_size, n - start), *shape), generator=generator, device=noise_device)
                x = x.to(device=param.device, dtype=param.dtype)
                for t in timesteps:
                    x = scheduler.step(net(x, t).sample, t, x, generator=generator).prev_sample
                    bar.update()
                out.append(((x + 1.0) / 2.0).clamp(0.0, 1.0).float().cpu())
        finally:
            bar.close()
            net.train(was_training)
        return torch.cat(out) if out else torch.empty((0, *shape))


# ---------------------------------------------------------------------- helpers


def _contiguous_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Forward pre-hook on every Conv2d of the denoiser: make its input NCHW-contiguous. Diffusers'
    attention blocks return channels-last views ((b, hw, c) transposed and reshaped to (b, c, h, w)), and
    Opacus 1.6's per-sample Conv2d gradient (`opacus.utils.tensor_utils.unfold2d`, an `as_strided` that
    assumes NCHW strides) then silently returns wrong per-sample gradients for every convolution after the
    first attention layer. Opacus records the activations after pre-hooks run, so they are contiguous."""
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def _check_architecture(
    block_out_channels: tuple[int, ...], layers_per_block: int, attention: bool, norm_num_groups: int
) -> None:
    if not block_out_channels or any(int(c) < 1 for c in block_out_channels):
        raise ValueError(f"block_out_channels must be a non-empty sequence of positive ints; got {block_out_channels}")
    if layers_per_block < 1:
        raise ValueError(f"layers_per_block must be >= 1; got {layers_per_block}")
    if norm_num_groups < 1 or any(c % norm_num_groups for c in block_out_channels):
        raise ValueError(
            f"every block_out_channels entry must be divisible by norm_num_groups={norm_num_groups}; "
            f"got {block_out_channels}"
        )
    if attention and block_out_channels[-1] % ATTENTION_HEAD_DIM:
        raise ValueError(
            f"with attention, block_out_channels[-1] ({block_out_channels[-1]}) must be divisible by the head "
            f"dimension {ATTENTION_HEAD_DIM}"
        )


def _unet_config(
    image_size: int,
    channels: int,
    block_out_channels: tuple[int, ...],
    layers_per_block: int,
    attention: bool,
    norm_num_groups: int,
) -> dict[str, Any]:
    levels = len(block_out_channels)
    down = ["DownBlock2D"] * levels
    if attention:
        down[-1] = "AttnDownBlock2D"
    up = ["AttnUpBlock2D" if name.startswith("Attn") else "UpBlock2D" for name in reversed(down)]
    return dict(
        sample_size=image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        add_attention=attention,
        attention_head_dim=ATTENTION_HEAD_DIM,
        norm_num_groups=norm_num_groups,
    )


def _has_attention(cfg: Any) -> bool:
    return bool(cfg.add_attention) or any("Attn" in name for name in (*cfg.down_block_types, *cfg.up_block_types))


def _load_pretrained(path: Path, channels: int, image_size: int) -> tuple[nn.Module, dict[str, Any] | None]:
    """The checkpoint's UNet adapted to `channels` (see `DDPM`), and its scheduler config if it has one."""
    UNet2DModel, DDPMScheduler = _diffusers()
    layout = (
        "a diffusers UNet2DModel checkpoint: config.json and diffusion_pytorch_model.safetensors (or .bin) in "
        "unet/ or at the top level, optionally scheduler/scheduler_config.json (e.g. a downloaded google/ddpm-cifar10-32)"
    )
    if not path.is_dir():
        raise FileNotFoundError(f"init_from: no directory {path}; it should hold {layout}")
    if (path / "unet" / "config.json").is_file():
        subfolder: str | None = "unet"
    elif (path / "config.json").is_file():
        subfolder = None
    else:
        raise FileNotFoundError(f"init_from: {path} has neither unet/config.json nor config.json; it should hold {layout}")
    unet = UNet2DModel.from_pretrained(path, subfolder=subfolder, local_files_only=True)
    cfg = unet.config
    if cfg.class_embed_type is not None or cfg.num_class_embeds is not None:
        raise ValueError(f"init_from: {path} is a class-conditional UNet; an unconditional one is needed")
    if cfg.time_embedding_type != "positional":
        raise ValueError(f"init_from: {path} uses {cfg.time_embedding_type!r} time embeddings; DDPM needs 'positional'")
    if cfg.in_channels != cfg.out_channels:
        raise ValueError(
            f"init_from: {path} reads {cfg.in_channels} and predicts {cfg.out_channels} channels (a learned "
            "variance?); only noise predictors with as many output as input channels are supported"
        )
    if cfg.in_channels != channels:
        unet = _adapt_channels(unet, channels)
    unet.register_to_config(sample_size=image_size)
    unet.train()  # from_pretrained returns eval mode

    scheduler_config = None
    for sub in ("scheduler", None):
        where = path / sub if sub else path
        if (where / "scheduler_config.json").is_file():
            scheduler_config = DDPMScheduler.load_config(path, subfolder=sub, local_files_only=True)
            break
    return unet, scheduler_config


def _adapt_channels(unet: nn.Module, channels: int) -> nn.Module:
    """A copy of `unet` reading and predicting `channels` channels: conv_in summed over its input channels
    and split equally over the new ones, conv_out averaged over its output channels and copied to each."""
    UNet2DModel, _ = _diffusers()
    old = unet.config.in_channels
    state = unet.state_dict()
    w_in = state["conv_in.weight"].sum(dim=1, keepdim=True)
    state["conv_in.weight"] = w_in.repeat(1, channels, 1, 1) / channels
    state["conv_out.weight"] = state["conv_out.weight"].mean(dim=0, keepdim=True).repeat(channels, 1, 1, 1)
    state["conv_out.bias"] = state["conv_out.bias"].mean(dim=0, keepdim=True).repeat(channels)
    config = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    adapted = UNet2DModel.from_config({**config, "in_channels": channels, "out_channels": channels})
    adapted.load_state_dict(state)
    logger.info("adapted a %d-channel checkpoint to %d channels (conv_in summed, conv_out averaged)", old, channels)
    return adapted
