"""Fast per-example gradient clipping: mixed ghost norms and book-keeping, exact to float rounding.

DP-SGD (Abadi et al., 2016) needs, for per-example losses L_i(θ) of a sampled batch, the clipped sum

    S = Σ_i c_i ∇L_i,    c_i = min(1, C / (||∇L_i|| + 1e-6))        (Opacus' clip factor, to the digit)

This module computes S without materialising every per-example gradient where that is cheaper, and
without a second backward pass.

One formula for every layer with a weight matrix
------------------------------------------------
A linear layer, a convolution (on unfolded input patches) and a transposed convolution (on unfolded output
gradients) all compute, at positions t, y_t = W x_t (+ b) for a weight viewed as a (p × d) matrix. With the
output gradients g_{i,t} = ∂L_i/∂y_{i,t} of example i, summed over the rows and calls that belong to it,

    ∇_W L_i = Σ_t l_{i,t} r_{i,t}^T        (l = g, r = x for conv / linear; l = x, r = unfold(g) for conv^T)

and its squared norm can be had in two ways (Bu, Mao & Xu, "Scalable and Efficient Training of Large
Convolutional Neural Networks with Differential Privacy", NeurIPS 2022, "mixed ghost clipping"):

* ghost norm (Goodfellow 2015; Li et al. 2022):  ||∇_W L_i||² = Σ_{t,s} (l_t·l_s)(r_t·r_s),  cost ∝ T²(p + d);
* instantiation:  form the (p × d) matrix and take its norm,                               cost ∝ T p d;

and `layer_norms` takes the cheaper one per layer and batch (`ghost_is_cheaper`).

Book-keeping (Bu, Mao, Xu, Karypis, "Differentially Private Optimization on Large Model at Small Cost",
ICML 2023): one backward pass gives the output gradients g of every layer (`torch.autograd.grad` with the
layer outputs as inputs, so autograd never computes a weight gradient), the norms give the clip factors,
and then S_W = Σ_{i,t} (c_i l_{i,t}) r_{i,t}^T is one weight-gradient kernel per layer on output gradients
scaled by c (a matrix product for Linear), or Σ_i c_i ∇_W L_i where the norms instantiated ∇_W L_i (kept up
to `KEEP_INSTANTIATED` elements): no second backward pass.

Per-example parameters of other shapes (GroupNorm's scale and shift, biases) are instantiated: they are
small. A custom layer registers a rule with `register_rule` (e.g. the spectrally normalised convolution in
`dpmedgen.models.sngan`, registered by `dpmedgen.models.register_clipping_rules`).

The examples of a layer call are its rows: a call with b·k rows, where b = len(losses), gives rows
i·k .. i·k + k − 1 to example i (k = 1 for a plain batch; k = K for a loss that repeats each example K
times, e.g. DPDM's noise multiplicity). A layer may be called several times per loss (a GAN discriminator
on the real and on the fake half): its per-example gradient is the sum over calls, i.e. the positions of
all calls are concatenated. The per-example losses must satisfy the model contract (element i depends on
real example i only), as for Opacus.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 1))
>>> clipper = PerExampleClipper(net, max_grad_norm=1.0)
>>> x = torch.randn(5, 1, 8, 8)
>>> with clipper.capture():
...     losses = net(x).squeeze(1) ** 2
>>> norms = clipper.clipped_sum(losses)     # p.grad = Σ_i c_i ∇L_i for every parameter of net
>>> norms.shape
torch.Size([5])
>>> net[0].weight.grad.shape
torch.Size([4, 1, 3, 3])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LayerCall",
    "PerExampleClipper",
    "UnsupportedLayer",
    "ghost_is_cheaper",
    "register_rule",
    "supported_layers",
]

#: Opacus' guard in the clip factor C / (norm + 1e-6): kept so that both paths clip identically.
CLIP_EPS = 1e-6


class UnsupportedLayer(ValueError):
    """A trainable layer that no fast-clipping rule covers (use `privacy.dpsgd.clipping: opacus`)."""


@dataclass
class LayerCall:
    """One forward call of a layer inside a captured loss: its input, its output, and (after backward)
    the gradient of the summed loss with respect to the output."""

    x: torch.Tensor
    y: torch.Tensor
    version: int
    g: torch.Tensor | None = None


ClippedSum = Callable[[torch.Tensor], dict[nn.Parameter, torch.Tensor]]


@dataclass
class PerExample:
    """What a rule computes for one layer: the (b,) squared norms of each example's gradient over the
    layer's trainable parameters, and a function from clip factors c (b,) to {parameter: Σ_i c_i ∇_p L_i}."""

    sq_norms: torch.Tensor
    clipped_sum: ClippedSum


