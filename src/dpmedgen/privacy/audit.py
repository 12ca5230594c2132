"""One-run privacy auditing of DP-SGD as implemented: white-box gradient canaries and black-box input canaries.

Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023. m canaries are each
included in the training run independently with probability 1/2. After training, the auditor scores every
canary, guesses "included" for the k+ highest scores and "excluded" for the k- lowest (abstaining on the rest),
and counts its correct guesses v of r = k+ + k-. If the training run is (eps, delta)-DP with respect to each
canary's inclusion, v is stochastically dominated by Binomial(r, e^eps / (1 + e^eps)) up to a delta term
(their Theorem 3.1 / Proposition 5.2): `p_value` is the probability of >= v correct guesses under that null
hypothesis, and `epsilon_lower_bound` the largest eps whose p-value is below 1 - confidence. A run whose
epsilon_lower exceeds its claimed epsilon is not (claimed eps, delta)-DP: a wrong accountant, a missing noise
term, a clipping bug.

White-box gradient canaries (`GradientCanaries`): canary c is a fixed direction u_c in the private network's
parameter space (unit L2 norm over all parameters, drawn once), contributing C u_c (C = `max_grad_norm`, the
largest contribution a clipped patient can make) to the clipped sum of a step when it is sampled. Canaries
are Poisson-sampled with the patients' rate q, so each is a record of the same sampled Gaussian mechanism as a
patient, and the run's guarantee for adding one record covers it. The auditor observes every noisy sum (the
white-box threat model of Steinke et al. Section 6, "all iterates") and scores canary c by
sum_t <noisy sum_t, u_c>. This audits the optimizer step, the clipping norm, the sampling, the noise and the
accountant as they run in `dpmedgen.privacy.dpsgd` (the fast path; `NoisyStep` carries the canaries).

Guesses are made without looking at the scores' fit: k+ = k- = f m for each f in `GUESS_FRACTIONS`, fixed in
advance, each tested at confidence 1 - (1 - confidence) / len(GUESS_FRACTIONS) (Bonferroni), the largest
bound reported.

The canaries' inclusion is an add/remove experiment: the null hypothesis uses the run's claimed epsilon, which
(replace-one, the study's relation) is at least its add/remove epsilon, and the ledger's delta.

Black-box input canaries (`InputCanaries`): m training patients, chosen at random, each with a distinct random
balanced code of `CODE_BITS` (64) binary cells written into the four corners of every one of their images
(white +1 / black -1 on the training scale) if and only if the canary is included (probability 1/2). An
excluded canary patient trains on their own images unchanged, so inclusion replaces one patient's record by
another (the study's replace-one relation, compared directly with the claimed epsilon), the number of patients
N, the sample rate q and the calibrated sigma stay those of the study's run, and canary patients go through the
same sampler, slice choice, clipping and noise as every patient. The auditor sees only samples of the trained
generator and scores canary c by max_s corr(s, c): the largest Pearson correlation, over the samples s, of
the sample's 64 corner-cell means with the canary's +-1 code (0 for a sample whose cells are all equal); a
release that reproduces a canary's corners scores 1. The cells are those of the canary marker
(`dpmedgen.data.canary`: 4 x 4 cells of max(1, size // 32) pixels at size // 16 from the edge), in each corner.

>>> round(epsilon_lower_bound(m=1000, r=100, v=100, delta=0.0), 3)  # all correct: q^100 = 0.05, eps = logit(q)
3.493
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from dpmedgen.privacy.base import TrainingData
from dpmedgen.privacy.dpsgd import DPSGD

#: Guess k+ = k- = fraction * m canaries, for each fraction: fixed before any score is seen.
GUESS_FRACTIONS = (0.05, 0.1, 0.2)
THREAT_MODEL = "white-box: gradient canaries, every noisy update observed"
BLACK_BOX = "black-box: canary patients, only generated samples observed"
#: Cells of one corner block of an input canary's code (the canary marker's geometry), and bits per code.
CORNER_CELLS = 4
CODE_BITS = 4 * CORNER_CELLS * CORNER_CELLS


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P[>= v correct guesses of r | the run is (epsilon, delta)-DP w.r.t. each of m canaries] (Steinke et al.
    2023, Proposition 5.2): P[Binomial(r, p) >= v] + 2 m delta max_i P[v > Binomial(r, p) >= v - i] / i,
    p = e^eps / (1 + e^eps), the accuracy of eps-DP randomized response."""
    from scipy.stats import binom

    if not (0 <= v <= r <= m) or epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need 0 <= v <= r <= m, epsilon >= 0, 0 <= delta <= 1; got {m}, {r}, {v}, {epsilon}, {delta}")
    p = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, p))
    if delta == 0.0 or v == 0:
        return min(tail, 1.0)
    below = np.cumsum(binom.pmf(v - np.arange(1, v + 1), r, p))  # P[v > B >= v - i], i = 1..v
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * delta * alpha, 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon at which `v` correct guesses of `r` would have a p-value below 1 - `confidence`
    (bisection on `p_value`, which grows with epsilon); 0 when even epsilon = 0 is not rejected."""
    alpha = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    lo, hi = 0.0, 1.0
    while p_value(m, r, v, hi, delta) < alpha:
        lo, hi = hi, 2.0 * hi
        if hi > 1e3:
            return math.inf
    for _ in range(60):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if p_value(m, r, v, mid, delta) < alpha else (lo, mid)
    return lo


def audit_scores(scores: np.ndarray, included: np.ndarray, delta: float, confidence: float = 0.95) -> dict[str, Any]:
    """The one-run bound from canary scores (higher = "included"): for each fraction of `GUESS_FRACTIONS`,
    guess the top and bottom fraction * m, count the correct guesses, bound at Bonferroni-corrected confidence;
    the largest bound, with its counts."""
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    m = len(scores)
    order = np.argsort(-scores, kind="stable")
    each = 1.0 - (1.0 - confidence) / len(GUESS_FRACTIONS)
    best = {"epsilon_lower": 0.0, "n_guesses": 0, "n_correct": 0}
    for fraction in GUESS_FRACTIONS:
        k = max(1, int(fraction * m))
        if 2 * k > m:
            continue
        correct = int(included[order[:k]].sum() + (~included[order[-k:]]).sum())
        bound = epsilon_lower_bound(m, 2 * k, correct, delta, each)
        if bound > best["epsilon_lower"] or not best["n_guesses"]:
            best = {"epsilon_lower": bound, "n_guesses": 2 * k, "n_correct": correct}
    return best | {"n_canaries": m, "confidence": confidence}


class GradientCanaries:
    """`m` white-box gradient canaries of one private network (see the module docstring).

    `add_to_clipped_sum` runs before the noise is drawn (each included canary Poisson-sampled at `sample_rate`
    adds `max_grad_norm` * u_c to `.grad`), `observe` after it (accumulates <noisy sum, u_c>)."""

    def __init__(self, params: list[nn.Parameter], m: int, max_grad_norm: float, sample_rate: float, seed: int) -> None:
        if m < 2:
            raise ValueError(f"an audit needs at least 2 canaries; got {m}")
        self.shapes = [p.shape for p in params]
        dim = sum(p.numel() for p in params)
        self.generator = torch.Generator().manual_seed(seed)
        directions = torch.randn(m, dim, generator=self.generator)
        self.directions = directions / directions.norm(dim=1, keepdim=True)
        self.included = torch.rand(m, generator=self.generator) < 0.5
        self.max_grad_norm = float(max_grad_norm)
        self.sample_rate = float(sample_rate)
        self.sums: list[torch.Tensor] = []  # every observed noisy sum (T x d in all)

    def _flat_grad(self, params: list[nn.Parameter]) -> torch.Tensor:
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])

    def _set_flat_grad(self, params: list[nn.Parameter], flat: torch.Tensor) -> None:
        start = 0
        for p in params:
            n = p.numel()
            p.grad = flat[start : start + n].view_as(p).to(p.dtype)
            start += n

    @torch.no_grad()
    def add_to_clipped_sum(self, params: list[nn.Parameter]) -> None:
        sampled = self.included & (torch.rand(len(self.included), generator=self.generator) < self.sample_rate)
        if sampled.any():
            contribution = self.max_grad_norm * self.directions[sampled].sum(dim=0)
            self._set_flat_grad(params, self._flat_grad(params) + contribution)

    @torch.no_grad()
    def observe(self, params: list[nn.Parameter]) -> None:
        self.sums.append(self._flat_grad(params).float().clone())

    @torch.no_grad()
    def scores(self) -> np.ndarray:
        """sum_t <S_t, u_c> for every canary c, S_t the observed noisy sums."""
        return (self.directions @ torch.stack(self.sums).sum(dim=0)).double().numpy()

    def audit(self, delta: float, confidence: float = 0.95) -> dict[str, Any]:
        return audit_scores(self.scores(), self.included.numpy(), delta, confidence)


def _code_geometry(height: int, width: int) -> tuple[int, list[tuple[int, int]]]:
    """(cell size, the top-left pixel of each of the four corner blocks) of an input canary's code."""
    size = min(height, width)
    cell, offset = max(1, size // 32), size // 16
    block = CORNER_CELLS * cell
    if 2 * (offset + block) > size:
        raise ValueError(f"images of {height}x{width} are too small for input canary codes")
    far_row, far_col = height - offset - block, width - offset - block
    return cell, [(offset, offset), (offset, far_col), (far_row, offset), (far_row, far_col)]


def code_cells(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """The `CODE_BITS` corner-cell means of each image (N, H, W) or (N, C, H, W) (first channel), float64
    (N, CODE_BITS), in the order `paint_codes` writes them."""
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.ndim == 4:
        x = x[:, 0]
    cell, corners = _code_geometry(*x.shape[-2:])
    block = CORNER_CELLS * cell
    parts = [
        x[:, r : r + block, c : c + block]
        .astype(np.float64)
        .reshape(len(x), CORNER_CELLS, cell, CORNER_CELLS, cell)
        .mean(axis=(2, 4))
        .reshape(len(x), -1)
        for r, c in corners
    ]
    return np.concatenate(parts, axis=1)


def paint_codes(height: int, width: int, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(patterns (n, H, W) float32 holding each code's cell values, mask (H, W) bool of the code's pixels)."""
    codes = np.asarray(codes, dtype=np.float32)
    cell, corners = _code_geometry(height, width)
    block = CORNER_CELLS * cell
    patterns = np.zeros((len(codes), height, width), dtype=np.float32)
    mask = np.zeros((height, width), dtype=bool)
    per_corner = CORNER_CELLS * CORNER_CELLS
    for k, (r, c) in enumerate(corners):
        cells = codes[:, k * per_corner : (k + 1) * per_corner].reshape(len(codes), CORNER_CELLS, CORNER_CELLS)
        patterns[:, r : r + block, c : c + block] = np.repeat(np.repeat(cells, cell, axis=1), cell, axis=2)
        mask[r : r + block, c : c + block] = True
    return patterns, mask


def code_correlations(samples: torch.Tensor | np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Pearson correlation of every sample's corner cells with every code, (n_samples, n_codes); 0 for a
    sample whose cells are all equal."""
    cells = code_cells(samples)
    cells = cells - cells.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(cells, axis=1, keepdims=True)
    cells = np.divide(cells, norms, out=np.zeros_like(cells), where=norms > 1e-9)
    codes = np.asarray(codes, dtype=np.float64)
    codes = codes - codes.mean(axis=1, keepdims=True)
    return cells @ (codes / np.linalg.norm(codes, axis=1, keepdims=True)).T


class InputCanaries:
    """`m` black-box input canaries among the patients of `data` (see the module docstring).

    The canary patients (never one of `exclude`, e.g. the carriers of the `canary` metric's marker), their
    codes (balanced: half the cells white) and their inclusion (each independently with probability 1/2)
    are drawn from `seed`. With `unit` "patient" every image of an included canary patient carries the code;
    with "image" (the record is one image) only the patient's first image does."""

    def __init__(
        self,
        data: TrainingData,
        m: int,
        seed: int,
        exclude: set[str] | frozenset[str] = frozenset(),
        unit: str = "patient",
    ) -> None:
        if m < 2:
            raise ValueError(f"an audit needs at least 2 canaries; got {m}")
        if unit not in ("patient", "image"):
            raise ValueError(f"unit must be 'patient' or 'image'; got {unit!r}")
        candidates = np.flatnonzero(~np.isin(data.patients.astype(str), sorted(exclude)))
        if m > len(candidates):
            raise ValueError(
                f"{m} canary patients requested, but the audited training set has {len(candidates)} eligible "
                f"patients (of {data.n_patients}); lower audit.n_canary_patients"
            )
        _code_geometry(*data.images.shape[-2:])
        rng = np.random.default_rng(seed)
        self.patients = np.sort(rng.choice(candidates, size=m, replace=False))  # indices into data.patients
        half = np.repeat([1.0, -1.0], CODE_BITS // 2)
        self.codes = np.stack([rng.permutation(half) for _ in range(m)])
        self.included = rng.random(m) < 0.5
        self.unit = unit

    def plant(self, data: TrainingData) -> TrainingData:
        """`data` with the code of every included canary written into its patient's images (every channel)."""
        canary_of = np.full(data.n_patients, -1)
        canary_of[self.patients[self.included]] = np.flatnonzero(self.included)
        rows = canary_of[data.patient_index]
        if self.unit == "image":  # only the first image of each patient
            first = np.zeros(data.n_images, dtype=bool)
            first[np.unique(data.patient_index, return_index=True)[1]] = True
            rows = np.where(first, rows, -1)
        coded = np.flatnonzero(rows >= 0)
        patterns, mask = paint_codes(*data.images.shape[-2:], self.codes)
        images = data.images.clone()
        part = images[torch.from_numpy(coded)]
        where = torch.from_numpy(mask)
        part[..., where] = torch.from_numpy(patterns[rows[coded]][:, None][..., mask]).to(part.dtype)
        images[torch.from_numpy(coded)] = part
        return TrainingData(images=images, patient_ids=data.patient_ids, labels=data.labels)

    def scores(self, samples: torch.Tensor | np.ndarray) -> np.ndarray:
        """max over `samples` of corr(sample, code), per canary (higher = "included")."""
        if len(samples) == 0:
            raise ValueError("the black-box audit needs at least one sample")
        return code_correlations(samples, self.codes).max(axis=0)

    def audit(self, samples: torch.Tensor | np.ndarray, delta: float, confidence: float = 0.95) -> dict[str, Any]:
        return audit_scores(self.scores(samples), self.included, delta, confidence) | {"n_samples": len(samples)}


class AuditedDPSGD(DPSGD):
    """DP-SGD (fast clipping) with `n_canaries` white-box gradient canaries in every private network: the
    mechanism, calibration and ledger are DP-SGD's own; only the canaries' records are added. For audits
    only: never for a released run."""

    name = "dpsgd"

    def __init__(self, *, n_canaries: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.clipping != "fast":
            raise ValueError("the one-run audit instruments the fast DP-SGD path (privacy.dpsgd.clipping: fast)")
        self.n_canaries = int(n_canaries)
        self.canaries: dict[str, GradientCanaries] = {}

    def _make_fast(self, model, name, nets, optimizers, loader):
        net, optimizer, dp_loader = super()._make_fast(model, name, nets, optimizers, loader)
        index = len(self.canaries)
        self.canaries[name] = GradientCanaries(
            optimizer.params, self.n_canaries, self.max_grad_norm, self.sample_rate, self.rng_seed("canaries", index)
        )
        optimizer.canaries = self.canaries[name]
        return net, optimizer, dp_loader

    def audit(self, confidence: float = 0.95) -> dict[str, Any]:
        """The largest one-run bound over the private networks (each audited with its own canaries), with the
        claimed epsilon of the ledger."""
        results = [c.audit(self.delta, confidence) | {"network": name} for name, c in self.canaries.items()]
        best = max(results, key=lambda r: r["epsilon_lower"])
        return best | {"epsilon_claimed": self.epsilon_spent(), "delta": self.delta, "threat_model": THREAT_MODEL}
