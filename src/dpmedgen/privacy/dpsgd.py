"""DP-SGD (Abadi et al., 2016) on every network that reads real data.

For an unconditional GAN only the discriminator reads real data; the generator is trained from the
discriminator's (privatised) outputs, so its weights and samples are post-processing and inherit the
discriminator's guarantee.

Mechanism per step: Poisson-sample the privacy units with rate q, compute per-unit gradients of the
player's per-example loss, clip each to L2 norm C (`max_grad_norm`), sum, add N(0, sigma^2 C^2 I), divide by
the expected batch size and take an optimizer step. The sensitivity of the clipped sum to adding or removing
one unit is C, so each step is the sampled Gaussian mechanism with noise multiplier sigma and rate q. The
part of a loss that reads no real data (`GenerativeModel.public_loss`: a GAN discriminator's loss on
generated images, from the current weights and fresh latents) is differentiated on its own and added to
the noisy update: it is a function of already released weights and public randomness, i.e.
post-processing, and changes nothing in the analysis. Its gradient is not clipped per example but, as a
whole, scaled to L2 norm at most C (`cap_norm`): the real half's contribution, a mean of gradients of norm
at most C, is at most C, and an uncapped generated half (per-example norms of 10-100 C early in training)
would otherwise swamp it, teaching the discriminator only to reject generated images (measured on
brain_phantom at epsilon 10: EfficientNet-FID 352 uncapped, 230 capped; non-private 199).

Adjacency: the study's one neighbouring relation (`dpmedgen.privacy.ledger.ADJACENCY`), *replace one unit by
another*, so that every mode (input perturbation has no add/remove guarantee) states epsilon for the same
relation, and the number of units N, from which q = 1 / ceil(N / batch) is computed, is public. Replacing
a unit changes the clipped sum by at most 2C, but, unlike add/remove, the sampled Gaussian's privacy loss
is not simply that of sensitivity 2C; the composition over `steps` steps is accounted with dp-accounting's
PLD accountant for `NeighboringRelation.REPLACE_ONE` (Poisson-sampled Gaussian, pessimistic
discretisation: an upper bound). sigma is calibrated so that this bound is within `CALIBRATION_TOLERANCE`
below the target epsilon at the target delta. Under add/remove the same sigma would give about half the
epsilon at small epsilon (e.g. 1.0 instead of 1.95 at sigma 2.64, q 0.046, 200 steps).

Clipping (`clipping`, config `privacy.dpsgd.clipping`): two implementations of the same mechanism, with the
same sampler, noise draw, normalisation and accountant, whose updates agree to float rounding (tested):
- ``fast`` (default): book-keeping with mixed ghost norms (`dpmedgen.privacy.clipping`): one backward pass to
  the layer outputs, per-example norms without materialising every per-example gradient, the clipped sum
  from the per-example gradients instantiated for the norms or by the layers' own weight-gradient kernels;
- ``opacus``: Opacus' GradSampleModule and DPOptimizer (per-sample gradients by hooks), the reference.

Units:
- ``patient`` (default): the dataset is the list of training patients; each sampled patient contributes
  exactly one uniformly drawn slice (`PatientSliceDataset`). Adjacency is replacing one patient, with all
  of their images, by another, so epsilon is per patient; changing one image is such a replacement, so the
  per-image epsilon is the same.
- ``image``: the dataset is the list of images; adjacency is replacing one image. A patient with k images
  is then protected only at group size k: the ledger reports the group-privacy conversion
  (kε, k·e^((k−1)ε)·δ) beside the per-image epsilon, as vacuous (infinite) when its delta reaches 1/N.

Accounting off the hot path: the noise calibration starts from a Gaussian-DP guess (a closed form),
and the epsilon written to the training log during a run is the PLD bound at the next of `LOG_ANCHORS`
step counts fixed in advance (a sound upper bound, since epsilon grows with the steps; exact at each anchor,
and the last anchor is the ledger's value). The time spent in the accountant is kept in `accounting_seconds`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from dpmedgen.privacy.base import ImageDataset, PatientSliceDataset, PrivacyMode
from dpmedgen.privacy.ledger import ADJACENCY, adjacency_statement, vacuous
from dpmedgen.privacy.mechanisms import group_privacy


def _opacus() -> SimpleNamespace:
    """Import Opacus on first use: it is slow to import (torch.distributed, sympy), and most jobs
    (generation, evaluation, plots, Snakemake's own process) never need it. Importing opacus also adds a
    handler to the *root* logger, which would duplicate every log line of the host program; keep the root
    logger as the host configured it."""
    root_handlers = list(logging.getLogger().handlers)
    import opacus
    from opacus import PrivacyEngine
    from opacus.accountants import PRVAccountant
    from opacus.data_loader import DPDataLoader
    from opacus.validators import ModuleValidator

    logging.getLogger().handlers = root_handlers
    from dpmedgen.models import register_clipping_rules, register_opacus_extensions

    register_opacus_extensions()
    register_clipping_rules()
    return SimpleNamespace(
        version=opacus.__version__,
        PrivacyEngine=PrivacyEngine,
        PRVAccountant=PRVAccountant,
        DPDataLoader=DPDataLoader,
        ModuleValidator=ModuleValidator,
    )


CLIPPING = ("fast", "opacus")
#: The calibrated sigma's epsilon lies in [target - tolerance, target] (Opacus' default tolerance).
CALIBRATION_TOLERANCE = 0.01
#: PLD value discretisation: the pessimistic estimate is within ~1e-4 of the finer 1e-4 grid's at the
#: study's settings, at a tenth of the cost (0.03-0.3 s per evaluation).
PLD_DISCRETIZATION = 1e-3
#: Step counts (fractions of the planned steps) at which the training log's epsilon is computed exactly.
LOG_ANCHORS = (0.25, 0.5, 0.75, 1.0)


def dpsgd_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """An upper bound on epsilon at `delta` after the sampled Gaussian mechanisms of `history`
    ((noise multiplier, sample rate, steps) entries, as Opacus' accountants keep it) under replace-one
    adjacency: dp-accounting's PLD accountant (pessimistic estimate); inf where it fails.

    >>> round(dpsgd_epsilon([(2.64, 0.0457, 200)], 1e-5), 1)
    1.9
    """
    import dp_accounting
    from dp_accounting.pld import PLDAccountant

    accountant = PLDAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE,
        value_discretization_interval=PLD_DISCRETIZATION,
    )
    try:
        for sigma, q, steps in history:
            gaussian = dp_accounting.GaussianDpEvent(float(sigma))
            accountant.compose(dp_accounting.PoissonSampledDpEvent(float(q), gaussian), int(steps))
        return float(accountant.get_epsilon(delta))
    except (ValueError, RuntimeError, OverflowError, FloatingPointError):
        return math.inf


def gdp_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier that the central-limit approximation of Gaussian DP (Bu, Dong, Long & Su,
    "Deep Learning with Gaussian Differential Privacy", HDSR 2020) gives for the target: a cheap first guess.

    After T Poisson-subsampled Gaussian steps the composition is approximately mu-GDP with
    mu = q sqrt(T (e^(1/sigma^2) - 1)), and mu-GDP is (eps, delta(eps))-DP for
    delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2) (Dong, Roth & Su 2022, Cor. 2.13).
    Solve delta(target) = delta for mu, then invert mu(sigma). This is the add/remove relation's guess; replace-
    one needs more noise, which `calibrate_noise_multiplier` finds from here."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    def excess(mu: float) -> float:
        return (
            norm.cdf(-target_epsilon / mu + mu / 2)
            - math.exp(target_epsilon) * norm.cdf(-target_epsilon / mu - mu / 2)
            - delta
        )

    mu = brentq(excess, 1e-6, 200.0, xtol=1e-12)
    return 1.0 / math.sqrt(math.log1p(mu**2 / (sample_rate**2 * steps)))


def calibrate_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, tolerance: float = CALIBRATION_TOLERANCE
) -> float:
    """A noise multiplier sigma whose replace-one epsilon (`dpsgd_epsilon`) is in [target - tolerance, target]:
    Opacus' `get_noise_multiplier` criterion, reached with fewer accountant evaluations.

    A bracket [lo, hi] with eps(lo) > target >= eps(hi) is grown from 1.5 times the (add/remove) Gaussian-DP
    guess (`gdp_noise_multiplier`), then the Illinois variant of regula falsi on eps(sigma) - target shrinks
    it until eps(hi) >= target - tolerance, and hi is returned: typically 4-6 evaluations instead of the
    12-15 of a bisection.
    """
    guess = 1.5 * gdp_noise_multiplier(target_epsilon, delta, sample_rate, steps)

    def f(sigma: float) -> float:
        return dpsgd_epsilon([(sigma, sample_rate, steps)], delta) - target_epsilon

    hi = 1.05 * guess
    f_hi = f(hi)
    while f_hi > 0:
        hi *= 1.25
        f_hi = f(hi)
        if hi > 1e6:
            raise ValueError(f"dpsgd: no noise multiplier calibrates to epsilon {target_epsilon}")
    if f_hi >= -tolerance:
        return hi
    lo = 0.95 * min(guess, hi)
    f_lo = f(lo)
    while f_lo <= 0:
        if f_lo >= -tolerance:
            return lo
        hi, f_hi = lo, f_lo
        lo *= 0.8
        f_lo = f(lo)
        if lo < 1e-4:
            raise ValueError(f"dpsgd: no noise multiplier calibrates to epsilon {target_epsilon}")
    side = 0
    for _ in range(100):
        if f_hi >= -tolerance:
            return hi
        mid = hi - f_hi * (hi - lo) / (f_hi - f_lo) if math.isfinite(f_lo) else (lo + hi) / 2
        if not lo < mid < hi:
            mid = (lo + hi) / 2
        f_mid = f(mid)
        if f_mid > 0:
            lo, f_lo = mid, f_mid
            if side == -1:
                f_hi /= 2  # Illinois: halve the weight of the end that stayed
            side = -1
        else:
            hi, f_hi = mid, f_mid
            if side == 1:
                f_lo /= 2
            side = 1
    raise RuntimeError(f"dpsgd: noise calibration did not converge for epsilon {target_epsilon}")


def cap_norm(grads: dict[nn.Parameter, torch.Tensor], max_norm: float) -> dict[nn.Parameter, torch.Tensor]:
    """`grads` scaled by min(1, max_norm / ||grads||) (one L2 norm over all tensors): the public half of a
    private player's gradient is bounded like one clipped real example, so neither half swamps the other.

    >>> p = nn.Parameter(torch.zeros(2))
    >>> cap_norm({p: torch.tensor([3.0, 4.0])}, 1.0)[p]
    tensor([0.6000, 0.8000])
    """
    norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads.values()))) if grads else 0.0
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return {p: g * scale for p, g in grads.items()} if scale < 1.0 else grads


class NoisyStep:
    """The DP optimizer of the fast path: p.grad holds the clipped sum; `step` adds N(0, (sigma C)^2), divides
    by the expected batch size, adds the public gradient, records the step with the accountant and steps the
    wrapped optimizer. The noise is drawn exactly as Opacus' DPOptimizer draws it (parameter order, one
    `torch.normal` per parameter from `generator`), so both paths consume the same noise stream."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        generator: torch.Generator,
        public_grads: Callable[[], dict[nn.Parameter, torch.Tensor]],
        on_step: Callable[[], None],
    ) -> None:
        self.original_optimizer = optimizer
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.generator = generator
        self._public_grads = public_grads
        self._on_step = on_step
        #: white-box audit canaries (`dpmedgen.privacy.audit.GradientCanaries`), only in an audit run
        self.canaries = None

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for group in self.original_optimizer.param_groups for p in group["params"] if p.requires_grad]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.original_optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        public = self._public_grads()
        params = self.params
        if self.canaries is not None:
            self.canaries.add_to_clipped_sum(params)
        for p in params:
            clipped = p.grad if p.grad is not None else torch.zeros_like(p)
            if std > 0:
                noise = torch.normal(0, std, size=p.shape, device=p.device, generator=self.generator)
                clipped = clipped + noise
            p.grad = clipped
        if self.canaries is not None:
            self.canaries.observe(params)
        for p in params:
            p.grad = p.grad / self.expected_batch_size
            if p in public:
                p.grad = p.grad + public[p]
        self._on_step()
        self.original_optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.original_optimizer.load_state_dict(state)


