"""One training loop shared by every model and privacy mode.

The model names its networks ("players") and supplies per-example losses (`dpmedgen.models.base`); the
privacy mode decides how real data reaches each player and how its gradient becomes an update
(`PrivacyMode.attach`). This loop only runs the players in order, logs, checkpoints, and stops loudly on
divergence.

Epochs and checkpoints
----------------------
An epoch is one pass of the privacy mode's data loader: ceil(N / batch) steps for shuffled batches, 1/q
steps for Poisson sampling (each step samples every unit with probability q), and ceil(N / batch) steps
when no loader exists (the functional mechanism reads no data during training). Training lasts exactly
`steps` optimizer steps per player; the last epoch may be cut short. The CSV log has one row per epoch.

The log is a released file, so it carries no statistic of real training data outside the privacy ledger:
for a network that the privacy mode protects while it reads real data (`PrivacyMode.protects`: DP-SGD), it
holds only the network's loss on generated data (`loss_<network>_generated`, the public part of its loss,
from released weights and fresh latents) and no `real_batch` (the Poisson batch size is a count of real
patients). Other networks' losses (`loss_<network>`) are post-processing: of released weights (a DP-SGD
GAN's generator), of a release (input perturbation, the functional mechanism), or of a run that claims
no guarantee.

The `epsilon_spent` column is an upper bound on the privacy mode's epsilon spent so far (`epsilon_for_log`:
DP-SGD reports the PRV bound at the next of a few step counts fixed in advance, exact after the last step);
it is filled every max(1, epochs // 50) epochs and after the last one (blank in between).

Averaged weights
----------------
With `TrainConfig.ema_decay` > 0 the networks a model samples with (`AVERAGED_ROLES`: generators and the
denoiser) are released as the exponential moving average of their iterates (:class:`ParameterAverage`),
copied into the model after the last step, before the final grid; the other networks keep their last
iterate. It is post-processing of the iterates, which every privacy mode already pays for.

Every `checkpoint_every` epochs the full training state is written atomically to `resume_path`: model,
optimizers, parameter averages, the privacy mode's state (accountant history, noise and sampling generators) and random root
(a secret in the default setting: this private file is the only place it is kept, and it is removed when
the run completes), and every RNG (python, numpy, torch, loaders). Checkpoints fall on epoch boundaries, where no data-loader iterator is
alive, so a run killed at any point and started again with the same arguments resumes from its last
checkpoint and ends with bit-identical weights and the same epsilon as an uninterrupted run (on CPU,
where the engine switches on deterministic algorithms). A checkpoint written with different settings
(another run, config, data or checkpoint layout) is ignored with a warning, and training starts over.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from dpmedgen.io import load_torch, write_atomic

from dpmedgen.models.base import GenerativeModel, Player
from dpmedgen.privacy.base import PrivacyMode, TrainingData

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 3  # 3: resume checkpoints carry the parameter averages
ROLES = ("generator", "discriminator", "denoiser")
DEFAULT_LR = {"generator": 2e-4, "discriminator": 2e-4, "denoiser": 2e-4}
#: Roles of the networks a model samples with: the ones `TrainConfig.ema_decay` averages.
AVERAGED_ROLES = ("generator", "denoiser")


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Training settings (config.yaml `train`, optionally overridden per model under `models.<m>.train`).

    steps: optimizer steps per player. class_generators: `train.run` trains one model per class label
    (unconditional models; the steps are shared between them); the engine itself ignores it.
    lr: Adam learning rate per player role. checkpoint_every /
    grid_every: epochs between resume checkpoints / sample grids (0 = never; both are also written after
    the last step). amp: bfloat16 autocast on CUDA for players that no privacy mode clips per example
    (Opacus' per-sample gradients stay in float32); ignored on CPU. ema_decay: the weights released for
    sampling (generators, denoisers) are the exponential moving average of their iterates with this decay
    (:class:`ParameterAverage`; 0 = the last iterate).
    """

    steps: int = 600
    batch_size: int = 32
    lr: dict[str, float] = field(default_factory=dict)
    beta1: float = 0.5
    beta2: float = 0.999
    checkpoint_every: int = 10
    grid_every: int = 0
    amp: bool = True
    seed: int = 0
    device: str = "auto"
    threads: int = 1
    class_generators: bool = False
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.steps < 1 or self.batch_size < 2 or self.checkpoint_every < 0 or self.grid_every < 0:
            raise ValueError(
                f"train config needs steps >= 1, batch_size >= 2, checkpoint_every >= 0, grid_every >= 0; got {asdict(self)}"
            )
        unknown = set(self.lr) - set(ROLES)
        if unknown:
            raise ValueError(f"train.lr: unknown role(s) {sorted(unknown)}; expected some of {list(ROLES)}")
        self.lr = DEFAULT_LR | {k: float(v) for k, v in self.lr.items()}

    def fingerprint_fields(self) -> dict[str, Any]:
        """Settings that change the trained weights (device, threads and logging cadence do not)."""
        d = asdict(self)
        for key in ("device", "threads", "checkpoint_every", "grid_every"):
            d.pop(key)
        return d


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={device!r} but no CUDA device is available; use 'auto' or 'cpu'")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients into `modules`; for an Opacus GradSampleModule also switch off its
    per-sample hooks, so that another player's step neither computes nor leaks into its per-sample
    gradients."""
    saved = []
    for module in modules:
        flags = [p.requires_grad for p in module.parameters()]
        hooks = hasattr(module, "disable_hooks") and hasattr(module, "enable_hooks")
        for p in module.parameters():
            p.requires_grad_(False)
        if hooks:
            module.disable_hooks()
        saved.append((module, flags, hooks))
    try:
        yield
    finally:
        for module, flags, hooks in saved:
            if hooks:
                module.enable_hooks()
            for p, flag in zip(module.parameters(), flags):
                p.requires_grad_(flag)


# ------------------------------------------------------------------------------------------ RNG state
def _rng_state(loaders: dict[str, torch.utils.data.DataLoader]) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "loaders": {name: _loader_generator(loader).get_state() for name, loader in loaders.items()
                    if _loader_generator(loader) is not None},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], loaders: dict[str, torch.utils.data.DataLoader]) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    for name, gen_state in state["loaders"].items():
        _loader_generator(loaders[name]).set_state(gen_state)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x: Any) -> Any:
    """random.setstate needs tuples; a checkpoint may hand lists back."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def _loader_generator(loader: torch.utils.data.DataLoader) -> torch.Generator | None:
    return getattr(loader, "generator", None)