#: rule(module, calls, b, k) -> PerExample
Rule = Callable[[nn.Module, list[LayerCall], int, int], PerExample]

_RULES: dict[type[nn.Module], Rule] = {}


def register_rule(layer: type[nn.Module]) -> Callable[[Rule], Rule]:
    """Register the fast-clipping rule of `layer` (an exact type; subclasses need their own rule)."""

    def decorator(rule: Rule) -> Rule:
        _RULES[layer] = rule
        return rule

    return decorator


def supported_layers() -> tuple[type[nn.Module], ...]:
    return tuple(_RULES)


def rule_for(module: nn.Module) -> Rule:
    """The registered rule of `module`'s exact type."""
    return _RULES[type(module)]


# ------------------------------------------------------------------------------ the weight-matrix factors
def ghost_is_cheaper(t: int, p: int, d: int) -> bool:
    """Mixed ghost clipping's choice for a layer with T positions per example and a (p × d) weight:
    the two Gram matrices cost T²(p + d), instantiating ∇_W L_i costs T p d (per example)."""
    return t * t * (p + d) < t * p * d


def _per_example(rows: torch.Tensor, b: int, k: int) -> torch.Tensor:
    """(b·k, n, T) per-row factors -> (b, n, k·T) per-example factors (rows i·k .. i·k+k−1 are example i)."""
    if rows.shape[0] != b * k:
        raise RuntimeError(f"a captured layer call has {rows.shape[0]} rows; expected {b} examples x {k} rows")
    if k == 1:
        return rows
    n, t = rows.shape[1], rows.shape[2]
    return rows.reshape(b, k, n, t).transpose(1, 2).reshape(b, n, k * t)