class _OpacusStep:
    """Opacus' DPOptimizer with the public gradient added after its clip / noise / scale (`pre_step`)."""

    def __init__(self, dp_optimizer, public_grads: Callable[[], dict[nn.Parameter, torch.Tensor]]) -> None:
        self.dp_optimizer = dp_optimizer
        self.original_optimizer = dp_optimizer.original_optimizer
        self._public_grads = public_grads

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dp_optimizer, name)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dp_optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        public = self._public_grads()
        if self.dp_optimizer.pre_step():
            for p in self.dp_optimizer.params:
                if p in public:
                    p.grad = p.grad + public[p]
            self.original_optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.original_optimizer.load_state_dict(state)


class DPSGD(PrivacyMode):
    name = "dpsgd"

    def __init__(
        self,
        *,
        target_epsilon: float,
        delta: float,
        seed: int | None = None,
        max_grad_norm: float = 1.0,
        unit: str = "patient",
        clipping: str = "fast",
    ) -> None:
        super().__init__(target_epsilon=target_epsilon, delta=delta, seed=seed, unit=unit)
        if not math.isfinite(self.target_epsilon) or self.target_epsilon <= 0:
            raise ValueError(f"dpsgd needs a finite target epsilon > 0; got {target_epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"dpsgd needs 0 < delta < 1; got {delta}")
        if not (math.isfinite(float(max_grad_norm)) and float(max_grad_norm) > 0):
            raise ValueError(f"dpsgd needs a finite max_grad_norm > 0; got {max_grad_norm}")
        if clipping not in CLIPPING:
            raise ValueError(f"dpsgd: clipping must be one of {CLIPPING}; got {clipping!r}")
        self.max_grad_norm = float(max_grad_norm)
        self.clipping = clipping
        self.accountant = None  # opacus PRVAccountant (the PrivacyEngine's under clipping=opacus)
        self.noise_multiplier: float | None = None
        self.sample_rate: float | None = None
        self.planned_steps = 0
        self.n_units = 0
        self.max_images_per_patient = 0
        self.n_patients = 0
        self.private_players: list[str] = []
        self.accounting_seconds = 0.0
        self._clippers: dict[str, Any] = {}
        self._public: dict[str, dict[nn.Parameter, torch.Tensor]] = {}
        self._epsilon_cache: dict[int, float] = {}

    # ------------------------------------------------------------------------------------------ set-up
    def attach(self, model, nets, optimizers, data, batch_size, steps):
        """Make every player that reads real data private, all under one accountant.

        Each private player gets its own Poisson-sampled loader and its own DP optimizer, all with the same
        noise multiplier sigma and sample rate q. Per training step there are m = (number of private
        players) subsampled Gaussian mechanisms; the accountant composes all m * steps of them, and sigma is
        calibrated so that this composition meets the target (epsilon, delta).
        """
        opacus = _opacus()
        # Opacus' hooks fire on the discriminator's input, which (real images) needs no gradient: harmless.
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        private = [p for p in model.players() if p.reads_real_data]
        self.private_players = [p.name for p in private]
        self.max_images_per_patient = int(data.images_per_patient().max())
        self.n_patients = data.n_patients
        self.n_units = data.n_patients if self.unit == "patient" else data.n_images
        if self.delta >= 1.0 / self.n_units:
            raise ValueError(
                f"delta={self.delta:g} is not below 1/N = 1/{self.n_units} training {self.unit}s; "
                "a delta that large permits releasing a whole record. Lower `privacy.delta` in config.yaml."
            )
        # Opacus' DPDataLoader samples each unit with probability 1 / len(loader); account for exactly that.
        self.sample_rate = 1.0 / math.ceil(self.n_units / min(batch_size, self.n_units))
        self.planned_steps = steps * len(private)
        with self._timed():
            self.noise_multiplier = calibrate_noise_multiplier(
                self.target_epsilon, self.delta, self.sample_rate, self.planned_steps
            )
        self._noise_generator = torch.Generator().manual_seed(self.rng_seed("noise"))
        self._slice_datasets = {}
        if self.clipping == "opacus":
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Secure RNG turned off")  # stated in the ledger instead
                engine = opacus.PrivacyEngine(accountant="prv")
            self.accountant = engine.accountant  # records the steps; epsilon comes from `dpsgd_epsilon`
        else:
            engine = None
            self.accountant = opacus.PRVAccountant()  # a step recorder; epsilon comes from `dpsgd_epsilon`
        loaders = {}
        for i, p in enumerate(private):
            loader = self._loader(data, batch_size, i, p.name)
            if engine is not None:
                nets[p.name], optimizers[p.name], loaders[p.name] = self._make_opacus(
                    engine, p.name, nets, optimizers, loader
                )
            else:
                nets[p.name], optimizers[p.name], loaders[p.name] = self._make_fast(
                    model, p.name, nets, optimizers, loader
                )
            if not math.isclose(loaders[p.name].sample_rate, self.sample_rate):
                raise RuntimeError(f"Opacus samples at {loaders[p.name].sample_rate}, accounted {self.sample_rate}")
        return nets, optimizers, loaders

    def _loader(self, data, batch_size: int, index: int, name: str) -> DataLoader:
        if self.unit == "patient":
            dataset = PatientSliceDataset(data, seed=self.rng_seed("slices", index))
            self._slice_datasets[name] = dataset
        else:
            dataset = ImageDataset(data)
        return DataLoader(
            dataset,
            batch_size=min(batch_size, self.n_units),
            generator=torch.Generator().manual_seed(self.rng_seed("sampling", index)),
        )

    def _make_opacus(self, engine, name, nets, optimizers, loader):
        opacus = _opacus()
        errors = opacus.ModuleValidator.validate(nets[name], strict=False)
        if errors:
            raise ValueError(f"the {name} network cannot be trained with DP-SGD (clipping: opacus): {errors}")
        module, dp_optimizer, dp_loader = engine.make_private(
            module=nets[name],
            optimizer=optimizers[name],
            data_loader=loader,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            poisson_sampling=True,
            # Per-unit gradients of the *summed* loss are exact even for an empty Poisson batch (a mean
            # over zero examples would be NaN). The update is still the standard estimator: the optimizer
            # divides the noisy clipped sum by the expected batch size (loss_reduction="mean" below).
            loss_reduction="sum",
            noise_generator=self._noise_generator,
        )
        dp_optimizer.loss_reduction = "mean"
        return module, _OpacusStep(dp_optimizer, lambda: self._public.pop(name, {})), dp_loader

    def _make_fast(self, model, name, nets, optimizers, loader):
        from dpmedgen.privacy.clipping import PerExampleClipper

        opacus = _opacus()
        self._clippers[name] = PerExampleClipper(nets[name], self.max_grad_norm, rows_per_example=model.replicas(name))
        # Opacus' own sampler (each unit independently with q = 1 / len(loader)) and its expected batch size.
        dp_loader = opacus.DPDataLoader.from_data_loader(loader)
        expected_batch_size = int(len(loader.dataset) * dp_loader.sample_rate)
        optimizer = NoisyStep(
            optimizers[name],
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=expected_batch_size,
            generator=self._noise_generator,
            public_grads=lambda: self._public.pop(name, {}),
            on_step=lambda: self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate),
        )
        return nets[name], optimizer, dp_loader

    # ------------------------------------------------------------------------------------------ a step
    def public_loss(self, model, player, nets, batch_size):
        """A private player's public part is differentiated here, on its own (outside Opacus' hooks and the
        clipper), and kept for the optimizer to add after the noise; the engine gets it detached."""
        if player.name not in self.private_players:
            return super().public_loss(model, player, nets, batch_size)
        net = nets[player.name]
        hooks = hasattr(net, "disable_hooks")
        if hooks:
            net.disable_hooks()
        try:
            public = model.public_loss(player.name, nets, batch_size)
            if public is not None:
                params = [p for p in net.parameters() if p.requires_grad]
                grads = torch.autograd.grad(public, params, allow_unused=True)
                kept = {p: g for p, g in zip(params, grads) if g is not None}
                self._public[player.name] = cap_norm(kept, self.max_grad_norm)
        finally:
            if hooks:
                net.enable_hooks()
        return None if public is None else public.detach()

    def player_loss(self, model, player, nets, real, batch_size):
        clipper = self._clippers.get(player.name)
        if clipper is None:
            return super().player_loss(model, player, nets, real, batch_size)
        with clipper.capture():
            return super().player_loss(model, player, nets, real, batch_size)

    def backward(self, player, net, losses, public):
        """Private players: the clipped sum of per-unit gradients in `.grad` (fast: book-keeping; opacus: per-
        sample gradients of the summed loss, clipped by its optimizer); the public part is added in `step`."""
        if player.name not in self.private_players:
            return super().backward(player, net, losses, public)
        if player.name in self._clippers:
            self._clippers[player.name].clipped_sum(losses)
        else:
            losses.sum().backward()

    def reduce_loss(self, player, losses):
        """Private players: the per-example losses are summed (see `attach`); others: the mean."""
        return losses.sum() if player.name in self.private_players else super().reduce_loss(player, losses)

    def clips_per_example(self, player) -> bool:
        return player.name in self.private_players

    def protects(self, player) -> bool:
        return player.name in self.private_players

    def before_step(self, model, player, net) -> None:
        k = model.replicas(player.name)
        if k > 1 and player.name in self.private_players and self.clipping == "opacus":
            from dpmedgen.models.ddpm import fold_replicas  # per-row -> per-example gradients (DPDM)

            fold_replicas(net, k)

    # ------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        if self.accountant is None:
            return {}
        return {
            "history": [list(h) for h in self.accountant.history],
            "noise_generator": self._noise_generator.get_state(),
            "slice_rngs": {name: ds.rng.bit_generator.state for name, ds in self._slice_datasets.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.accountant is None:
            raise RuntimeError("dpsgd: load_state_dict needs attach() first")
        self.accountant.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        self._noise_generator.set_state(state["noise_generator"])
        for name, rng_state in state["slice_rngs"].items():
            self._slice_datasets[name].rng.bit_generator.state = rng_state

    # ------------------------------------------------------------------------------------------ accounting
    @contextlib.contextmanager
    def _timed(self):
        """Add the time spent inside to `accounting_seconds`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.accounting_seconds += time.perf_counter() - t0

    @property
    def steps_taken(self) -> int:
        return sum(n for _, _, n in self.accountant.history) if self.accountant is not None else 0

    def _epsilon_after(self, steps: int) -> float:
        """Epsilon after `steps` mechanisms at the calibrated sigma and q (cached per step count)."""
        if steps not in self._epsilon_cache:
            with self._timed():
                self._epsilon_cache[steps] = dpsgd_epsilon([(self.noise_multiplier, self.sample_rate, steps)], self.delta)
        return self._epsilon_cache[steps]

    def epsilon_spent(self) -> float:
        """The bound for the steps taken so far (exact; every step of a run has the same sigma and q)."""
        if self.accountant is None or not self.accountant.history:
            return 0.0
        if len(self.accountant.history) > 1:  # not produced by this class; recompute from the history as is
            with self._timed():
                return dpsgd_epsilon(self.accountant.history, self.delta)
        sigma, q, steps = self.accountant.history[0]
        if (sigma, q) != (self.noise_multiplier, self.sample_rate):
            raise RuntimeError(f"dpsgd: accountant history {self.accountant.history} does not match sigma, q")
        return self._epsilon_after(int(steps))

    def epsilon_for_log(self) -> float:
        """An upper bound for the training log: the epsilon at the smallest of the `LOG_ANCHORS` step
        counts that is >= the steps taken (epsilon grows with the steps), computed once per anchor."""
        taken = self.steps_taken
        if taken == 0:
            return 0.0
        anchors = sorted({max(1, math.ceil(f * self.planned_steps)) for f in LOG_ANCHORS} | {self.planned_steps})
        anchor = next((a for a in anchors if a >= taken), taken)
        return self._epsilon_after(anchor)

    def ledger(self) -> dict[str, Any]:
        epsilon = self.epsilon_spent()
        if epsilon > self.target_epsilon * (1 + 1e-9):
            raise RuntimeError(f"DP-SGD spent epsilon {epsilon:.4f} > target {self.target_epsilon}")
        if self.unit == "patient":
            # Changing one image of a patient replaces that patient's record: the per-image bound is the same.
            per_patient = {
                "epsilon_per_patient": epsilon,
                "delta_per_patient": self.delta,
                "epsilon_per_image": epsilon,
                "delta_per_image": self.delta,
                "image_conversion": "changing one image replaces one patient's record: the same bound",
            }
        else:
            eps_p, delta_p = vacuous(*group_privacy(epsilon, self.delta, self.max_images_per_patient), self.n_patients)
            per_patient = {
                "epsilon_per_image": epsilon,
                "epsilon_per_patient": eps_p,
                "delta_per_patient": delta_p,
                "patient_conversion": f"group privacy over k = {self.max_images_per_patient} images "
                "(Dwork & Roth 2014, Thm 2.2); Infinity means the conversion is vacuous (its delta reaches 1/N)",
            }
        return per_patient | {
            "mechanism": "dpsgd",
            "guarantee": "formal",
            "unit": self.unit,
            "adjacency": ADJACENCY,
            "adjacency_statement": adjacency_statement(self.unit),
            "epsilon_spent": epsilon,
            "epsilon_target": self.target_epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps_taken,
            "max_grad_norm": self.max_grad_norm,
            "clipping": self.clipping,
            "n_units": self.n_units,
            "max_images_per_patient": self.max_images_per_patient,
            "sampling": "poisson"
            + (", one uniformly drawn slice per sampled patient" if self.unit == "patient" else ""),
            "accountant": "dp_accounting.pld.PLDAccountant (REPLACE_ONE, Poisson-sampled Gaussian, pessimistic "
            f"estimate at discretisation {PLD_DISCRETIZATION}: an upper bound)",
            "protected_networks": list(self.private_players),
            "noise_source": "torch.Generator / numpy Generator streams seeded from the mode's random root (see "
            "`randomness`; not cryptographically secure generators, as Opacus with secure_mode off)",
            "steps_per_network": self.steps_taken // max(len(self.private_players), 1),
        }