# ------------------------------------------------------------------------------------------ averaging
class ParameterAverage:
    """Exponential moving average of a network's iterates: after every optimizer step ``t``,

        avg_t = decay * avg_{t-1} + (1 - decay) * theta_t,    avg_0 = theta_0 (the initial weights),

    over the parameters and the floating-point buffers (e.g. BatchNorm running statistics). Averaged iterates
    are what diffusion models sample with (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Sec. 4),
    they help GAN generators (Yazici et al. 2019, "The Unusual Effectiveness of Averaging in GAN Training") and
    DP-SGD (De et al. 2022, "Unlocking High-Accuracy Differentially Private Image Classification through
    Scale", Sec. 3.2). Under DP-SGD it is post-processing: the accountant already bounds the release of every
    iterate, so the average costs no privacy. ``torch._foreach_lerp_`` does the update in one call. Not
    ``torch.optim.swa_utils.AveragedModel``: it deep-copies the module, and with it the per-example clipping
    hooks a privacy mode attaches to the network.

    >>> net = nn.Linear(1, 1, bias=False); _ = nn.init.zeros_(net.weight)
    >>> average = ParameterAverage(net, decay=0.5)
    >>> with torch.no_grad(): _ = net.weight.fill_(1.0)
    >>> average.update(net); average.update(net)
    >>> average.copy_to(net); net.weight.item()
    0.75
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.tensors = [t.detach().clone() for t in self._averaged(net)]

    @staticmethod
    def _averaged(net: nn.Module) -> list[torch.Tensor]:
        return [*net.parameters(), *(b for b in net.buffers() if b.is_floating_point())]

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        current = [t.detach() for t in self._averaged(net)]
        if len(current) != len(self.tensors):
            raise RuntimeError(f"the network has {len(current)} averaged tensors, the average {len(self.tensors)}")
        torch._foreach_lerp_(self.tensors, current, 1.0 - self.decay)

    @torch.no_grad()
    def copy_to(self, net: nn.Module) -> None:
        """Load the average into `net` (in place)."""
        for target, value in zip(self._averaged(net), self.tensors, strict=True):
            target.copy_(value)

    def state_dict(self) -> list[torch.Tensor]:
        return [t.clone() for t in self.tensors]

    def load_state_dict(self, tensors: list[torch.Tensor]) -> None:
        if len(tensors) != len(self.tensors):
            raise ValueError(f"{len(tensors)} averaged tensors given, {len(self.tensors)} expected")
        self.tensors = [t.clone().to(old.device) for t, old in zip(tensors, self.tensors)]


def _averages(players: list[Player], nets: dict[str, nn.Module], decay: float) -> dict[str, ParameterAverage]:
    """One ParameterAverage per sampled network (`AVERAGED_ROLES`); none when `decay` is 0."""
    if decay == 0.0:
        return {}
    return {p.name: ParameterAverage(_unwrap(nets[p.name]), decay) for p in players if p.role in AVERAGED_ROLES}


# ------------------------------------------------------------------------------------------ checkpoints
def _save_atomic(state: dict[str, Any], path: Path) -> None:
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def _unwrap(net: nn.Module) -> nn.Module:
    """The network inside an Opacus GradSampleModule (whose state_dict keys carry a `_module.` prefix)."""
    return getattr(net, "_module", net)


def _optimizer_state(opt: torch.optim.Optimizer) -> dict[str, Any]:
    return getattr(opt, "original_optimizer", opt).state_dict()


def _load_optimizer_state(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    getattr(opt, "original_optimizer", opt).load_state_dict(state)


def _load_resume(resume: Path | None, run_fingerprint: str, run_name: str) -> dict[str, Any] | None:
    """The resume checkpoint if it belongs to this run's settings; a stale one is ignored with a warning
    (it is overwritten at the next checkpoint)."""
    if resume is None or not resume.exists():
        return None
    state = load_torch(resume)
    if state.get("format") != CHECKPOINT_FORMAT or state.get("fingerprint") != run_fingerprint:
        log.warning(
            "%s: ignoring %s: written by different settings (fingerprint %s, this run %s); starting over",
            run_name, resume, state.get("fingerprint"), run_fingerprint,
        )
        return None
    return state


def fingerprint(**parts: Any) -> str:
    """A short hash of everything that determines the trained weights."""
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ the loop
def _epoch_length(loaders: dict[str, torch.utils.data.DataLoader], data: TrainingData, batch_size: int) -> int:
    lengths = {len(loader) for loader in loaders.values()}
    if len(lengths) > 1:
        raise RuntimeError(f"the players' data loaders disagree on the epoch length: {sorted(lengths)}")
    if lengths:
        (n,) = lengths
        if n < 1:
            raise RuntimeError("the training data loader yields no batches")
        return n
    return max(1, math.ceil(data.n_images / batch_size))


def train_model(
    model: GenerativeModel,
    data: TrainingData,
    privacy: PrivacyMode,
    cfg: TrainConfig,
    run_name: str = "run",
    log_csv: str | os.PathLike | None = None,
    resume_path: str | os.PathLike | None = None,
    run_fingerprint: str = "",
    on_grid: Callable[[int, GenerativeModel], None] | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train `model` in place; return the per-epoch log rows.

    Each step updates every player in `model.players()` order with its own Adam optimizer; the other
    players are frozen meanwhile. A player that reads real data gets a batch from its loader (built by the
    privacy mode); its per-example losses are reduced by the privacy mode (mean, or sum for DP-SGD, whose
    optimizer divides the noisy clipped sum by the expected batch size).

    With `resume_path`, the state is checkpointed there every `cfg.checkpoint_every` epochs and, if a
    checkpoint with the same `run_fingerprint` exists when training starts, training resumes from it.
    `on_grid(epoch, model)` is called every `cfg.grid_every` epochs and after the last step.
    """
    seed_everything(cfg.seed)
    torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    model.to(device)
    data = TrainingData(images=data.images.to(device), patient_ids=data.patient_ids)
    if model.kind not in privacy.supported_kinds:
        raise ValueError(
            f"{run_name}: privacy mode {privacy.name!r} does not apply to {model.kind} models "
            f"(it supports: {', '.join(sorted(privacy.supported_kinds))})"
        )

    players = model.players()
    nets = model.networks()
    opts = {
        p.name: torch.optim.Adam(nets[p.name].parameters(), lr=cfg.lr[p.role], betas=(cfg.beta1, cfg.beta2))
        for p in players
    }
    resume = Path(resume_path) if resume_path is not None else None
    state = _load_resume(resume, run_fingerprint, run_name)
    if state is not None:  # before attach: a resumed run redraws the releases attach makes from the same root
        privacy.restore_root(int(state["random_root"], 16))
    nets, opts, loaders = privacy.attach(model, nets, opts, data, cfg.batch_size, cfg.steps)
    averages = _averages(players, nets, cfg.ema_decay)
    epoch_steps = _epoch_length(loaders, data, cfg.batch_size)
    n_epochs = math.ceil(cfg.steps / epoch_steps)
    rows: list[dict[str, float]] = []
    start_epoch = 0
    if state is not None:
        rows, start_epoch = _restore(state, nets, opts, privacy, loaders, averages)
        log.info("%s: resuming from %s after epoch %d (step %d)", run_name, resume, start_epoch, start_epoch * epoch_steps)

    loop = _Loop(model, players, nets, opts, loaders, privacy, cfg, device, run_name, epoch_steps, n_epochs, averages)
    csv_log = _CsvLog(log_csv)
    csv_log.write(rows)
    bar = tqdm(total=cfg.steps, initial=start_epoch * epoch_steps, desc=run_name, disable=not progress, mininterval=2.0)
    try:
        for epoch in range(start_epoch + 1, n_epochs + 1):
            row = loop.epoch(epoch, bar)
            rows.append(row)
            csv_log.write([row])
            bar.set_postfix({k.removeprefix("loss_"): f"{v:.3f}" for k, v in row.items() if k.startswith("loss_")}
                            | ({"eps": f"{row['epsilon_spent']:.2f}"} if math.isfinite(row["epsilon_spent"]) else {}))
            last = epoch == n_epochs
            if last:  # the released weights of the sampled networks: their averages (a no-op without ema_decay)
                for name, average in averages.items():
                    average.copy_to(_unwrap(nets[name]))
            if on_grid is not None and ((cfg.grid_every and epoch % cfg.grid_every == 0) or last):
                on_grid(epoch, model)
            if resume is not None and ((cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0) or last):
                _save_resume(resume, run_fingerprint, epoch, nets, opts, privacy, loaders, rows, averages)
    finally:
        bar.close()
        csv_log.close()
    return rows


