"""The functional mechanism (Zhang et al., VLDB 2012) for a GAN discriminator: real data is released once.

The discriminator never reads real images. It reads, once, a noisy vector of polynomial coefficients
computed from them; after that release the training loop holds no real data (`attach` returns no loader),
so the discriminator, the generator and every sample are post-processing of one Gaussian (or Laplace)
mechanism.

Feature map (public, fixed before any data is seen)
----------------------------------------------------
For an image x in [-1, 1]^(C x H x W), v(x) is the average pooling of (x + 1) / 2 to
`feature_size` x `feature_size` cells per channel, flattened: p = C * feature_size^2 features (p = 64 for
one channel at the default 8), and v in [0, 1]^p for images in range. Then

    Gaussian variant:  psi(x) = v / max(||v||_2, r_2),   r_2 = rho * sqrt(p)
    Laplace variant:   psi(x) = v / max(||v||_1, r_1),   r_1 = rho * p,          rho = 1/2 (`NORM_FLOOR`)

*Norm bound.* If ||v|| >= r then ||psi|| = ||v|| / ||v|| = 1; otherwise ||psi|| = ||v|| / r < 1. So
||psi(x)||_2 <= 1 (resp. ||psi(x)||_1 <= 1) for EVERY finite input x, whatever its range: the bound does
not rely on the data being in [-1, 1]. (A zero image gives psi = 0; the floor r > 0 also keeps the map
and its gradient finite there.)
*Why this floor.* rho = 1 would give psi = v / sqrt(p), linear but with half the signal of typical brain
slices; rho -> 0 gives unit-norm features, which erase image brightness. With rho = 1/2 an image keeps
its brightness linearly unless its pooled cells' RMS (mean for the Laplace variant) exceeds 1/2, which a
brain slice surrounded by background rarely does; brighter images are projected onto the unit sphere.
rho is a fixed public constant, not tuned on training data. psi is differentiable (almost everywhere), so
the generator is trained through it.

Discriminator and loss
----------------------
D(x) = w^T psi(x) + c (a linear logistic head, `FunctionalDiscriminator`). With phi = (1, psi) in R^(p+1) and
u = (c, w), the score is s = u^T phi. The real-data loss sum_i log(1 + exp(-s_i)) is replaced by its
second-order Taylor expansion at s = 0, log 2 - s/2 + s^2/8:

    L_real(u) = sum_i [log 2 - s_i/2 + s_i^2/8] = n log 2 - (1/2) u^T M e_0 + (1/8) u^T M u,
    M = sum_i phi_i phi_i^T = [[n, S1^T], [S1, S2]],  n = #images, S1 = sum_i psi_i, S2 = sum_i psi_i psi_i^T,

(u^T M e_0 = sum_i s_i since phi_i0 = 1; u^T M u = sum_i s_i^2). The data enter only through M, which is
symmetric, so the released coefficient vector is its upper triangle (diagonal included), row-major:

    t(D) = sum_{x in D} tau(x),   tau(x) = triu(phi(x) phi(x)^T) = [1, psi, triu(psi psi^T)],

of length (p+1)(p+2)/2 (2145 for p = 64): the count n, then S1, then the upper triangle of S2.

Sensitivity (adjacency: replace one record, the study's relation, `dpmedgen.privacy.ledger.ADJACENCY`)
------------------------------------------------------------------------------------------------------
*Norm bound of one image.* Adding or removing x changes t by +-tau(x), whose norm is at most B = sup_x ||tau(x)||:
  L2: ||tau||_2^2 = 1 + ||psi||_2^2 + sum_{i<=j} psi_i^2 psi_j^2 <= 1 + ||psi||_2^2 + ||psi||_2^4 <= 3,
      hence B_2 = sqrt(3) (the triangle holds a subset of the entries of psi psi^T, whose Frobenius
      norm is ||psi||_2^2 <= 1).
  L1: ||tau||_1 = 1 + ||psi||_1 + sum_{i<=j} |psi_i psi_j| <= 1 + ||psi||_1 + ||psi||_1^2 <= 3,
      hence B_1 = 3.
*Replace one image* x by x': t(D) - t(D') = tau(x) - tau(x'), of norm at most ||tau(x)|| + ||tau(x')|| <= 2B,
hence Delta_2 = 2 sqrt(3) and Delta_1 = 6 per image (`L2_SENSITIVITY_PER_IMAGE`, `L1_SENSITIVITY_PER_IMAGE`).
*Replace one patient* P (k_P <= k images) by P' (k_P' <= k images): t(D) - t(D') = sum_{x in P} tau(x) -
sum_{x' in P'} tau(x'), whose norm is at most (k_P + k_P') B <= k * Delta by the triangle inequality (group
sensitivity; tighter than group privacy). k is
`max_images_per_patient`: when given to the constructor it is a public cap, enforced by keeping at most k
(randomly chosen) images of every patient, and the bound holds for every neighbouring dataset. When not
given, k is the largest image count of a patient in the training split; the guarantee then holds for
neighbours whose patients have at most k images, i.e. it treats k as public (it is fixed by the acquisition
protocol here, e.g. `slices_per_patient`, and is written to the ledger).

Calibration (`dpmedgen.privacy.mechanisms`, nothing computed by hand)
---------------------------------------------------------------------
The unit's sensitivity Delta_unit (Delta for unit "image", k * Delta for unit "patient") is calibrated to
the target epsilon:
  Gaussian: sigma = gaussian_sigma(eps, delta, Delta_2,unit) per coordinate: the analytic Gaussian
            mechanism (Balle & Wang, ICML 2018), (eps, delta)-DP.
  Laplace:  b = laplace_scale(eps, Delta_1,unit) per coordinate (b = Delta_1 / eps): eps-DP, delta = 0.
The ledger reports the epsilon of both units for the same noise, each computed by the accountant
(`gaussian_epsilon(sigma, Delta, delta)` / `laplace_epsilon(b, Delta)`) at Delta = Delta_per_image and
k * Delta_per_image. The noise is drawn once from a numpy Generator seeded from the mode's random root
(`dpmedgen.privacy.randomness`: a per-run secret by default; not a cryptographically secure generator).

Post-processing (free by the post-processing property of DP)
------------------------------------------------------------
The noisy vector is mirrored into a symmetric (p+1) x (p+1) matrix M~, which is projected onto the PSD
cone (eigenvalues clipped at 0): M^ = Pi_PSD(M~). Projecting the whole augmented matrix (not only S2) makes
the quadratic u -> -(1/2) u^T M^ e_0 + (1/8) u^T M^ u bounded below in (w, c) jointly (M^ e_0 lies in the
range of M^). The noisy count is clipped to n^ = max(n~, 1). The discriminator loss of a batch of b fakes is

    (b / n^) * [n^ log 2 - (1/2) u^T M^ e_0 + (1/8) u^T M^ u]  +  sum_fake BCE(D(fake), 0),

so real and fake terms have the per-example scale of the standard GAN loss. Only the head (w, c) is
trained by the discriminator optimizer; the generator is trained through D = w^T psi + c with D frozen.
Without noise, M^ = M and the real term is exactly (b/n) sum_i [log 2 - s_i/2 + s_i^2/8].

What this does NOT protect
--------------------------
Nothing beyond the stated unit and adjacency (replace one image, or one patient with at most k
images). It assumes psi (pooling size, rho) is public and fixed before seeing the data. The exact training
set sizes written beside the ledger by the trainer, and k itself, are not privatised. Floating-point
effects on the noise (Mironov, CCS 2012) are not addressed; the release is computed in float64.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dpmedgen.privacy.base import PrivacyMode, TrainingData
from dpmedgen.privacy.ledger import ADJACENCY, adjacency_statement
from dpmedgen.privacy.mechanisms import gaussian_epsilon, gaussian_sigma, laplace_epsilon, laplace_scale

NOISES = ("gaussian", "laplace")
#: rho: the norm floor as a fraction of the largest norm of v in [0, 1]^p (sqrt(p) for L2, p for L1).
NORM_FLOOR = 0.5
#: Norm bound of tau(x) = [1, psi, triu(psi psi^T)] for ||psi|| <= 1 (see the module docstring).
L2_NORM_BOUND = math.sqrt(3.0)
L1_NORM_BOUND = 3.0
#: Per-image sensitivity of t(D) under replace-one adjacency: ||tau(x) - tau(x')|| <= 2 * bound.
L2_SENSITIVITY_PER_IMAGE = 2.0 * L2_NORM_BOUND
L1_SENSITIVITY_PER_IMAGE = 2.0 * L1_NORM_BOUND
_CHUNK = 1024


class FeatureMap(nn.Module):
    """psi(x) = v / max(||v||, r): v = (x+1)/2 average-pooled to `feature_size`^2 cells per channel.

    ||psi(x)|| <= 1 (L2 for norm="l2", L1 for norm="l1") for every finite input x.
    """

    def __init__(self, feature_size: int, channels: int, norm: str) -> None:
        super().__init__()
        if norm not in ("l2", "l1"):
            raise ValueError(f"norm must be 'l2' or 'l1'; got {norm!r}")
        self.feature_size = int(feature_size)
        self.channels = int(channels)
        self.norm = norm
        self.n_features = self.channels * self.feature_size**2
        self.floor = NORM_FLOOR * (math.sqrt(self.n_features) if norm == "l2" else self.n_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.channels or x.shape[2] != x.shape[3] or x.shape[2] % self.feature_size:
            raise ValueError(
                f"functional: expected (N, {self.channels}, H, H) images with H divisible by {self.feature_size}; got {tuple(x.shape)}"
            )
        v = F.avg_pool2d((x + 1.0) / 2.0, kernel_size=x.shape[2] // self.feature_size).flatten(1)
        ord_ = 2 if self.norm == "l2" else 1
        return v / torch.linalg.vector_norm(v, ord=ord_, dim=1, keepdim=True).clamp(min=self.floor)

    def describe(self) -> str:
        if self.norm == "l2":
            bound, floor = "||psi||_2 <= 1", f"{NORM_FLOOR:g}*sqrt(p)"
        else:
            bound, floor = "||psi||_1 <= 1", f"{NORM_FLOOR:g}*p"
        return (
            f"psi(x) = v / max(||v||_{self.norm[1]}, r), v = {self.feature_size}x{self.feature_size} average pooling "
            f"of (x+1)/2 per channel, p = {self.n_features}, r = {floor} = {self.floor:g}; {bound} for every input"
        )


class FunctionalDiscriminator(nn.Module):
    """D(x) = w^T psi(x) + c: a linear logistic head on the public feature map, initialised at w = 0, c = 0
    (the Taylor expansion point s = 0)."""

    def __init__(self, feature_map: FeatureMap) -> None:
        super().__init__()
        self.psi = feature_map
        self.head = nn.Linear(feature_map.n_features, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.psi(x)).view(x.shape[0])

    def coefficients_vector(self) -> torch.Tensor:
        """u = (c, w) in R^(p+1), so that D(x) = u^T (1, psi(x))."""
        return torch.cat([self.head.bias.view(1), self.head.weight.view(-1)])


class FunctionalMechanism(PrivacyMode):
    name = "functional"
    #: The polynomial objective is the logistic loss of an unconditional GAN's discriminator. A fusion
    #: generator reads real images as its input and a diffusion denoiser's loss is not a function of a
    #: fixed feature map, so neither can be trained from released coefficients alone.
    supported_kinds = frozenset({"gan"})

    def __init__(
        self,
        *,
        target_epsilon: float,
        delta: float,
        seed: int | None = None,
        unit: str = "patient",
        noise: str = "gaussian",
        feature_size: int = 8,
        max_images_per_patient: int | None = None,
    ) -> None:
        super().__init__(target_epsilon=target_epsilon, delta=delta, seed=seed, unit=unit)
        if not (math.isfinite(self.target_epsilon) and self.target_epsilon > 0):
            raise ValueError(f"functional needs a finite target epsilon > 0; got {target_epsilon}")
        if noise not in NOISES:
            raise ValueError(f"functional: noise must be one of {NOISES}; got {noise!r}")
        if noise == "gaussian" and not 0 < self.delta < 1:
            raise ValueError(f"functional with Gaussian noise needs 0 < delta < 1; got {delta}")
        if noise == "laplace" and not 0 <= self.delta < 1:
            raise ValueError(f"functional: delta must be in [0, 1); got {delta}")
        if isinstance(feature_size, bool) or int(feature_size) != feature_size or feature_size < 2 or feature_size & (feature_size - 1):
            raise ValueError(f"functional: feature_size must be a power of two >= 2; got {feature_size!r}")
        if max_images_per_patient is not None and (
            isinstance(max_images_per_patient, bool) or int(max_images_per_patient) != max_images_per_patient or max_images_per_patient < 1
        ):
            raise ValueError(f"functional: max_images_per_patient must be a positive integer or None; got {max_images_per_patient!r}")
        self.noise = noise
        self.feature_size = int(feature_size)
        self.max_images_cap = None if max_images_per_patient is None else int(max_images_per_patient)
        self._head: FunctionalDiscriminator | None = None
        self._released: np.ndarray | None = None  # the noisy coefficient vector (the only thing released)
        self._moment: torch.Tensor | None = None  # M^ = Pi_PSD(sym(released)), (p+1) x (p+1)
        self._n_hat: float | None = None
        self._noise_scale: float | None = None
        self._k: int | None = None
        self._n_units = 0
        self._n_images_used = 0
        self._n_images_dropped = 0
        self._eps_image: float | None = None
        self._eps_patient: float | None = None

    # ----------------------------------------------------------------------------------------------- release
    @property
    def _sensitivity_per_image(self) -> float:
        return L2_SENSITIVITY_PER_IMAGE if self.noise == "gaussian" else L1_SENSITIVITY_PER_IMAGE

    @staticmethod
    @torch.no_grad()
    def _exact_coefficients(psi: FeatureMap, images: torch.Tensor) -> np.ndarray:
        """t(D) = sum_i triu(phi_i phi_i^T), phi_i = (1, psi(x_i)), in float64 (no noise)."""
        p = psi.n_features
        m = torch.zeros(p + 1, p + 1, dtype=torch.float64)
        for start in range(0, len(images), _CHUNK):
            feats = psi(images[start : start + _CHUNK].detach().to("cpu", torch.float64))
            phi = torch.cat([torch.ones(len(feats), 1, dtype=torch.float64), feats], dim=1)
            m += phi.T @ phi
        iu = np.triu_indices(p + 1)
        return m.numpy()[iu]

    def _select_images(self, data: TrainingData) -> tuple[torch.Tensor, int]:
        """The images the release reads and k, the most any patient contributes."""
        counts = data.images_per_patient()
        if self.max_images_cap is None:
            return data.images, int(counts.max())
        rng = np.random.default_rng(self.rng_seed("image_cap"))
        keep = np.zeros(data.n_images, dtype=bool)
        for patient in range(data.n_patients):
            idx = np.flatnonzero(data.patient_index == patient)
            if len(idx) > self.max_images_cap:
                idx = rng.choice(idx, size=self.max_images_cap, replace=False)
            keep[idx] = True
        self._n_images_dropped = int((~keep).sum())
        return data.images[torch.as_tensor(keep, device=data.images.device)], self.max_images_cap

    def _set_coefficients(self, released: np.ndarray) -> None:
        """Post-processing of a released coefficient vector: symmetrise, project onto the PSD cone, clip n."""
        assert self._head is not None
        p1 = self._head.psi.n_features + 1
        released = np.asarray(released, dtype=np.float64)
        if released.shape != (p1 * (p1 + 1) // 2,):
            raise ValueError(f"expected {p1 * (p1 + 1) // 2} coefficients, got {released.shape}")
        m = np.zeros((p1, p1))
        m[np.triu_indices(p1)] = released
        m = np.triu(m) + np.triu(m, 1).T
        eigval, eigvec = np.linalg.eigh(m)
        m_psd = (eigvec * np.clip(eigval, 0.0, None)) @ eigvec.T
        m_psd = (m_psd + m_psd.T) / 2.0
        device = self._head.head.weight.device
        self._released = released.copy()
        self._moment = torch.as_tensor(m_psd, dtype=torch.float32, device=device)
        self._n_hat = max(float(released[0]), 1.0)

    def attach(self, model, nets, optimizers, data, batch_size, steps):
        """Release the noisy coefficients once; replace the discriminator by the linear head on psi (with an
        Adam optimizer over it that takes the discriminator's lr and betas); return no loader.
        """
        if self._head is not None:
            raise RuntimeError("functional: attach was already called; the coefficients are released only once")
        images = data.images
        if images.ndim != 4:
            raise ValueError(f"functional: expected images of shape (N, C, H, W); got {tuple(images.shape)}")
        _, channels, height, width = images.shape
        if height != width or height % self.feature_size or self.feature_size > height:
            raise ValueError(
                f"functional: feature_size={self.feature_size} must divide the image size; images are {height}x{width}. "
                "Choose a power of two <= the (square) image size."
            )
        if not bool(torch.isfinite(images).all()):
            raise ValueError("functional: the training images hold non-finite values")
        self._n_units = data.n_patients if self.unit == "patient" else data.n_images
        if self.noise == "gaussian" and self.delta >= 1.0 / self._n_units:
            raise ValueError(
                f"delta={self.delta:g} is not below 1/N = 1/{self._n_units} training {self.unit}s; "
                "a delta that large permits releasing a whole record. Lower `privacy.delta` in config.yaml."
            )

        head = FunctionalDiscriminator(FeatureMap(self.feature_size, channels, "l2" if self.noise == "gaussian" else "l1"))
        head.to(images.device)
        self._head = head
        used, k = self._select_images(data)
        self._k, self._n_images_used = k, len(used)

        # Calibration: the unit's sensitivity sets the noise; both units' epsilons come from the accountant.
        delta_image = self._sensitivity_per_image
        delta_patient = k * delta_image
        delta_unit = delta_patient if self.unit == "patient" else delta_image
        if self.noise == "gaussian":
            scale = gaussian_sigma(self.target_epsilon, self.delta, delta_unit)
            self._eps_image = gaussian_epsilon(scale, delta_image, self.delta)
            self._eps_patient = gaussian_epsilon(scale, delta_patient, self.delta)
        else:
            scale = laplace_scale(self.target_epsilon, delta_unit)
            self._eps_image = laplace_epsilon(scale, delta_image)
            self._eps_patient = laplace_epsilon(scale, delta_patient)
        self._noise_scale = float(scale)
        if self.epsilon_spent() > self.target_epsilon * (1 + 1e-6):
            raise RuntimeError(f"functional: calibrated epsilon {self.epsilon_spent()} exceeds target {self.target_epsilon}")

        # The release: the only read of real data.
        exact = self._exact_coefficients(head.psi, used)
        rng = np.random.default_rng(self.rng_seed("functional_noise"))
        if self.noise == "gaussian":
            noise = rng.normal(0.0, self._noise_scale, size=exact.shape)
        else:
            noise = rng.laplace(0.0, self._noise_scale, size=exact.shape)
        self._set_coefficients(exact + noise)
        del exact, noise, used

        group = optimizers["discriminator"].param_groups[0]
        nets = dict(nets, discriminator=head)
        optimizers = dict(optimizers, discriminator=torch.optim.Adam(head.parameters(), lr=group["lr"], betas=group["betas"]))
        return nets, optimizers, {}

    # -------------------------------------------------------------------------------------------- training
    def _real_loss(self, disc: FunctionalDiscriminator, batch: int) -> torch.Tensor:
        """(batch / n^) * [n^ log 2 - u^T M^ e_0 / 2 + u^T M^ u / 8], from the released coefficients only."""
        if self._moment is None or self._n_hat is None:
            raise RuntimeError("functional: call attach before training")
        u = disc.coefficients_vector()
        mu = self._moment @ u
        poly = self._n_hat * math.log(2.0) - 0.5 * mu[0] + 0.125 * (u @ mu)
        return (batch / self._n_hat) * poly

    def public_loss(self, model, player, nets, batch_size):
        """None: the discriminator loss below already holds its generated half."""
        return None

    def player_loss(self, model, player, nets, real, batch_size):
        """Discriminator: per fake j, (1 / n^) * polynomial + BCE(D(fake_j), 0), so the batch sums to
        (b / n^) * polynomial + sum_fake BCE; the generator's loss is the model's own."""
        if player.name != "discriminator":
            return super().player_loss(model, player, nets, real, batch_size)
        assert real is None, "functional: the training loop must not pass real data (attach returned no loader)"
        disc = nets["discriminator"]
        if disc is not self._head:
            raise RuntimeError("functional: the discriminator must be the head returned by attach")
        device = self._moment.device
        with torch.no_grad():
            fake = nets["generator"](model.sample_latent(batch_size, device=device))
        fake_loss = nn.functional.binary_cross_entropy_with_logits(
            disc(fake), torch.zeros(batch_size, device=device), reduction="none"
        )
        return self._real_loss(disc, 1) + fake_loss

    def state_dict(self) -> dict[str, Any]:
        return {} if self._released is None else {"released": torch.from_numpy(self._released)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A resumed run keeps the first release (re-releasing from the restored random root would give the
        same vector; keeping it makes that explicit)."""
        if "released" in state:
            self._set_coefficients(state["released"].numpy())

    # -------------------------------------------------------------------------------------------- accounting
    def epsilon_spent(self) -> float:
        if self._eps_image is None or self._eps_patient is None:
            return 0.0
        return self._eps_patient if self.unit == "patient" else self._eps_image

    def ledger(self) -> dict[str, Any]:
        if self._head is None or self._noise_scale is None:
            raise RuntimeError("functional: no ledger before attach (nothing has been released)")
        epsilon = self.epsilon_spent()
        if epsilon > self.target_epsilon * (1 + 1e-6):
            raise RuntimeError(f"functional spent epsilon {epsilon:.6g} > target {self.target_epsilon}")
        gaussian = self.noise == "gaussian"
        p = self._head.psi.n_features
        sens_key = "l2_sensitivity_per_image" if gaussian else "l1_sensitivity_per_image"
        mech = "Gaussian mechanism (analytic calibration, Balle & Wang 2018)" if gaussian else "Laplace mechanism (pure DP)"
        return {
            "mechanism": "functional",
            "guarantee": "formal",
            "unit": self.unit,
            "adjacency": ADJACENCY,
            "adjacency_statement": adjacency_statement(self.unit) + (
                f" (patients have at most k = {self._k} images)" if self.unit == "patient" else ""),
            "epsilon_spent": epsilon,
            "epsilon_target": self.target_epsilon,
            "epsilon_per_image": self._eps_image,
            "epsilon_per_patient": self._eps_patient,
            "delta": self.delta if gaussian else 0.0,
            "noise": self.noise,
            "noise_scale": self._noise_scale,
            sens_key: self._sensitivity_per_image,
            "sensitivity": self._sensitivity_per_image * (self._k if self.unit == "patient" else 1),
            "max_images_per_patient": self._k,
            "max_images_per_patient_source": (
                "public cap (constructor), enforced by subsampling" if self.max_images_cap is not None
                else "largest count in the training split, treated as public"
            ),
            "n_images_dropped_by_cap": self._n_images_dropped,
            "feature_map": self._head.psi.describe(),
            "n_features": p,
            "n_coefficients": (p + 1) * (p + 2) // 2,
            "taylor_order": 2,
            "releases": 1,
            "post_processing": "symmetrise, project the (p+1)x(p+1) moment matrix onto the PSD cone, clip the count at 1",
            "theorem": (
                f"{mech} on the coefficient vector [n, sum psi, triu(sum psi psi^T)], replace-one per-image "
                f"sensitivity {'2 sqrt(3)' if gaussian else '6'} from ||psi|| <= 1; patient-level by group "
                "sensitivity k*Delta; training is post-processing"
            ),
            "noise_source": "numpy Generator seeded from the mode's random root (see `randomness`; not a "
            "cryptographically secure generator)",
            "protected_networks": ["discriminator head"],
        }
