"""One-run privacy auditing of DP-SGD as implemented: white-box gradient canaries.

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

>>> round(epsilon_lower_bound(m=1000, r=100, v=100, delta=0.0), 3)  # all correct: q^100 = 0.05, eps = logit(q)
3.493
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from dpmedgen.privacy.dpsgd import DPSGD

#: Guess k+ = k- = fraction * m canaries, for each fraction: fixed before any score is seen.
GUESS_FRACTIONS = (0.05, 0.1, 0.2)
THREAT_MODEL = "white-box: gradient canaries, every noisy update observed"


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