def _restore(state: dict[str, Any], nets, opts, privacy: PrivacyMode, loaders, averages) -> tuple[list[dict[str, float]], int]:
    """Networks, optimizers, averages, privacy state and RNG streams from a resume checkpoint; its log rows and
    epoch."""
    for name, average in averages.items():
        average.load_state_dict(state["averages"][name])
    for name, net_state in state["networks"].items():
        _unwrap(nets[name]).load_state_dict(net_state)
    for name, opt_state in state["optimizers"].items():
        _load_optimizer_state(opts[name], opt_state)
    privacy.load_state_dict(state["privacy"])
    _set_rng_state(state["rng"], loaders)
    return state["rows"], state["epoch"]


def _save_resume(resume: Path, fingerprint: str, epoch: int, nets, opts, privacy: PrivacyMode, loaders, rows, averages) -> None:
    """The resume checkpoint after `epoch` (atomic)."""
    _save_atomic(
        {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": fingerprint,
            "epoch": epoch,
            # the networks actually trained (a privacy mode may have replaced one, e.g. the functional head)
            "networks": {name: _unwrap(net).state_dict() for name, net in nets.items()},
            "optimizers": {name: _optimizer_state(opt) for name, opt in opts.items()},
            "averages": {name: average.state_dict() for name, average in averages.items()},
            "privacy": privacy.state_dict(),
            # the privacy mode's random root (a secret in the default setting): kept only in this private
            # file, which is removed when the run completes
            "random_root": format(privacy.seed, "x"),
            "rng": _rng_state(loaders),
            "rows": rows,
        },
        resume,
    )


