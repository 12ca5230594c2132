"""The interface every privacy mode implements, and the training data it controls access to.

A privacy mode owns every path by which real training data reaches the model: it builds the data loader
and may wrap the networks and optimizers that read real data (DP-SGD), transform the data before training
(input perturbation) or the outputs after it (output perturbation). After training it writes the privacy
ledger (`privacy.json`): the guarantee, its unit, and every parameter an independent accountant needs to
recompute it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from dpmedgen.privacy.randomness import new_secret, stream_seed

if TYPE_CHECKING:
    from dpmedgen.models.base import GenerativeModel, Player

UNITS = ("image", "patient")


@dataclass
class TrainingData:
    """Real training images scaled to [-1, 1], (N, C, H, W), with the patient each one belongs to and,
    when known, each image's class label (N,)."""

    images: torch.Tensor
    patient_ids: np.ndarray
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.images) != len(self.patient_ids):
            raise ValueError("one patient id per training image is required")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ValueError("one label per training image is required")
        if len(self.images) == 0:
            raise ValueError("the training split holds no images")
        self.patients, self.patient_index = np.unique(self.patient_ids, return_inverse=True)

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def n_patients(self) -> int:
        return len(self.patients)

    def images_per_patient(self) -> np.ndarray:
        return np.bincount(self.patient_index, minlength=self.n_patients)

    def subset(self, mask: np.ndarray) -> "TrainingData":
        """The images where boolean `mask` (N,) is true, with their patients and labels."""
        mask = np.asarray(mask, dtype=bool)
        return TrainingData(
            images=self.images[torch.from_numpy(mask)],
            patient_ids=self.patient_ids[mask],
            labels=None if self.labels is None else self.labels[mask],
        )


class ImageDataset(Dataset):
    """One item per image: privacy unit "image"."""

    def __init__(self, data: TrainingData) -> None:
        self.images = data.images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


class PatientSliceDataset(Dataset):
    """One item per patient: item i is one slice of patient i, drawn uniformly at random.

    Poisson-sampling this dataset (Opacus' DPDataLoader) samples each *patient* independently with
    probability q and then takes exactly one slice of each sampled patient, so every step is a subsampled
    Gaussian mechanism over patients and the accountant's epsilon is per patient.
    """

    def __init__(self, data: TrainingData, seed: int) -> None:
        self.images = data.images
        order = np.argsort(data.patient_index, kind="stable")
        counts = data.images_per_patient()
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.order = order
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> torch.Tensor:
        start, stop = self.offsets[i], self.offsets[i + 1]
        return self.images[self.order[self.rng.integers(start, stop)]]


