"""DP-SGD (Abadi et al., 2016) on every network that reads real data, through Opacus.

For an unconditional GAN only the discriminator reads real data; the generator is trained from the
discriminator's (privatised) outputs, so its weights and samples are post-processing and inherit the
discriminator's guarantee.

Mechanism per step: Poisson-sample the privacy units with rate q, compute per-unit gradients of the
discriminator loss (each sampled real image together with its paired fake image, as in Opacus' DCGAN
example: the fake half depends on no private data), clip each to L2 norm C (`max_grad_norm`), sum, add
N(0, sigma^2 C^2 I) and take an optimizer step. The sensitivity of the clipped sum to adding or removing one
unit is C, so each step is the sampled Gaussian mechanism with noise multiplier sigma and rate q. The
composition over `steps` steps is accounted with Opacus' PRV accountant (Gopi et al., 2021), whose
`get_epsilon` returns an upper bound; sigma is the smallest value (binary search, Opacus'
`get_noise_multiplier`) for which that bound is <= the target epsilon at the target delta.

Units:
- ``patient`` (default): the dataset is the list of training patients; each sampled patient contributes
  exactly one uniformly drawn slice (`PatientSliceDataset`). Adjacency is adding or removing one patient
  with all of their images, so epsilon is per patient.
- ``image``: the dataset is the list of images; adjacency is adding or removing one image. A patient with
  k images is then protected only at group size k: the ledger reports the group-privacy conversion
  (kε, k·e^((k−1)ε)·δ) beside the per-image epsilon, which is vacuous (infinite) for many slices.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import logging
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader

from dpmedgen.privacy.base import ImageDataset, PatientSliceDataset, PrivacyMode
from dpmedgen.privacy.mechanisms import group_privacy


def _opacus() -> SimpleNamespace:
    """Import Opacus on first use: it is slow to import (torch.distributed, sympy), and most jobs
    (generation, evaluation, plots, Snakemake's own process) never need it. Importing opacus also adds a
    handler to the *root* logger, which would duplicate every log line of the host program; keep the root
    logger as the host configured it."""
    root_handlers = list(logging.getLogger().handlers)
    import opacus
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier
    from opacus.validators import ModuleValidator

    logging.getLogger().handlers = root_handlers
    from dpmedgen.models import register_opacus_extensions

    register_opacus_extensions()
    return SimpleNamespace(
        version=opacus.__version__,
        PrivacyEngine=PrivacyEngine,
        get_noise_multiplier=get_noise_multiplier,
        ModuleValidator=ModuleValidator,
    )


ACCOUNTANT = "prv"


class DPSGD(PrivacyMode):
    name = "dpsgd"

    def __init__(
        self,
        *,
        target_epsilon: float,
        delta: float,
        seed: int = 0,
        max_grad_norm: float = 1.0,
        unit: str = "patient",
    ) -> None:
        super().__init__(target_epsilon=target_epsilon, delta=delta, seed=seed, unit=unit)
        if not math.isfinite(self.target_epsilon) or self.target_epsilon <= 0:
            raise ValueError(f"dpsgd needs a finite target epsilon > 0; got {target_epsilon}")
        if not 0 < self.delta < 1:
            raise ValueError(f"dpsgd needs 0 < delta < 1; got {delta}")
        self.max_grad_norm = float(max_grad_norm)
        self.engine = None  # opacus.PrivacyEngine, created in attach()
        self.noise_multiplier: float | None = None
        self.sample_rate: float | None = None
        self.planned_steps = 0
        self.n_units = 0
        self.max_images_per_patient = 0
        self.private_players: list[str] = []

    def attach(self, model, nets, optimizers, data, batch_size, steps):
        """Make every player that reads real data private with one PrivacyEngine (one accountant).

        Each private player gets its own Poisson-sampled loader and its own DP optimizer, all with the same
        noise multiplier sigma and sample rate q. Per training step there are m = (number of private
        players) subsampled Gaussian mechanisms; the engine's accountant composes all m * steps of them, and
        sigma is calibrated so that this composition meets the target (epsilon, delta).
        """
        opacus = _opacus()
        # Opacus' hooks fire on the discriminator's input, which (real images) needs no gradient: harmless.
        warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Secure RNG turned off")  # stated in the ledger instead
            self.engine = opacus.PrivacyEngine(accountant=ACCOUNTANT)
        private = [p for p in model.players() if p.reads_real_data]
        self.private_players = [p.name for p in private]
        for p in private:
            errors = opacus.ModuleValidator.validate(nets[p.name], strict=False)
            if errors:
                raise ValueError(f"the {p.name} of {type(model).__name__} cannot be trained with DP-SGD: {errors}")
        self.max_images_per_patient = int(data.images_per_patient().max())
        self.n_units = data.n_patients if self.unit == "patient" else data.n_images
        if self.delta >= 1.0 / self.n_units:
            raise ValueError(
                f"delta={self.delta:g} is not below 1/N = 1/{self.n_units} training {self.unit}s; "
                "a delta that large permits releasing a whole record. Lower `privacy.delta` in config.yaml."
            )
        # Opacus' DPDataLoader samples each unit with probability 1 / len(loader); account for exactly that.
        self.sample_rate = 1.0 / math.ceil(self.n_units / min(batch_size, self.n_units))
        self.planned_steps = steps * len(private)
        with warnings.catch_warnings():
            # The PRV accountant sizes its domain with an RDP bound; a large RDP order there is harmless.
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            self.noise_multiplier = opacus.get_noise_multiplier(
                target_epsilon=self.target_epsilon,
                target_delta=self.delta,
                sample_rate=self.sample_rate,
                steps=self.planned_steps,
                accountant=ACCOUNTANT,
            )
        self._noise_generator = torch.Generator().manual_seed(self.seed + 1)
        self._slice_datasets = {}
        loaders = {}
        for i, p in enumerate(private):
            if self.unit == "patient":
                dataset = PatientSliceDataset(data, seed=self.seed * 1000 + i)
                self._slice_datasets[p.name] = dataset
            else:
                dataset = ImageDataset(data)
            loader = DataLoader(
                dataset,
                batch_size=min(batch_size, self.n_units),
                generator=torch.Generator().manual_seed(self.seed * 1000 + 500 + i),
            )
            module, dp_optimizer, dp_loader = self.engine.make_private(
                module=nets[p.name],
                optimizer=optimizers[p.name],
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
            if not math.isclose(dp_loader.sample_rate, self.sample_rate):
                raise RuntimeError(f"Opacus samples at {dp_loader.sample_rate}, accounted {self.sample_rate}")
            nets[p.name], optimizers[p.name], loaders[p.name] = module, dp_optimizer, dp_loader
        return nets, optimizers, loaders

    def reduce_loss(self, player, losses):
        """Private players: the per-example losses are summed (see `attach`); others: the mean."""
        return losses.sum() if player.name in self.private_players else super().reduce_loss(player, losses)

    def clips_per_example(self, player) -> bool:
        return player.name in self.private_players

    def before_step(self, model, player, net) -> None:
        k = model.replicas(player.name)
        if k > 1 and player.name in self.private_players:
            from dpmedgen.models.ddpm import fold_replicas  # per-row -> per-example gradients (DPDM)

            fold_replicas(net, k)

    def state_dict(self) -> dict[str, Any]:
        if self.engine is None:
            return {}
        return {
            "history": [list(h) for h in self.engine.accountant.history],
            "noise_generator": self._noise_generator.get_state(),
            "slice_rngs": {name: ds.rng.bit_generator.state for name, ds in self._slice_datasets.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.engine is None:
            raise RuntimeError("dpsgd: load_state_dict needs attach() first")
        self.engine.accountant.history = [(float(s), float(q), int(n)) for s, q, n in state["history"]]
        self._noise_generator.set_state(state["noise_generator"])
        for name, rng_state in state["slice_rngs"].items():
            self._slice_datasets[name].rng.bit_generator.state = rng_state

    @property
    def steps_taken(self) -> int:
        return sum(n for _, _, n in self.engine.accountant.history) if self.engine else 0

    def epsilon_spent(self) -> float:
        if self.engine is None or not self.engine.accountant.history:
            return 0.0
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return float(self.engine.accountant.get_epsilon(delta=self.delta))

    def ledger(self) -> dict[str, Any]:
        epsilon = self.epsilon_spent()
        if epsilon > self.target_epsilon * (1 + 1e-9):
            raise RuntimeError(f"DP-SGD spent epsilon {epsilon:.4f} > target {self.target_epsilon}")
        if self.unit == "patient":
            # Adding or removing one image changes one patient's record: a replacement, i.e. a removal and
            # an addition of a patient, so the per-image statement is group privacy at size 2.
            eps_i, delta_i = group_privacy(epsilon, self.delta, 2)
            per_patient = {
                "epsilon_per_patient": epsilon,
                "delta_per_patient": self.delta,
                "epsilon_per_image": eps_i,
                "delta_per_image": delta_i,
                "image_conversion": "one image changes one patient's record (remove + add): group privacy "
                "at size 2 (Dwork & Roth 2014, Thm 2.2)",
            }
        else:
            eps_p, delta_p = group_privacy(epsilon, self.delta, self.max_images_per_patient)
            per_patient = {
                "epsilon_per_image": epsilon,
                "epsilon_per_patient": eps_p,
                "delta_per_patient": delta_p,
                "patient_conversion": f"group privacy over k = {self.max_images_per_patient} images "
                "(Dwork & Roth 2014, Thm 2.2); Infinity means the conversion is vacuous",
            }
        return per_patient | {
            "mechanism": "dpsgd",
            "guarantee": "formal",
            "unit": self.unit,
            "adjacency": f"add or remove one {self.unit}" + (" with all of their images" if self.unit == "patient" else ""),
            "epsilon": epsilon,
            "epsilon_target": self.target_epsilon,
            "delta": self.delta,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "steps": self.steps_taken,
            "max_grad_norm": self.max_grad_norm,
            "n_units": self.n_units,
            "max_images_per_patient": self.max_images_per_patient,
            "sampling": "poisson" + (", one uniformly drawn slice per sampled patient" if self.unit == "patient" else ""),
            "accountant": f"opacus.accountants.PRVAccountant (upper bound), opacus {_opacus().version}",
            "protected_networks": list(self.private_players),
            "randomness": "torch.Generator seeded from the run seed (reproducible; Opacus secure_mode off, so not "
            "a cryptographically secure source)",
            "steps_per_network": self.steps_taken // max(len(self.private_players), 1),
        }

