"""Calibration and accounting of the Laplace and Gaussian mechanisms, through Google's dp-accounting.

A mechanism releases f(D) + Z. With L1 sensitivity Δ₁ = max ‖f(D) − f(D')‖₁ over neighbouring datasets,
Laplace noise of scale b per coordinate gives ε = Δ₁ / b (pure DP; Dwork et al. 2006). With L2
sensitivity Δ₂, Gaussian noise of standard deviation σ per coordinate gives (ε, δ)-DP exactly when
σ / Δ₂ is at least the analytic Gaussian mechanism's multiplier (Balle & Wang, ICML 2018), which
dp-accounting computes. Epsilons of repeated releases (e.g. one per image of a patient) are composed
with dp-accounting's privacy-loss-distribution (PLD) accountant, which gives a tight upper bound.
"""

from __future__ import annotations

import math

# dp-accounting is imported where it is used: it pulls in scipy.signal and scipy.stats (~0.9 s), which every
# job importing dpmedgen.privacy (sampling, evaluation, figures) would otherwise pay.

PLD_DISCRETIZATION = 1e-4


def _check(epsilon: float, delta: float | None = None) -> None:
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"epsilon must be finite and > 0; got {epsilon}")
    if delta is not None and not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1); got {delta}")


def gaussian_sigma(epsilon: float, delta: float, l2_sensitivity: float) -> float:
    """Smallest σ for which x + N(0, σ² I) is (ε, δ)-DP at L2 sensitivity Δ₂ (analytic Gaussian mechanism)."""
    _check(epsilon, delta)
    from dp_accounting import gaussian_mechanism

    return l2_sensitivity * gaussian_mechanism.get_sigma_gaussian(epsilon, delta)


def laplace_scale(epsilon: float, l1_sensitivity: float) -> float:
    """Smallest Laplace scale b for which x + Lap(b)^d is ε-DP at L1 sensitivity Δ₁ (b = Δ₁ / ε)."""
    _check(epsilon)
    from dp_accounting.pld import accountant as pld_accountant
    from dp_accounting.pld import common as pld_common

    params = pld_common.DifferentialPrivacyParameters(epsilon=epsilon, delta=0.0)
    return pld_accountant.get_smallest_laplace_noise(params, num_queries=1, sensitivity=l1_sensitivity)


def _pld_epsilon(event, count: int, delta: float) -> float:
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    accountant = PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)
    accountant.compose(event, count)
    return float(accountant.get_epsilon(delta))


def gaussian_epsilon(sigma: float, l2_sensitivity: float, delta: float, compositions: int = 1) -> float:
    """ε at δ of `compositions` releases, each Gaussian with std σ at L2 sensitivity Δ₂ (PLD accountant)."""
    from dp_accounting import dp_event

    return _pld_epsilon(dp_event.GaussianDpEvent(sigma / l2_sensitivity), compositions, delta)


def laplace_epsilon(scale: float, l1_sensitivity: float, delta: float = 0.0, compositions: int = 1) -> float:
    """ε at δ of `compositions` releases, each Laplace with scale b at L1 sensitivity Δ₁ (PLD accountant;
    at δ = 0 this is the basic composition k·Δ₁/b, which is tight for pure DP)."""
    if delta == 0.0:
        return compositions * l1_sensitivity / scale
    from dp_accounting import dp_event

    return _pld_epsilon(dp_event.LaplaceDpEvent(scale / l1_sensitivity), compositions, delta)


def group_privacy(epsilon: float, delta: float, group_size: int) -> tuple[float, float]:
    """(ε, δ) for groups of `group_size` records from an (ε, δ)-DP guarantee for one record.

    Group privacy (Dwork & Roth 2014, Thm 2.2, extended to approximate DP; Vadhan 2017, Lemma 2.2):
    (ε, δ)-DP for one record implies (kε, k·e^((k−1)ε)·δ)-DP for any k records. No kept library
    (Opacus, dp-accounting) provides this conversion, so it is written here. δ grows exponentially in k:
    when the result reaches 1 the statement is vacuous, which this returns as (inf, 1.0).
    """
    k = int(group_size)
    if k < 1:
        raise ValueError(f"group_size must be >= 1; got {group_size}")
    group_delta = k * math.exp((k - 1) * epsilon) * delta if delta > 0 else 0.0
    if group_delta >= 1.0:
        return math.inf, 1.0
    return k * epsilon, group_delta
