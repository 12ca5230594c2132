"""Input and output perturbation: Laplace or Gaussian noise on whole images.

Input perturbation (``input_laplace``, ``input_gaussian``) is a *local randomizer*: every training image x
(pixels clipped to [0, 1], d = H·W pixels) is released once as x + Z, and the model is then trained
non-privately on the released images (post-processing). Neighbouring datasets may differ in one image
arbitrarily, so the sensitivity is the diameter of [0, 1]^d:

- Laplace, per coordinate scale b: L1 diameter Δ₁ = d, so ε = Δ₁ / b (δ = 0).
- Gaussian, per coordinate std σ: L2 diameter Δ₂ = √d; σ is the analytic Gaussian mechanism's
  (Balle & Wang, 2018) for the target (ε, δ).

Per patient: a patient's k images are released jointly, i.e. one mechanism on their concatenation, whose
diameter is k·d (L1) or √(k·d) (L2). With ``unit: patient`` (default) the noise is calibrated to that
joint sensitivity with k = the largest number of training images of any patient, so the target ε holds
per patient; with ``unit: image`` it is calibrated per image and the per-patient ε is the k-fold
composition (dp-accounting's PLD accountant; exact k·ε for Laplace). Both are written to the ledger.
Note what this costs: at 64×64, d = 4096, so per-image ε = 10 already needs Laplace noise of scale 410 per
pixel. Earlier work calibrated per pixel (Δ = 1) and reported the result as per image, understating ε by
a factor of d.

Output perturbation (``output_laplace``, ``output_gaussian``) adds the same kind of noise to each
*generated* image, calibrated to the output's own diameter. For an unconditional generator this protects
no training record: the generator was trained without privacy, and its outputs are a function of the
training data whose sensitivity is not bounded by the noise. The ledger therefore states
``guarantee: none`` and ``epsilon: Infinity`` for training data; the per-output ε describes the noise only
(it would protect the *input* of a conditional model at inference, e.g. a fusion model's source images).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from dpmedgen.privacy.base import PrivacyMode, TrainingData
from dpmedgen.privacy.ledger import ADJACENCY, adjacency_statement, vacuous
from dpmedgen.privacy.mechanisms import gaussian_epsilon, gaussian_sigma, laplace_epsilon, laplace_scale

NOISES = ("laplace", "gaussian")


def _check_target(mode: PrivacyMode) -> None:
    if not (math.isfinite(mode.target_epsilon) and mode.target_epsilon > 0):
        raise ValueError(f"{mode.name} needs a finite target epsilon > 0; got {mode.target_epsilon}")
    if mode.noise == "gaussian" and not 0 < mode.delta < 1:
        raise ValueError(f"{mode.name} needs 0 < delta < 1; got {mode.delta}")


def image_noise_scale(noise: str, epsilon: float, delta: float, n_pixels: int, images: int = 1) -> float:
    """Per-pixel noise scale (Laplace b or Gaussian σ) for releasing `images` images of `n_pixels` pixels
    in [0, 1] jointly with (ε, δ) (δ unused for Laplace)."""
    if noise == "laplace":
        return laplace_scale(epsilon, l1_sensitivity=images * n_pixels)
    return gaussian_sigma(epsilon, delta, l2_sensitivity=math.sqrt(images * n_pixels))


def image_epsilon(noise: str, scale: float, delta: float, n_pixels: int, images: int = 1) -> float:
    """ε of releasing `images` images of `n_pixels` pixels, each with per-pixel noise `scale` (PLD accountant)."""
    if noise == "laplace":
        return laplace_epsilon(scale, l1_sensitivity=n_pixels, delta=0.0, compositions=images)
    return gaussian_epsilon(scale, l2_sensitivity=math.sqrt(n_pixels), delta=delta, compositions=images)


def add_image_noise(pixels: np.ndarray, noise: str, scale: float, rng: np.random.Generator) -> np.ndarray:
    """pixels (values in [0, 1]) + i.i.d. noise; the caller clips afterwards (post-processing)."""
    draw = rng.laplace if noise == "laplace" else rng.normal
    return pixels + draw(0.0, scale, size=pixels.shape)


class InputPerturbation(PrivacyMode):
    """Local randomizer on each training image before training (see module docstring)."""

    noise: ClassVar[str] = ""

    def __init__(self, *, target_epsilon: float, delta: float, seed: int | None = None, unit: str = "patient") -> None:
        super().__init__(target_epsilon=target_epsilon, delta=delta, seed=seed, unit=unit)
        _check_target(self)
        self.scale: float | None = None
        self.n_pixels = 0
        self.max_images_per_patient = 0
        self.n_units = self.n_patients = 0

    def release(self, data: TrainingData) -> TrainingData:
        """Noise every training image once (all modalities of an example together: d = C*H*W values)."""
        self.n_pixels = int(np.prod(data.images.shape[1:]))
        self.max_images_per_patient = int(data.images_per_patient().max())
        self.n_units = data.n_patients if self.unit == "patient" else data.n_images
        self.n_patients = data.n_patients
        if self.noise == "gaussian" and self.delta >= 1.0 / self.n_units:
            raise ValueError(
                f"{self.name}: delta={self.delta:g} is not below 1/N = 1/{self.n_units} training {self.unit}s; "
                "a delta that large permits releasing a whole record. Lower `privacy.delta` in config.yaml."
            )
        k = self.max_images_per_patient if self.unit == "patient" else 1
        self.scale = image_noise_scale(self.noise, self.target_epsilon, self.delta, self.n_pixels, images=k)
        pixels = ((data.images.cpu().numpy() + 1.0) / 2.0).clip(0.0, 1.0)
        released = add_image_noise(pixels, self.noise, self.scale, np.random.default_rng(self.rng_seed("input_noise")))
        # Post-processing: clip back to the pixel range and return to the model's [-1, 1] scale.
        images = torch.from_numpy(released.clip(0.0, 1.0) * 2.0 - 1.0).to(data.images.dtype).to(data.images.device)
        return TrainingData(images=images, patient_ids=data.patient_ids)

    def _epsilons(self) -> tuple[float, float]:
        delta = 0.0 if self.noise == "laplace" else self.delta
        per_image = image_epsilon(self.noise, self.scale, delta, self.n_pixels, images=1)
        per_patient = image_epsilon(self.noise, self.scale, delta, self.n_pixels, images=self.max_images_per_patient)
        # delta is per patient here (composition keeps it); vacuous when it reaches 1/N patients
        return per_image, vacuous(per_patient, delta, self.n_patients)[0]

    def epsilon_spent(self) -> float:
        if self.scale is None:
            return 0.0
        per_image, per_patient = self._epsilons()
        return per_patient if self.unit == "patient" else per_image

    def ledger(self) -> dict[str, Any]:
        per_image, per_patient = self._epsilons()
        epsilon = per_patient if self.unit == "patient" else per_image
        if epsilon > self.target_epsilon * (1 + 1e-6):
            raise RuntimeError(f"{self.name}: epsilon {epsilon} exceeds the target {self.target_epsilon}")
        joint = "√(k·d)" if self.noise == "gaussian" else "k·d"
        return {
            "mechanism": self.name,
            "guarantee": "formal",
            "unit": self.unit,
            "adjacency": ADJACENCY,
            "adjacency_statement": adjacency_statement(self.unit),
            "epsilon_spent": epsilon,
            "epsilon_target": self.target_epsilon,
            "epsilon_per_image": per_image,
            "epsilon_per_patient": per_patient,
            "delta": 0.0 if self.noise == "laplace" else self.delta,
            "noise": self.noise,
            "noise_scale": self.scale,
            "pixels_per_image": self.n_pixels,
            "max_images_per_patient": self.max_images_per_patient,
            f"{'l1' if self.noise == 'laplace' else 'l2'}_sensitivity_per_image": (
                self.n_pixels if self.noise == "laplace" else math.sqrt(self.n_pixels)
            ),
            "theorem": (
                ("Laplace mechanism" if self.noise == "laplace" else "analytic Gaussian mechanism (Balle & Wang 2018)")
                + f" on each image (pixels clipped to [0, 1]); per patient: one mechanism on the concatenation of "
                f"the patient's k images (sensitivity {joint}), composition by dp-accounting's PLD accountant; "
                "training on the released images is post-processing"
            ),
            "accountant": "dp_accounting (analytic Gaussian calibration, PLD composition)",
            "assumes": "k = max_images_per_patient is public (fixed by the acquisition protocol)",
        }


class InputLaplace(InputPerturbation):
    name = "input_laplace"
    noise = "laplace"


class InputGaussian(InputPerturbation):
    name = "input_gaussian"
    noise = "gaussian"


class OutputPerturbation(PrivacyMode):
    """Noise on each generated image; no guarantee for the training data (see module docstring)."""

    noise: ClassVar[str] = ""
    reuses_nonprivate_training = True

    def __init__(self, *, target_epsilon: float, delta: float, seed: int | None = None) -> None:
        # No unit to choose: the noise is per released image, and there is no guarantee for training data.
        super().__init__(target_epsilon=target_epsilon, delta=delta, seed=seed, unit="image")
        _check_target(self)
        self.n_pixels = 0

    def set_output_shape(self, shape: tuple[int, ...]) -> None:
        """The generated images' shape (without the batch dimension), which fixes the noise's sensitivity."""
        self.n_pixels = int(np.prod(shape))

    def output_noise(self) -> dict[str, Any]:
        if not self.n_pixels:
            raise RuntimeError(f"{self.name}: call set_output_shape() first")
        n_pixels = self.n_pixels
        scale = image_noise_scale(self.noise, self.target_epsilon, self.delta, n_pixels)
        return {
            "noise": self.noise,
            "noise_scale": scale,
            "pixels_per_image": n_pixels,
            "epsilon_per_output": self.target_epsilon,
            "delta_per_output": 0.0 if self.noise == "laplace" else self.delta,
        }

    def ledger(self) -> dict[str, Any]:
        return {
            "mechanism": self.name,
            "guarantee": "none",
            "unit": "image",
            "adjacency": ADJACENCY,
            "adjacency_statement": "no guarantee for the training data under any relation",
            "epsilon_spent": math.inf,
            "epsilon_target": self.target_epsilon,
            "delta": 0.0,
            "protects": (
                "nothing about the training data: the generator is trained without privacy; the noise bounds "
                "only what one released image reveals about that image's own pixels (the input of a "
                "conditional model at inference)"
            ),
            "output_noise": self.output_noise(),
        }

    @classmethod
    def postprocess_samples(cls, samples: np.ndarray, ledger: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        spec = ledger["output_noise"]
        return add_image_noise(samples, spec["noise"], spec["noise_scale"], rng).clip(0.0, 1.0).astype(np.float32)


class OutputLaplace(OutputPerturbation):
    name = "output_laplace"
    noise = "laplace"


class OutputGaussian(OutputPerturbation):
    name = "output_gaussian"
    noise = "gaussian"