class _CsvLog:
    """The per-epoch CSV log, appended row by row; its columns are those of the first row (every row has the
    same keys). No file without `path` or before the first row."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path, self.fh, self.writer = path, None, None

    def write(self, rows: list[dict[str, float]]) -> None:
        if self.path is None or not rows:
            return
        if self.writer is None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "w", newline="")
            self.writer = csv.DictWriter(self.fh, fieldnames=list(rows[0]))
            self.writer.writeheader()
        self.writer.writerows(rows)
        self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


class _Loop:
    """One training run's epochs: each step updates every player in order (`_update`); an epoch's log row
    releases only what the privacy mode allows."""

    def __init__(self, model, players, nets, opts, loaders, privacy, cfg, device, run_name, epoch_steps, n_epochs, averages):
        self.model, self.players, self.nets, self.opts, self.loaders = model, players, nets, opts, loaders
        self.averages = averages
        self.privacy, self.cfg, self.device, self.run_name = privacy, cfg, device, run_name
        self.epoch_steps, self.n_epochs = epoch_steps, n_epochs
        self.use_amp = cfg.amp and device.type == "cuda"
        self.epsilon_every = max(1, n_epochs // 50)
        self.protected = [p.name for p in players if privacy.protects(p)]

    def epoch(self, epoch: int, bar) -> dict[str, float]:
        """Train epoch `epoch` (1-based) and return its log row."""
        iters = {name: iter(loader) for name, loader in self.loaders.items()}
        names = [p.name for p in self.players]
        sums, counts = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
        public_sums, public_counts = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
        n_real, t0 = 0, time.perf_counter()
        step = (epoch - 1) * self.epoch_steps
        steps_this_epoch = min(self.epoch_steps, self.cfg.steps - step)
        for _ in range(steps_this_epoch):
            step += 1
            for player in self.players:
                loss, b, public = _update(
                    self.model, player, self.nets, self.opts, iters, self.privacy, self.cfg.batch_size, self.device,
                    self.use_amp, self.players,
                )
                if not math.isfinite(loss):
                    raise TrainingDiverged(f"{self.run_name}: non-finite {player.name} loss at step {step}")
                if player.name in self.averages:
                    self.averages[player.name].update(_unwrap(self.nets[player.name]))
                sums[player.name] += loss
                counts[player.name] += b
                if public is not None:
                    public_sums[player.name] += public
                    public_counts[player.name] += 1
                if player.reads_real_data and player.name in iters:
                    n_real += b
            bar.update(1)
        seconds = time.perf_counter() - t0
        row: dict[str, float] = {"epoch": epoch, "step": step}
        for p in self.players:
            if p.name not in self.protected:
                row[f"loss_{p.name}"] = sums[p.name] / max(counts[p.name], 1)
            elif public_counts[p.name]:  # a protected network: only its loss on generated data is released
                row[f"loss_{p.name}_generated"] = public_sums[p.name] / public_counts[p.name]
        if not self.protected:  # the Poisson batch size of a protected network is a count of real data
            # real examples read per step (0 once the functional mechanism has released its statistics)
            row["real_batch"] = n_real / steps_this_epoch
        # the accountant is called at most ~50 times per run (it costs ~0.1 s per call); blank between
        last = epoch == self.n_epochs
        row["epsilon_spent"] = (
            self.privacy.epsilon_for_log() if (epoch % self.epsilon_every == 0 or last) else float("nan")
        )
        row["seconds_per_step"] = seconds / steps_this_epoch
        return row


def _as_batch(batch: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """A real batch as one tensor (b, C, H, W). When Opacus' Poisson sampler draws an empty batch before any
    non-empty one it returns a list of per-channel (0, H, W) tensors; they become a (0, C, H, W) batch."""
    if isinstance(batch, (list, tuple)):
        return torch.stack(list(batch), dim=1)
    return batch


def _update(
    model: GenerativeModel,
    player: Player,
    nets: dict[str, nn.Module],
    opts: dict[str, torch.optim.Optimizer],
    iters: dict[str, Iterator[torch.Tensor]],
    privacy: PrivacyMode,
    batch_size: int,
    device: torch.device,
    use_amp: bool,
    players: list[Player],
) -> tuple[float, int, float | None]:
    """One optimizer step of `player`; returns (summed loss, number of examples, public part or None). The
    summed loss adds the public part (e.g. a discriminator's loss on generated images) once per example, so
    that its mean is the loss the update descends; the public part alone reads no real data."""
    real = _as_batch(next(iters[player.name])).to(device) if player.name in iters else None
    opt = opts[player.name]
    others = [nets[p.name] for p in players if p.name != player.name]
    opt.zero_grad(set_to_none=True)
    amp = use_amp and not privacy.clips_per_example(player)
    # The other players stay frozen through backward too: Opacus' backward hooks must not fire for them.
    with frozen(*others):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            public = privacy.public_loss(model, player, nets, batch_size)
            losses = privacy.player_loss(model, player, nets, real, batch_size)
        privacy.backward(player, nets[player.name], losses, public)
    privacy.before_step(model, player, nets[player.name])
    opt.step()
    b = int(losses.shape[0])
    public_value = float(public.detach().float()) if public is not None else None
    total = float(losses.detach().float().sum()) + (public_value * b if public_value is not None else 0.0)
    return total, b, public_value