def factor_sq_norms(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """||Σ_t l_t r_t^T||_F² per example for left (b, p, T) and right (b, d, T): by ghost norm
    <L^T L, R^T R> or by instantiating L R^T, whichever `ghost_is_cheaper` says."""
    _, p, t = left.shape
    d = right.shape[1]
    if ghost_is_cheaper(t, p, d):
        gram = torch.bmm(left.transpose(1, 2), left)
        gram.mul_(torch.bmm(right.transpose(1, 2), right))
        return gram.sum((1, 2))
    return torch.linalg.vector_norm(torch.bmm(left, right.transpose(1, 2)), dim=(1, 2)).square()


def _conv_factors(module: nn.Module, call: LayerCall) -> tuple[torch.Tensor, torch.Tensor]:
    """l = output gradients (rows, C_out, T), r = unfolded input patches (rows, C_in·kh·kw, T)."""
    x, padding = _padded_input(module, call.x)
    cols = F.unfold(
        x, module.kernel_size, dilation=_geometry(module)["dilation"], padding=padding, stride=module.stride
    )
    return call.g.flatten(2), cols


def _conv_transpose_factors(module: nn.ConvTranspose2d, call: LayerCall) -> tuple[torch.Tensor, torch.Tensor]:
    """conv^T is the adjoint of a conv in its input, so its weight (C_in, C_out, kh, kw) sees
    l = input (rows, C_in, T_in) and r = output gradients unfolded with the same geometry (rows, C_out·kh·kw, T_in)."""
    cols = F.unfold(call.g, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    return call.x.flatten(2), cols


def _linear_factors(module: nn.Linear, call: LayerCall) -> tuple[torch.Tensor, torch.Tensor]:
    """l = output gradients (rows, out, T), r = inputs (rows, in, T); T = the positions of a sequence input."""
    rows = call.x.shape[0]
    g = call.g.reshape(rows, -1, module.out_features).transpose(1, 2)
    return g, call.x.reshape(rows, -1, module.in_features).transpose(1, 2)


_FACTORS = {nn.Conv2d: _conv_factors, nn.ConvTranspose2d: _conv_transpose_factors, nn.Linear: _linear_factors}


def weight_factors(module: nn.Module, calls: list[LayerCall], b: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example (left (b, p, T), right (b, d, T)) factors of the weight gradient, concatenated over calls."""
    fn = _FACTORS.get(type(module), _conv_factors)  # a custom Conv2d-like layer reads as a convolution
    lefts, rights = [], []
    for call in calls:
        left, right = fn(module, call)
        lefts.append(_per_example(left, b, k))
        rights.append(_per_example(right, b, k))
    if len(calls) == 1:
        return lefts[0], rights[0]
    return torch.cat(lefts, dim=2), torch.cat(rights, dim=2)


def bias_per_example(module: nn.Module, calls: list[LayerCall], b: int, k: int) -> torch.Tensor:
    """(b, C) per-example bias gradients: output gradients summed over positions, rows and calls."""
    total = 0
    for call in calls:
        g = call.g
        rows = g.reshape(g.shape[0], -1, g.shape[-1]).sum(1) if isinstance(module, nn.Linear) else g.flatten(2).sum(2)
        total = total + rows.reshape(b, k, -1).sum(1)
    return total


def row_scales(c: torch.Tensor, calls: list[LayerCall], k: int) -> list[torch.Tensor]:
    """The clip factor of each row of each call, shaped to scale that call's output gradient."""
    per_row = c.repeat_interleave(k) if k > 1 else c
    return [per_row.reshape(-1, *([1] * (call.g.dim() - 1))) for call in calls]


def _geometry(module: nn.Module) -> dict:
    """Convolution geometry of a Conv2d-like layer (a custom layer without `dilation` / `padding_mode`
    attributes gets torch's defaults)."""
    return dict(
        stride=module.stride,
        padding=module.padding,
        dilation=getattr(module, "dilation", (1, 1)),
        padding_mode=getattr(module, "padding_mode", "zeros"),
        groups=getattr(module, "groups", 1),
    )


def _padded_input(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """The input as the convolution reads it, and the zero padding still to apply."""
    geo = _geometry(module)
    if geo["padding_mode"] == "zeros":
        return x, geo["padding"]
    return F.pad(x, module._reversed_padding_repeated_twice, mode=geo["padding_mode"]), (0, 0)


def conv_weight_sum(
    module: nn.Module, calls: list[LayerCall], scales: list[torch.Tensor], transposed: bool = False
) -> torch.Tensor:
    """Σ over calls of the ordinary weight gradient of a convolution for output gradients scaled per row:
    the same kernel (aten.convolution_backward) the non-private step uses."""
    geo = _geometry(module)
    total = None
    for call, scale in zip(calls, scales):
        x, padding = _padded_input(module, call.x) if not transposed else (call.x, geo["padding"])
        out_pad = module.output_padding if transposed else (0, 0)
        _, grad, _ = torch.ops.aten.convolution_backward(
            call.g * scale,
            x,
            module.weight,
            None,
            geo["stride"],
            padding,
            geo["dilation"],
            transposed,
            out_pad,
            geo["groups"],
            [False, True, False],
        )
        total = grad if total is None else total + grad
    return total


#: Per-example weight gradients instantiated for the norms are kept for the clipped sum (Σ_i c_i G_i, a
#: cheap reduction instead of another weight-gradient kernel) when they hold at most this many elements.
KEEP_INSTANTIATED = 2**25


def conv_weight_sq_norms(module: nn.Module, calls: list[LayerCall], b: int, k: int) -> torch.Tensor:
    """(b,) squared per-example norms of a Conv2d-like layer's weight gradient (`conv_weight_per_example`)."""
    return conv_weight_per_example(module, calls, b, k)[0]


def conv_weight_per_example(
    module: nn.Module, calls: list[LayerCall], b: int, k: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(b,) squared norms of the per-example gradients of a Conv2d-like layer's weight (as used in the
    forward), and those gradients (b, p·d) where they were instantiated and are small enough to keep
    (`KEEP_INSTANTIATED`), else None; by the cheaper of (mixed ghost clipping):

    * ghost norm on unfolded patches, when T²(p + d) < T p d (few output positions, e.g. deep layers);
    * instantiation by one grouped convolution (groups = rows: each row's weight gradient), which runs
      torch's convolution kernel instead of materialising the patches (9x the input for a 3x3 stride-1
      conv, the cost that dominates on a CPU).
    """
    t = k * sum(call.g.shape[2] * call.g.shape[3] for call in calls)
    p, d = module.weight.shape[0], module.weight[0].numel()
    if ghost_is_cheaper(t, p, d):
        return factor_sq_norms(*weight_factors(module, calls, b, k)), None
    geo = _geometry(module)
    per_example = None
    for call in calls:
        x, padding = _padded_input(module, call.x)
        rows, cin, h, w = x.shape
        grads = (
            torch.nn.grad.conv2d_weight(
                x.reshape(1, rows * cin, h, w),
                (rows * p, *module.weight.shape[1:]),
                call.g.reshape(1, rows * p, *call.g.shape[2:]),
                geo["stride"],
                padding,
                geo["dilation"],
                groups=rows,
            )
            .reshape(b, k, p * d)
            .sum(1)
        )
        per_example = grads if per_example is None else per_example + grads
    return per_example.square().sum(1), (per_example if per_example.numel() <= KEEP_INSTANTIATED else None)


def _train_flags(module: nn.Module) -> tuple[bool, bool]:
    return module.weight.requires_grad, module.bias is not None and module.bias.requires_grad


def conv_rule(module: nn.Conv2d, calls: list[LayerCall], b: int, k: int) -> PerExample:
    """Conv2d: mixed weight norms (`conv_weight_per_example`), instantiated bias; clipped sum from the kept
    per-example gradients, or else by the convolution's own weight-gradient kernel."""
    train_w, train_b = _train_flags(module)
    sq = torch.zeros(b, device=calls[0].g.device, dtype=calls[0].g.dtype)
    kept = None
    if train_w:
        weight_sq, kept = conv_weight_per_example(module, calls, b, k)
        sq = sq + weight_sq
    bias = bias_per_example(module, calls, b, k) if train_b else None
    if bias is not None:
        sq = sq + bias.square().sum(1)

    def clipped_sum(c: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        out = {}
        if train_w:
            if kept is not None:
                out[module.weight] = (c @ kept).reshape(module.weight.shape)
            else:
                out[module.weight] = conv_weight_sum(module, calls, row_scales(c, calls, k))
        return out | ({module.bias: c @ bias} if bias is not None else {})

    return PerExample(sq, clipped_sum)


def factor_rule(module: nn.Module, calls: list[LayerCall], b: int, k: int) -> PerExample:
    """ConvTranspose2d, Linear: ghost or instantiated weight norms from the (l, r) factors, instantiated
    bias; clipped sum by one matrix product (Linear) or the convolution kernel (ConvTranspose2d)."""
    train_w, train_b = _train_flags(module)
    sq = torch.zeros(b, device=calls[0].g.device, dtype=calls[0].g.dtype)
    if train_w:
        sq = sq + factor_sq_norms(*weight_factors(module, calls, b, k))
    bias = bias_per_example(module, calls, b, k) if train_b else None
    if bias is not None:
        sq = sq + bias.square().sum(1)

    def clipped_sum(c: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        out: dict[nn.Parameter, torch.Tensor] = {}
        if train_w:
            scales = row_scales(c, calls, k)
            if isinstance(module, nn.Linear):
                out[module.weight] = sum(
                    (call.g * s).reshape(-1, module.out_features).t() @ call.x.reshape(-1, module.in_features)
                    for call, s in zip(calls, scales)
                )
            else:
                out[module.weight] = conv_weight_sum(module, calls, scales, transposed=True)
        if bias is not None:
            out[module.bias] = c @ bias
        return out

    return PerExample(sq, clipped_sum)


def _check_layer(module: nn.Module) -> None:
    groups = getattr(module, "groups", 1)
    if groups != 1:
        raise UnsupportedLayer(f"{type(module).__name__} with groups={groups}: fast clipping supports groups=1 only")
    if isinstance(getattr(module, "padding", 0), str):
        raise UnsupportedLayer(f"{type(module).__name__} with padding={module.padding!r}: give the padding as integers")
    if isinstance(module, nn.ConvTranspose2d) and module.padding_mode != "zeros":
        raise UnsupportedLayer("ConvTranspose2d supports only zero padding")


register_rule(nn.Conv2d)(conv_rule)
register_rule(nn.ConvTranspose2d)(factor_rule)
register_rule(nn.Linear)(factor_rule)


# ------------------------------------------------------------------------------ GroupNorm (instantiated)
def _normalised_input(module: nn.GroupNorm, call: LayerCall) -> torch.Tensor:
    """x̂, the input normalised per example and group: from the recorded output, x̂ = (y − β) / γ (one
    elementwise pass), or recomputed from the input where some |γ| is too small to divide by."""
    gamma = module.weight.detach()
    if gamma.abs().min() > 1e-3:
        shape = (1, -1) + (1,) * (call.y.dim() - 2)
        beta = module.bias.detach().view(shape) if module.bias is not None else 0.0
        return (call.y - beta) / gamma.view(shape)
    return F.group_norm(call.x, module.num_groups, eps=module.eps)


def group_norm_rule(module: nn.GroupNorm, calls: list[LayerCall], b: int, k: int) -> PerExample:
    """Per-example (scale, shift) gradients, (b, C) each: Σ_positions g·x̂ and Σ_positions g (x̂: the
    input normalised per example and group, `_normalised_input`)."""
    params = [p for p in (module.weight, module.bias) if p is not None and p.requires_grad]
    per: dict[nn.Parameter, torch.Tensor] = {p: 0 for p in params}
    for call in calls:
        rows = call.g.shape[0]
        g = call.g.reshape(rows, module.num_channels, -1)
        if module.affine and module.weight.requires_grad:
            x_hat = _normalised_input(module, call).reshape(rows, module.num_channels, -1)
            per[module.weight] = per[module.weight] + torch.einsum("rcp,rcp->rc", g, x_hat).reshape(b, k, -1).sum(1)
        if module.affine and module.bias.requires_grad:
            per[module.bias] = per[module.bias] + g.sum(2).reshape(b, k, -1).sum(1)
    sq = torch.zeros(b, device=calls[0].g.device, dtype=calls[0].g.dtype)
    for grad in per.values():
        sq = sq + grad.square().sum(1)
    return PerExample(sq, lambda c: {p: c @ grad for p, grad in per.items()})


register_rule(nn.GroupNorm)(group_norm_rule)


# ------------------------------------------------------------------------------ the clipper
class PerExampleClipper:
    """Book-keeping per-example clipping for one network.

    Forward hooks on every module of `net` that holds trainable parameters record its input and output
    while `capture()` is active (and autograd records a graph); `clipped_sum(losses)` then runs one
    backward pass to the recorded outputs, computes each example's gradient norm over all parameters
    (mixed ghost norms), and writes Σ_i c_i ∇L_i into every parameter's `.grad`. It returns the norms.

    `rows_per_example` (k): rows each example occupies in the network's batch (see module docstring).
    A module with trainable parameters that no rule covers raises `UnsupportedLayer` at construction;
    parameters must be used only inside their module's forward (as Opacus also requires).
    """

    def __init__(self, net: nn.Module, max_grad_norm: float, rows_per_example: int = 1) -> None:
        if not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0; got {max_grad_norm}")
        self.net = net
        self.max_grad_norm = float(max_grad_norm)
        self.k = int(rows_per_example)
        self.layers: list[nn.Module] = []
        for name, module in net.named_modules():
            own = [p for p in module.parameters(recurse=False)]
            if not own:
                continue
            if type(module) not in _RULES:
                raise UnsupportedLayer(
                    f"{name or type(net).__name__} ({type(module).__name__}) has trainable parameters but no "
                    f"fast-clipping rule (supported: {', '.join(t.__name__ for t in _RULES)}); "
                    "set privacy.dpsgd.clipping: opacus"
                )
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                _check_layer(module)
            self.layers.append(module)
        self._calls: dict[nn.Module, list[LayerCall]] = {}
        self._active = False
        self._handles = [m.register_forward_hook(self._record) for m in self.layers]

    def _record(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not self._active or not torch.is_grad_enabled() or not output.requires_grad:
            return
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            return
        if not args or not isinstance(args[0], torch.Tensor):
            raise UnsupportedLayer(f"{type(module).__name__} was called without a positional input tensor")
        self._calls.setdefault(module, []).append(LayerCall(x=args[0].detach(), y=output, version=output._version))

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Record the layer calls of the forward pass that computes the per-example losses."""
        self._calls = {}
        self._active = True
        try:
            yield
        finally:
            self._active = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _trainable(self) -> list[nn.Parameter]:
        return [p for m in self.layers for p in m.parameters(recurse=False) if p.requires_grad]

    def clipped_sum(self, losses: torch.Tensor) -> torch.Tensor:
        """Set `.grad` of every trainable parameter to the clipped sum Σ_i c_i ∇L_i over the examples of
        `losses` (shape (b,), computed under `capture()`); return the per-example gradient norms (b,)."""
        calls, self._calls = self._calls, {}
        b = losses.shape[0]
        params = self._trainable()
        if b == 0:
            for p in params:
                p.grad = torch.zeros_like(p)
            return losses.new_zeros(0)
        flat = [(m, call) for m, cs in calls.items() for call in cs]
        for m, call in flat:
            if call.y._version != call.version:
                raise RuntimeError(
                    f"the output of {type(m).__name__} was modified in place after the layer ran; fast clipping "
                    "needs it unchanged (use out-of-place activations, e.g. inplace=False)"
                )
        grads = torch.autograd.grad(losses.sum(), [call.y for _, call in flat], allow_unused=True)
        for (_, call), g in zip(flat, grads):
            call.g = torch.zeros_like(call.y) if g is None else g.detach()
            call.y = call.y.detach()
        per_layer = [rule_for(m)(m, cs, b, self.k) for m, cs in calls.items()]
        sq = sum(r.sq_norms for r in per_layer)
        norms = sq.clamp_min(0).sqrt()
        c = (self.max_grad_norm / (norms + CLIP_EPS)).clamp(max=1.0)
        for p in params:
            p.grad = torch.zeros_like(p)
        for r in per_layer:
            for p, grad in r.clipped_sum(c).items():
                p.grad = grad.to(p.dtype).reshape(p.shape)
        return norms
