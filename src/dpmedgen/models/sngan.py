"""SNGAN: a DCGAN whose discriminator is spectrally normalised (Miyato et al., 2018, "Spectral
Normalization for Generative Adversarial Networks", ICLR), trainable with DP-SGD through Opacus.

Every discriminator convolution uses W_sn = W / sigma(W), where sigma(W) is the largest singular value of
W reshaped to a matrix (out_channels, in_channels * kh * kw), estimated by one power iteration per training
step. This bounds the Lipschitz constant of each layer and replaces normalisation layers (no GroupNorm):
the generator is the DCGAN one (`dcgan.Generator`), the discriminator mirrors `dcgan.Discriminator` with
LeakyReLU(0.1) and a spectrally normalised final layer.

Why not torch's spectral_norm
-----------------------------
Opacus rejects `torch.nn.utils.spectral_norm` and `torch.nn.utils.parametrizations.spectral_norm`: both
keep the power-iteration vectors u, v in buffers ("trainable layer with buffers", Opacus issue #646), and
Opacus' per-sample gradient hooks know neither the parametrised conv nor the old weight hook. So
`SpectralNormConv2d` does the normalisation itself: `weight` (and `bias`) are ordinary parameters, u and v
are plain tensor attributes (neither buffers nor parameters; moved by `_apply`, saved through the module's
extra state), and a custom Opacus grad sampler, registered lazily by `register_opacus_grad_samplers()`,
turns the per-sample gradients of the normalised weight into exact per-sample gradients of `weight`.

Why the per-sample gradients stay exact
---------------------------------------
As in torch's spectral_norm, u and v are constants of the forward pass: sigma = u^T W v, so
d sigma / dW = u v^T, and with W_sn = W / sigma the chain rule gives, for example i with
G_i = dL_i / dW_sn (the ordinary conv per-sample gradient, computed from the stored activations and
backprops like Opacus' conv sampler does),

    dL_i / dW = (G_i - <G_i, W_sn>_F u v^T) / sigma.

This is exactly what autograd computes for the whole batch (summed over i), split per example. It needs
the grad sampler, which runs in the backward hook, to see the same u, v (hence the same sigma) as the
forward pass that produced the activations. A GAN discriminator step calls the discriminator twice (real
batch, then fake batch) before one backward, so the power iteration must not run on every forward: it runs
at most once per weight value, on the first training-mode forward after the weight changed (tracked via
the weight's autograd version counter, which every in-place optimizer update bumps). Both forwards of a
step and the backward therefore share one u, v. The privacy analysis is unaffected: u, v are a function of
the (already privatised) weights only.

Use Opacus' default hooks mode (GradSampleModule); the functorch and expanded-weights modes are not
supported by this layer.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from dpmedgen.models.base import GANModel
from dpmedgen.models.dcgan import Generator, _init_weights, _num_doublings

__all__ = ["SpectralNormConv2d", "Discriminator", "SNGAN", "register_opacus_grad_samplers", "register_clipping_rule"]

#: Power iterations run at construction, as torch's parametrizations.spectral_norm does.
_INITIAL_POWER_ITERATIONS = 15


class SpectralNormConv2d(nn.Module):
    """Conv2d with spectrally normalised weight, Opacus-compatible.

    Forward: sigma = u^T W_mat v with W_mat = weight.view(out_channels, -1) and u, v treated as constants
    (no gradient through them, as in torch's spectral_norm); output = conv2d(x, weight / sigma, bias).

    Power iteration (`n_power_iterations` steps under no_grad) runs at most once per weight value: only in
    training mode, and only on the first forward after the weight changed (the weight's `_version`
    counter, bumped by every in-place update such as an optimizer step or `load_state_dict`'s copy).
    A GAN discriminator is called twice per step (real batch, then fake batch) before one backward, and
    Opacus computes per-sample gradients in backward hooks from stored activations using this layer's
    u, v at backward time: iterating on every forward would make the second forward (and the grad
    sampler) use a u, v, sigma different from the first forward's, so the per-sample gradients of the
    real half would be wrong. Eval mode never iterates.

    u (out_channels,) and v (in_channels * kh * kw,) are plain tensor attributes: not buffers (Opacus
    rejects trainable layers with buffers) and not parameters. `_apply` moves/casts them with the module
    (`.to`, `.double()`, `.cuda()`), and `get_extra_state`/`set_extra_state` save and restore them (plain
    tensors and a bool, loadable with `torch.load(..., weights_only=True)`), together with whether they are
    already iterated for the saved weight, so that a restored module resumes exactly.

    Only zero padding, dilation 1 and groups 1 are supported.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        bias: bool = True,
        n_power_iterations: int = 1,
        eps: float = 1e-12,
    ) -> None:
        super().__init__()
        if n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be >= 1; got {n_power_iterations}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = _pair(padding)
        self.n_power_iterations = n_power_iterations
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        # Plain attributes (see class docstring); set by reset_parameters.
        self.u: torch.Tensor = torch.empty(0)
        self.v: torch.Tensor = torch.empty(0)
        self._sn_key: tuple[int, int] | None = None  # (id, version) of the weight u, v were iterated for
        self.reset_parameters()

    # --- initialisation and power iteration -------------------------------------------------------

    def reset_parameters(self) -> None:
        """Xavier-uniform weight, zero bias, then random unit u, v (torch's global RNG) refined by 15 power
        iterations, as torch's parametrizations.spectral_norm initialises them."""
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        with torch.no_grad():
            w = self.weight.detach().flatten(1)
            self.u = F.normalize(w.new_empty(w.shape[0]).normal_(0, 1), dim=0, eps=self.eps)
            self.v = F.normalize(w.new_empty(w.shape[1]).normal_(0, 1), dim=0, eps=self.eps)
        self.power_iteration(_INITIAL_POWER_ITERATIONS)

    @torch.no_grad()
    def power_iteration(self, n: int | None = None) -> None:
        """Run `n` (default `n_power_iterations`) power-iteration steps on the current weight (u <- Wv/|Wv|,
        then v <- W^T u/|W^T u|, as torch's parametrizations.spectral_norm) and record that u, v are up to
        date for it. New tensors are assigned (no in-place update), so a graph built by an earlier forward
        keeps the u, v it used."""
        w = self.weight.detach().flatten(1)
        u, v = self.u, self.v
        with torch.autocast(device_type=w.device.type, enabled=False):  # keep u, v in the weight's dtype
            for _ in range(self.n_power_iterations if n is None else n):
                u = F.normalize(w @ v, dim=0, eps=self.eps)
                v = F.normalize(w.t() @ u, dim=0, eps=self.eps)
        self.u, self.v = u, v
        self._mark_synced()

    def _weight_key(self) -> tuple[int, int]:
        return (id(self.weight), self.weight._version)

    def _mark_synced(self) -> None:
        self._sn_key = self._weight_key()

    def is_synced(self) -> bool:
        """Whether u, v were already iterated for the current weight value."""
        return self._sn_key is not None and self._sn_key == self._weight_key()

    # --- forward ----------------------------------------------------------------------------------

    def sigma(self) -> torch.Tensor:
        """u^T W_mat v with the current u, v (differentiable w.r.t. the weight only)."""
        return torch.dot(self.u, torch.mv(self.weight.flatten(1), self.v))

    def normalized_weight(self) -> torch.Tensor:
        return self.weight / self.sigma()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and not self.is_synced() and not torch.is_inference_mode_enabled():
            self.power_iteration()
        return F.conv2d(x, self.normalized_weight(), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, bias={self.bias is not None}, n_power_iterations={self.n_power_iterations}"
        )

    # --- u, v follow the module: device/dtype, state_dict, copy/pickle -----------------------------

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        synced = self.is_synced()
        module = super()._apply(fn, recurse)
        with torch.no_grad():
            self.u, self.v = fn(self.u), fn(self.v)
        # A conversion may swap the weight tensor or reset its version: the value is the same.
        self._sn_key = self._weight_key() if synced else None
        return module

    def get_extra_state(self) -> dict[str, Any]:
        return {"u": self.u.detach().clone(), "v": self.v.detach().clone(), "synced": self.is_synced()}

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        # Called by load_state_dict after the weight has been loaded.
        u, v = state["u"], state["v"]
        if u.shape != self.u.shape or v.shape != self.v.shape:
            raise ValueError(
                f"spectral-norm state has u{tuple(u.shape)}, v{tuple(v.shape)}; "
                f"expected u{tuple(self.u.shape)}, v{tuple(self.v.shape)}"
            )
        self.u = u.detach().to(device=self.weight.device, dtype=self.weight.dtype).clone()
        self.v = v.detach().to(device=self.weight.device, dtype=self.weight.dtype).clone()
        self._sn_key = self._weight_key() if state.get("synced", False) else None

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_sn_key"] = None
        state["_sn_synced"] = self.is_synced()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        synced = state.pop("_sn_synced", False)
        super().__setstate__(state)
        self._sn_key = self._weight_key() if synced else None


def _spectral_norm_conv_grad_sample(
    layer: SpectralNormConv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> dict[nn.Parameter, torch.Tensor]:
    """Opacus grad sampler of SpectralNormConv2d (loss_reduction scaling is applied by Opacus to
    `backprops` beforehand).

    G_i = per-sample gradient w.r.t. W_sn = weight / sigma (unfolded input x backprops, as Opacus' conv
    sampler); dL_i/dweight = (G_i - <G_i, W_sn>_F u v^T) / sigma; dL_i/dbias = backprops summed over space.
    """
    x = activations[0].to(backprops.dtype)
    n = x.shape[0]
    ret: dict[nn.Parameter, torch.Tensor] = {}
    weight, bias = layer.weight, layer.bias
    if n == 0:  # empty (Poisson) batch, as Opacus' conv sampler
        if weight.requires_grad:
            ret[weight] = torch.zeros_like(weight, dtype=backprops.dtype).unsqueeze(0)
        if bias is not None and bias.requires_grad:
            ret[bias] = torch.zeros_like(bias, dtype=backprops.dtype).unsqueeze(0)
        return ret
    bp = backprops.reshape(n, layer.out_channels, -1)  # (n, out, L)
    if weight.requires_grad:
        cols = F.unfold(x, layer.kernel_size, padding=layer.padding, stride=layer.stride)  # (n, in*kh*kw, L)
        g = torch.einsum("nol,npl->nop", bp, cols)  # G_i, (n, out, in*kh*kw)
        w = weight.detach().flatten(1).to(backprops.dtype)
        u, v = layer.u.to(backprops.dtype), layer.v.to(backprops.dtype)
        sigma = torch.dot(u, torch.mv(w, v))
        inner = torch.einsum("nop,op->n", g, w) / sigma  # <G_i, W_sn>_F
        grad = (g - inner[:, None, None] * torch.outer(u, v)) / sigma
        ret[weight] = grad.reshape(n, *weight.shape)
    if bias is not None and bias.requires_grad:
        ret[bias] = bp.sum(dim=2)
    return ret


def _spectral_norm_conv_clipping_rule(module: SpectralNormConv2d, calls, b: int, k: int):
    """Fast-clipping rule (`dpmedgen.privacy.clipping`) of SpectralNormConv2d, exact like the Opacus sampler.

    With G_i = dL_i/dW_sn (the conv per-example gradient of the normalised weight), dL_i/dW = (G_i − c_i u v^T)/σ,
    c_i = <G_i, W_sn>_F. Its squared norm needs no G_i:

        ||dL_i/dW||² = (||G_i||² − 2 c_i m_i + c_i² |u|²|v|²) / σ²,   m_i = u^T G_i v,

    where ||G_i||² is the mixed ghost / instantiated conv norm, c_i = Σ_t g_t·(y_t − b) (the layer's own output
    without bias, since W_sn r_t = y_t − b) and m_i = Σ_t (u·g_t)(v·r_t) (v·r_t = a 1-channel convolution of
    the input). The clipped sum is (Σ_i w_i G_i − (Σ_i w_i c_i) u v^T) / σ.
    """
    from dpmedgen.privacy.clipping import (
        PerExample, bias_per_example, conv_weight_per_example, conv_weight_sum, row_scales,
    )

    w = module.weight.detach()
    u, v = module.u.to(w.dtype), module.v.to(w.dtype)
    sigma = torch.dot(u, torch.mv(w.flatten(1), v))
    train_w = module.weight.requires_grad
    train_b = module.bias is not None and module.bias.requires_grad
    dtype, device = calls[0].g.dtype, calls[0].g.device
    sq = torch.zeros(b, device=device, dtype=dtype)
    inner = torch.zeros(b, device=device, dtype=dtype)
    kept = None
    if train_w:
        g_sq, kept = conv_weight_per_example(module, calls, b, k)
        along = torch.zeros(b, device=device, dtype=dtype)
        v_kernel = v.view(1, *w.shape[1:])
        for call in calls:
            y = call.y if module.bias is None else call.y - module.bias.detach().view(1, -1, 1, 1)
            inner = inner + (call.g * y).flatten(1).sum(1).reshape(b, k).sum(1)
            gu = torch.einsum("rchw,c->rhw", call.g, u)
            xv = F.conv2d(call.x, v_kernel, None, module.stride, module.padding)[:, 0]
            along = along + (gu * xv).flatten(1).sum(1).reshape(b, k).sum(1)
        sq = sq + (g_sq - 2 * inner * along + inner.square() * u.dot(u) * v.dot(v)) / sigma.square()
    bias = bias_per_example(module, calls, b, k) if train_b else None
    if bias is not None:
        sq = sq + bias.square().sum(1)

    def clipped_sum(c: torch.Tensor) -> dict:
        out = {}
        if train_w:
            if kept is not None:
                s_sn = (c @ kept).view(w.shape[0], -1)
            else:
                s_sn = conv_weight_sum(module, calls, row_scales(c, calls, k)).flatten(1)
            out[module.weight] = ((s_sn - (c @ inner) * torch.outer(u, v)) / sigma).reshape(w.shape)
        if bias is not None:
            out[module.bias] = c @ bias
        return out

    return PerExample(sq, clipped_sum)


def register_clipping_rule() -> None:
    """Register SpectralNormConv2d's fast-clipping rule (idempotent; kept out of import time, as the Opacus one)."""
    from dpmedgen.privacy.clipping import register_rule

    register_rule(SpectralNormConv2d)(_spectral_norm_conv_clipping_rule)


def register_opacus_grad_samplers() -> None:
    """Register this module's per-sample gradient samplers with Opacus (idempotent). Call before Opacus
    wraps a model containing SpectralNormConv2d; kept out of import time because importing Opacus is slow."""
    from opacus.grad_sample import register_grad_sampler

    register_grad_sampler(SpectralNormConv2d)(_spectral_norm_conv_grad_sample)


class Discriminator(nn.Module):
    """`dcgan.Discriminator`'s topology (stride-2 4x4 convs per doubling, final 4x4 conv to one logit) with
    every conv spectrally normalised, no normalisation layers, LeakyReLU(0.1). Output: (b,) logits."""

    def __init__(self, image_size: int, width: int = 32, channels: int = 1, power_iterations: int = 1) -> None:
        super().__init__()
        n = _num_doublings(image_size)
        k = power_iterations
        layers: list[nn.Module] = [SpectralNormConv2d(channels, width, 4, 2, 1, n_power_iterations=k), nn.LeakyReLU(0.1)]
        ch = width
        for _ in range(n - 1):
            layers += [SpectralNormConv2d(ch, ch * 2, 4, 2, 1, n_power_iterations=k), nn.LeakyReLU(0.1)]
            ch *= 2
        layers += [SpectralNormConv2d(ch, 1, 4, 1, 0, n_power_iterations=k)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(x.shape[0])


class SNGAN(GANModel):
    """Unconditional SNGAN: DCGAN generator (DCGAN init) and spectrally normalised discriminator
    (Xavier-uniform init, see `SpectralNormConv2d.reset_parameters`); `width` is the channel count of
    the first D / last G layer, `power_iterations` the power-iteration steps per discriminator update."""

    def __init__(
        self, image_size: int = 64, latent_dim: int = 64, width: int = 32, channels: int = 1, power_iterations: int = 1
    ) -> None:
        super().__init__(
            generator=Generator(image_size, latent_dim, width, channels),
            discriminator=Discriminator(image_size, width, channels, power_iterations),
            latent_dim=latent_dim,
        )
        self.generator.apply(_init_weights)