class PrivacyMode(ABC):
    """Base class. Subclasses set `name` and override the hooks they need."""

    name: ClassVar[str] = ""

    #: True for modes that add no privacy to training (output perturbation): the workflow reuses the
    #: non-private run's checkpoint instead of training the same model again.
    reuses_nonprivate_training: ClassVar[bool] = False

    def __init__(
        self, *, target_epsilon: float, delta: float, seed: int | None = None, unit: str = "patient"
    ) -> None:
        """`seed`: the root of the mode's random streams (noise, sampling, slice choice). None (default) draws
        a fresh 128-bit secret from the OS (`dpmedgen.privacy.randomness`); an integer makes the mode
        deterministic, which is for tests only: a mode seeded from a public number is not a DP release."""
        if unit not in UNITS:
            raise ValueError(f"{self.name}: unit must be one of {UNITS}; got {unit!r}")
        self.target_epsilon = float(target_epsilon)
        self.delta = float(delta)
        self.randomness = "secret" if seed is None else "deterministic"
        self.seed = new_secret() if seed is None else int(seed)
        self.unit = unit

    def rng_seed(self, stream: str, index: int = 0) -> int:
        """The seed of one random stream of this mode (e.g. "noise", "sampling" of the `index`-th network),
        derived from the mode's root; streams of distinct names or indices are independent."""
        return stream_seed(self.seed, stream, index)

    def restore_root(self, root: int) -> None:
        """Take the random root of an interrupted run (from its private resume file) before `attach`, so that
        a resumed run redraws exactly the releases and streams it had drawn."""
        self.seed = int(root)

    def full_ledger(self) -> dict[str, Any]:
        """`ledger()` plus what every mode states: where its randomness came from and whether the run is a DP
        release (a formal guarantee whose noise is secret; a deterministic run is not, whatever its epsilon)."""
        record = self.ledger()
        return record | {
            "randomness": self.randomness,
            "dp_release": record["guarantee"] == "formal" and self.randomness == "secret",
        }

    #: Model kinds (`GenerativeModel.kind`) the mode applies to.
    supported_kinds: ClassVar[frozenset[str]] = frozenset({"gan", "fusion", "diffusion"})

    def release(self, data: TrainingData) -> TrainingData:
        """The training data as the players may read it (identity; input perturbation adds noise here).
        Called once per training run, so a randomised release is drawn once and shared by all players."""
        return data

    def make_loader(self, data: TrainingData, batch_size: int, index: int = 0) -> DataLoader:
        """Loader over released training examples for the `index`-th player that reads real data
        (default: shuffled examples, full batches, an independent shuffle per player)."""
        gen = torch.Generator().manual_seed(self.rng_seed("shuffle", index))
        return DataLoader(ImageDataset(data), batch_size=min(batch_size, data.n_images), shuffle=True, drop_last=True, generator=gen)

    def attach(
        self,
        model: GenerativeModel,
        nets: dict[str, nn.Module],
        optimizers: dict[str, torch.optim.Optimizer],
        data: TrainingData,
        batch_size: int,
        steps: int,
    ) -> tuple[dict[str, nn.Module], dict[str, torch.optim.Optimizer], dict[str, DataLoader]]:
        """Return the (possibly wrapped or replaced) networks, their optimizers, and a data loader for each
        player that reads real data.

        A mode that has already released everything training needs (the functional mechanism) returns no
        loader for that player: the training loop then passes it no real data.
        """
        released = self.release(data)
        readers = [p.name for p in model.players() if p.reads_real_data]
        loaders = {name: self.make_loader(released, batch_size, index=i) for i, name in enumerate(readers)}
        return nets, optimizers, loaders

    def player_loss(
        self, model: GenerativeModel, player: Player, nets: dict[str, nn.Module], real: torch.Tensor | None, batch_size: int
    ) -> torch.Tensor:
        """Per-example losses of one update of `player` (the model's own loss unless a mode replaces it)."""
        return model.loss(player.name, nets, real, batch_size)

    def public_loss(
        self, model: GenerativeModel, player: Player, nets: dict[str, nn.Module], batch_size: int
    ) -> torch.Tensor | None:
        """The part of the player's loss that reads no real data (`GenerativeModel.public_loss`), or None."""
        return model.public_loss(player.name, nets, batch_size)

    def backward(self, player: Player, net: nn.Module, losses: torch.Tensor, public: torch.Tensor | None) -> None:
        """Leave the update's gradient in `.grad` of the player's parameters: by default the gradient of
        the reduced per-example losses plus the public part (DP-SGD clips the first and adds the second)."""
        total = self.reduce_loss(player, losses)
        (total if public is None else total + public).backward()

    def reduce_loss(self, player: Player, losses: torch.Tensor) -> torch.Tensor:
        """The scalar that is back-propagated: the batch mean (DP-SGD overrides: a sum, see dpsgd.py)."""
        return losses.mean() if losses.numel() else losses.sum()

    def protects(self, player: Player) -> bool:
        """True when the mode makes `player`'s updates private while it reads real data (DP-SGD's networks): its
        loss on the real batch and the batch's size are then statistics of training data outside the ledger,
        and the training log releases only its loss on generated data. Modes that release the data first
        (input perturbation, the functional mechanism) or claim no guarantee protect no player."""
        return False

    def clips_per_example(self, player: Player) -> bool:
        """True when the player's per-example gradients are clipped (DP-SGD); mixed precision is then off."""
        return False

    def before_step(self, model: GenerativeModel, player: Player, net: nn.Module) -> None:
        """Hook between backward and the optimizer step."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue exactly (generators, accountant history)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` after `attach`."""

    @classmethod
    def postprocess_samples(cls, samples: np.ndarray, ledger: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """Transform generated samples (values in [0, 1]) before release; identity unless overridden."""
        return samples

    def epsilon_spent(self) -> float:
        """Epsilon spent so far in the mode's primary unit (inf when there is no guarantee)."""
        return float("inf")

    def epsilon_for_log(self) -> float:
        """The epsilon written to the training log: `epsilon_spent` unless a mode has a cheaper sound bound."""
        return self.epsilon_spent()

    @abstractmethod
    def ledger(self) -> dict[str, Any]:
        """The privacy ledger written to privacy.json (see `dpmedgen.privacy.ledger`)."""
