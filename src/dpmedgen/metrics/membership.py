"""Empirical privacy: membership-inference attacks (MIA) on a run's release, and the bound its DP guarantee
puts on any such attack.

Members are the training patients' images, non-members the images of held-out patients (`ctx.members`,
`ctx.nonmembers`). Every attack gives each candidate image a score, higher = "more likely a member":

- ``dcr`` (black box): GAN-Leaks' full black-box attack (Chen, Yu, Zhang & Fritz, "GAN-Leaks: A Taxonomy of
  Membership Inference Attacks against Generative Models", CCS 2020): score(x) = -min_j ||x - s_j||_2, the
  negative pixel-L2 distance from x to the closest released sample s_j (distance to closest record).
  It sees only the released samples (`ctx.fake`).
- ``discriminator`` (white box): LOGAN (Hayes, Melis, Danezis & De Cristofaro, "LOGAN: Membership
  Inference Attacks Against Generative Models", PoPETs 2019): score(x) = D(x), the trained discriminator's
  realness logit (`ctx.discriminator`, see :func:`discriminator_scorer`); an overfitted discriminator
  scores its training images higher.

Levels. ``image``: each image is a candidate. ``patient``: a patient's score is the mean of its images'
scores and each patient is a candidate. The patient is the unit the DP modes here protect by default
(adjacency "replace one patient with all of their images"), and the data split assigns whole patients to
members or non-members, so the patient level is the experiment that matches the guarantee. The canary
patients are not members here (`dpmedgen.evaluate`): their marked images would be told apart from every
non-member by the marker alone; the canary family audits them.

ROC summary (:func:`roc_summary`): AUC (0.5 = no leakage, 1 = every member ranked above every non-member)
and TPR at FPR 1 % and 0.1 % (Carlini et al., "Membership Inference Attacks From First Principles",
S&P 2022, argue for the low-FPR regime), taken at the ROC point with the largest TPR whose FPR <= the target,
without interpolation (conservative). With fewer than 1/FPR non-members only FPR = 0 is admissible, so the
TPR is the share of members scored strictly above the top non-member; it is reported anyway, next to the
numbers of candidates (``mia_n_*``) so that readers can see it.

DP bound. If a mechanism is (eps, delta)-DP for a unit, every test of "unit in" vs "unit out" satisfies
TPR <= e^eps FPR + delta and TPR <= 1 - e^-eps (1 - delta - FPR) (Kairouz, Oh & Viswanath, ICML 2015;
the hypothesis-testing view of DP). We report bound(FPR) = min(1, e^eps FPR + delta, 1 - e^-eps (1 - delta
- FPR)) at FPR 1 % and 0.1 %. The empirical TPR@FPR is measured at an FPR resolved only to 1 / n_nonmembers:
with 20 held-out patients the patient-level "FPR <= 1 %" point has observed FPR 0, whose true FPR may be
several percent, so an empirical TPR above the bound there does not by itself contradict the guarantee.

eps_lower: the epsilon an attack's operating point (the one of TPR@FPR) certifies, with 95 % Clopper-Pearson
intervals on its counts as in DP auditing (Jagielski, Ullman & Oprea, NeurIPS 2020):
max(0, log((TPR_lo - delta) / FPR_hi)) (:func:`eps_lower_bound`). It is used instead of the point estimate
log((TPR - delta) / FPR_target), which is not sound when the target FPR is below the resolution of the
non-member set (it gave eps ~ 4 for a DP-SGD eps = 1 run with 20 held-out patients). It is two-sided
(:func:`two_sided_eps_lower`): the attack and its flipped scores, each at 97.5 %, the larger reported, since
an attack that ranks members below non-members (AUC < 0.5) is as informative. Caveat: the threshold is chosen
on the same scores, so the 95 % is nominal. A value above the ledger's epsilon would signal a
broken guarantee (or an accounting bug); with tens of patients it stays small unless the leakage is gross.

Which (eps, delta). Members and non-members are *different patients* (the split is by patient), so even the
image-level experiment distinguishes "this image's patient was trained on" from "it was not": the sound
bound for both levels is the per-patient (eps, delta) (`epsilon_per_patient` / `delta_per_patient` of the
ledger, else its `delta`; or the headline epsilon/delta when the ledger's unit is "patient"). The per-image
epsilon of a ledger bounds an experiment that toggles one image while the rest of its patient stays in the
training set; this split does not run that experiment, and for input perturbation and the functional
mechanism eps_per_image < eps_per_patient, so using it here would give a bound that honest attacks may
legitimately exceed. The bound also assumes the patients were assigned to train / held out at random (the
expectation over that assignment is what the DP inequality controls). No bound rows when there is no ledger
or its guarantee is not "formal".

Which attacks the guarantee covers. The released samples are covered whenever the ledger states a formal
guarantee (the samples are the release). The discriminator is covered only if it was itself trained
privately or only from privatised data (:func:`discriminator_covered`): its name is in the ledger's
`protected_networks` (DP-SGD; the functional mechanism's "discriminator head"), or, for a ledger without
`protected_networks` and without `trained_by`, the mechanism perturbs the training inputs (``input_*``:
every network is post-processing of the privatised images). Output perturbation (`trained_by` names the
non-private run whose networks it reuses; the noise is added to the samples only) trains the discriminator
without privacy and does not release it: the LOGAN attack is still reported (it measures what the trained
networks would leak if the checkpoint were released) but without bound rows. (Those ledgers state
guarantee "none" anyway.)

Memorization rate (:func:`memorization_rate`): share of released samples whose L2 distance to their nearest
training (member) image is strictly smaller than the smallest distance of any held-out (non-member) image to
its nearest training image, i.e. samples closer to a training image than any unseen real image gets. ~0 for a
model that does not copy training images more closely than fresh data from the same population lies; 1 when
every sample is (nearly) a copy. It hinges on the single closest held-out image, so it is a coarse red flag.

Distances are pixel L2 on [0, 1] images, computed in float64 in chunks of the distance matrix (memory
O(chunk x N)).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from .info import MetricInfo, not_with, requires

if TYPE_CHECKING:
    from . import EvalContext

__all__ = [
    "FPR_TARGETS",
    "LEVELS",
    "INFO",
    "FAMILIES",
    "dcr_scores",
    "discriminator_scores",
    "patient_scores",
    "operating_point",
    "tpr_at_fpr",
    "roc_summary",
    "dp_tpr_bound",
    "eps_lower_bound",
    "two_sided_eps_lower",
    "max_certifiable_epsilon",
    "patient_privacy",
    "discriminator_covered",
    "memorization_rate",
    "nearest_distances",
    "mia_dcr",
    "mia_discriminator",
    "discriminator_scorer",
]

#: Target false-positive rates and the name suffix of each (no dots in metric names).
FPR_TARGETS: dict[str, float] = {"fpr1pct": 0.01, "fpr0p1pct": 0.001}
LEVELS = ("image", "patient")
_ELEMENTS_PER_CHUNK = 4_000_000  # float64 distance-matrix entries per chunk (32 MB)


# --- distances and attack scores -------------------------------------------------------------------------


def _flat64(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images.detach().cpu())
    if x.dim() < 2:
        raise ValueError(f"expected a batch of images, got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], -1).to(torch.float64)


def nearest_distances(queries: np.ndarray | torch.Tensor, references: np.ndarray | torch.Tensor) -> np.ndarray:
    """For each query image, the pixel-L2 distance to its nearest reference image, float64 (N_queries,).

    Squared distances |q|^2 + |r|^2 - 2 q.r in float64 (an exact copy gives ~1e-6 or less, clamped at 0),
    over chunks of queries so that the distance matrix held at once stays small.
    """
    q, r = _flat64(queries), _flat64(references)
    if q.shape[1] != r.shape[1]:
        raise ValueError(f"images differ in size: {q.shape[1]} vs {r.shape[1]} pixels")
    if len(r) == 0:
        raise ValueError("no reference images")
    r_sq = (r * r).sum(dim=1)
    chunk = max(1, _ELEMENTS_PER_CHUNK // len(r))
    out = []
    for i in range(0, len(q), chunk):
        qi = q[i : i + chunk]
        d2 = (qi * qi).sum(dim=1, keepdim=True) + r_sq[None, :] - 2.0 * (qi @ r.T)
        out.append(d2.min(dim=1).values.clamp_min_(0.0).sqrt_())
    return torch.cat(out).numpy() if out else np.zeros(0)


def dcr_scores(candidates: np.ndarray | torch.Tensor, samples: np.ndarray | torch.Tensor) -> np.ndarray:
    """GAN-Leaks full black-box score of each candidate: -min_j ||x - s_j||_2 over the released samples
    (higher = closer to some sample = "more likely member"), float64 (N_candidates,)."""
    return -nearest_distances(candidates, samples)


def discriminator_scores(
    scorer: Callable[[torch.Tensor], Any], images: np.ndarray | torch.Tensor, batch_size: int = 256
) -> np.ndarray:
    """LOGAN white-box score of each image: the scorer's realness output, float64 (N,).

    `images` are (N, H, W) or (N, 1, H, W) in [0, 1]; the scorer gets float32 (b, 1, H, W) batches."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images).to(torch.float32)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    out = []
    for i in range(0, len(x), batch_size):
        s = scorer(x[i : i + batch_size])
        s = torch.as_tensor(s).detach().cpu().to(torch.float64).reshape(-1)
        if len(s) != len(x[i : i + batch_size]):
            raise ValueError(f"the discriminator returned {len(s)} scores for {len(x[i : i + batch_size])} images")
        out.append(s)
    scores = torch.cat(out).numpy() if out else np.zeros(0)
    if not np.isfinite(scores).all():
        raise ValueError("the discriminator returned non-finite scores")
    return scores


def patient_scores(scores: np.ndarray, patient_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate image scores per patient: (sorted unique patient ids, mean score of each patient's images)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    pid = np.asarray(patient_id)
    if len(pid) != len(scores):
        raise ValueError(f"{len(scores)} scores but {len(pid)} patient ids")
    ids, inverse = np.unique(pid, return_inverse=True)
    inverse = inverse.reshape(-1)
    sums = np.bincount(inverse, weights=scores, minlength=len(ids))
    counts = np.bincount(inverse, minlength=len(ids))
    return ids, sums / counts


# --- ROC summary -----------------------------------------------------------------------------------------


def _labels_scores(member_scores, nonmember_scores) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(member_scores, dtype=np.float64).reshape(-1)
    n = np.asarray(nonmember_scores, dtype=np.float64).reshape(-1)
    if len(m) == 0 or len(n) == 0:
        raise ValueError(f"need at least one member and one non-member score; got {len(m)} and {len(n)}")
    if not (np.isfinite(m).all() and np.isfinite(n).all()):
        raise ValueError("attack scores must be finite")
    return np.concatenate([np.ones(len(m)), np.zeros(len(n))]), np.concatenate([m, n])


def operating_point(member_scores, nonmember_scores, fpr: float) -> tuple[float, float]:
    """(TPR, achieved FPR) of the ROC point with the largest TPR whose FPR <= `fpr` (thresholds "score >= t";
    tied scores are never split). No interpolation between ROC points: the values are achieved by an
    actual threshold. With n non-members the admissible FPRs are k/n, so with n < 1/fpr only FPR = 0 is
    admissible and the TPR is the share of members scored strictly above every non-member."""
    from sklearn.metrics import roc_curve

    y, s = _labels_scores(member_scores, nonmember_scores)
    fprs, tprs, _ = roc_curve(y, s, drop_intermediate=False)
    ok = np.flatnonzero(fprs <= fpr * (1 + 1e-9))  # k/n == target up to rounding counts as admissible
    best = ok[np.argmax(tprs[ok])]  # the (0, 0) point is always admissible
    return float(tprs[best]), float(fprs[best])


def tpr_at_fpr(member_scores, nonmember_scores, fpr: float) -> float:
    """Largest TPR over the ROC points whose FPR <= `fpr` (see :func:`operating_point`)."""
    return operating_point(member_scores, nonmember_scores, fpr)[0]


def roc_summary(member_scores, nonmember_scores) -> dict[str, float]:
    """AUC and TPR at FPR 1 % / 0.1 % of one attack (scores: higher = "more likely member").

    Returns ``{"auc", "tpr_at_fpr1pct", "tpr_at_fpr0p1pct", "n_members", "n_nonmembers"}``. AUC is sklearn's
    ``roc_auc_score`` (ties count 1/2; 0.5 = no leakage). TPR@FPR: see :func:`tpr_at_fpr` (conservative, no
    interpolation). With fewer than 1/FPR non-members (e.g. < 1000 for 0.1 %) the TPR@FPR is determined by
    the single top-scored non-member (only FPR = 0 is admissible); it is reported anyway, and
    ``n_nonmembers`` is returned so that readers can see how coarse the FPR grid is.
    """
    from sklearn.metrics import roc_auc_score

    y, s = _labels_scores(member_scores, nonmember_scores)
    out = {"auc": float(roc_auc_score(y, s))}
    for key, fpr in FPR_TARGETS.items():
        out[f"tpr_at_{key}"] = tpr_at_fpr(member_scores, nonmember_scores, fpr)
    out["n_members"] = float(y.sum())
    out["n_nonmembers"] = float(len(y) - y.sum())
    return out


# --- the DP bound ----------------------------------------------------------------------------------------


def dp_tpr_bound(fpr: float, epsilon: float, delta: float) -> float:
    """Largest TPR any test can reach at `fpr` against an (epsilon, delta)-DP mechanism:
    min(1, e^eps fpr + delta, 1 - e^-eps (1 - delta - fpr)) (Kairouz et al. 2015)."""
    if not (0 <= fpr <= 1 and delta >= 0 and epsilon >= 0):
        raise ValueError(f"need 0 <= fpr <= 1, epsilon >= 0, delta >= 0; got {fpr}, {epsilon}, {delta}")
    if math.isinf(epsilon):
        return 1.0
    one_sided = math.exp(epsilon) * fpr + delta
    two_sided = 1.0 - math.exp(-epsilon) * (1.0 - delta - fpr)
    return float(min(1.0, one_sided, two_sided))


def eps_lower_bound(
    n_true_pos: int, n_members: int, n_false_pos: int, n_nonmembers: int, delta: float, confidence: float = 0.95
) -> float:
    """Empirical lower bound on epsilon from one attack operating point, with Clopper-Pearson intervals
    (as in DP auditing: Jagielski, Ullman & Oprea, NeurIPS 2020): max(0, log((TPR_lo - delta) / FPR_hi)),
    TPR_lo / FPR_hi the one-sided (1 + confidence) / 2 Clopper-Pearson lower / upper limits of the counts
    (jointly >= `confidence` by the union bound); 0 when TPR_lo <= delta. It follows from
    TPR <= e^eps FPR + delta. Unlike log((TPR - delta) / FPR) with the target FPR, it does not explode
    when the non-members are too few to resolve the target FPR (an observed FPR of 0 out of 20 only says
    FPR <~ 17 %)."""
    from scipy.stats import beta

    if not (0 <= n_true_pos <= n_members and 0 <= n_false_pos <= n_nonmembers and n_members and n_nonmembers):
        raise ValueError(f"bad counts: {n_true_pos}/{n_members} true, {n_false_pos}/{n_nonmembers} false positives")
    a = (1.0 - confidence) / 2.0
    tpr_lo = 0.0 if n_true_pos == 0 else float(beta.ppf(a, n_true_pos, n_members - n_true_pos + 1))
    fpr_hi = (
        1.0 if n_false_pos == n_nonmembers else float(beta.ppf(1.0 - a, n_false_pos + 1, n_nonmembers - n_false_pos))
    )
    if tpr_lo <= delta or fpr_hi <= 0:
        return 0.0
    return max(0.0, math.log((tpr_lo - delta) / fpr_hi))


def patient_privacy(ledger: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """The per-patient (epsilon, delta) of a ledger with a formal guarantee; None otherwise.

    `epsilon_per_patient` with `delta_per_patient` (else the ledger's `delta`, at which the perturbation and
    functional modes compute it); a ledger without `epsilon_per_patient` whose unit is "patient" gives its
    headline (epsilon, delta); a unit-"image" ledger without a patient conversion gives None."""
    if ledger is None or ledger.get("guarantee") != "formal":
        return None
    if "epsilon_per_patient" in ledger:
        eps = float(ledger["epsilon_per_patient"])
        delta = float(ledger.get("delta_per_patient", ledger.get("delta", math.nan)))
    elif ledger.get("unit") == "patient":
        eps, delta = float(ledger["epsilon_spent"]), float(ledger["delta"])
    else:
        return None
    if math.isnan(eps) or math.isnan(delta) or eps < 0 or not 0 <= delta <= 1:
        return None
    return eps, delta


def discriminator_covered(ledger: Mapping[str, Any] | None) -> bool:
    """Whether the ledger's formal guarantee extends to the trained discriminator (see the module docstring):
    a network named "discriminator..." is in `protected_networks`; or, without `protected_networks` and
    `trained_by`, the mechanism is input perturbation ("input_*": all training is post-processing)."""
    if ledger is None or ledger.get("guarantee") != "formal":
        return False
    protected = ledger.get("protected_networks")
    if protected is not None:
        return any(str(n).startswith("discriminator") for n in protected)
    if "trained_by" in ledger:
        return False
    return str(ledger.get("mechanism", ledger.get("privacy", ""))).startswith("input_")


# --- memorization ----------------------------------------------------------------------------------------


def memorization_threshold(members, nonmembers) -> float:
    """min over non-member images of their distance to the nearest member image: what no held-out image
    comes closer than. It depends on the real data only, so a study computes it once per dataset (every
    pair of the ~5,000 non-member and ~11,000 member images: ~3 s of each evaluation otherwise)."""
    return float(nearest_distances(nonmembers, members).min())


def memorization_rate(samples, members, nonmembers, threshold: float | None = None) -> float:
    """Share of samples whose distance to the nearest member image is strictly smaller than
    `memorization_threshold(members, nonmembers)` (computed here when `threshold` is None)."""
    if threshold is None:
        threshold = memorization_threshold(members, nonmembers)
    return float((nearest_distances(samples, members) < threshold).mean())


# --- metric families -------------------------------------------------------------------------------------


def _check_disjoint(ctx: "EvalContext") -> None:
    both = np.intersect1d(np.asarray(ctx.members.patient_id), np.asarray(ctx.nonmembers.patient_id))
    if len(both):
        raise ValueError(
            f"membership inference: {len(both)} patients are both members and non-members (e.g. {both[0]!r}); "
            "the attacks need a split by patient"
        )


def _attack_rows(
    prefix: str, member_scores: np.ndarray, nonmember_scores: np.ndarray, ctx: "EvalContext", bound: bool
) -> dict[str, float]:
    """ROC summary (and bound rows) of one attack at both levels."""
    privacy = patient_privacy(ctx.ledger) if bound else None
    out: dict[str, float] = {}
    for level in LEVELS:
        if level == "image":
            m, n = member_scores, nonmember_scores
        else:
            m = patient_scores(member_scores, ctx.members.patient_id)[1]
            n = patient_scores(nonmember_scores, ctx.nonmembers.patient_id)[1]
        roc = roc_summary(m, n)
        out[f"{prefix}_auc_{level}"] = roc["auc"]
        for key in FPR_TARGETS:
            out[f"{prefix}_tpr_at_{key}_{level}"] = roc[f"tpr_at_{key}"]
        if privacy is not None:
            eps, delta = privacy
            for key, fpr in FPR_TARGETS.items():
                out[f"{prefix}_bound_tpr_at_{key}_{level}"] = dp_tpr_bound(fpr, eps, delta)
            for key, fpr in FPR_TARGETS.items():
                out[f"{prefix}_eps_lower_at_{key}_{level}"] = two_sided_eps_lower(m, n, fpr, delta)
            out[f"{prefix}_eps_lower_max_{level}"] = max_certifiable_epsilon(len(m), len(n), delta)
    return out


def max_certifiable_epsilon(n_members: int, n_nonmembers: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon `two_sided_eps_lower` can certify with these counts: that of a perfect attack (every
    member above every non-member: TPR 1 at FPR 0), at the two-sided confidence. A claimed epsilon above it
    cannot be contradicted by this audit, whatever the attack (e.g. 1.53 with 44 members and 20 non-members)."""
    return eps_lower_bound(n_members, n_members, 0, n_nonmembers, delta, 1.0 - (1.0 - confidence) / 2.0)


def two_sided_eps_lower(member_scores, nonmember_scores, fpr: float, delta: float, confidence: float = 0.95) -> float:
    """`eps_lower_bound` at the operating point of `fpr`, for the attack and for its flipped scores (an attack
    that ranks members *below* non-members is as informative, and DP bounds both tests), each at confidence
    1 - (1 - `confidence`) / 2 so that the larger of the two holds at `confidence` (Bonferroni): no direction
    is chosen by looking at the scores."""
    m = np.asarray(member_scores, dtype=np.float64)
    n = np.asarray(nonmember_scores, dtype=np.float64)
    each = 1.0 - (1.0 - confidence) / 2.0
    bounds = []
    for sign in (1.0, -1.0):
        tpr, fpr_achieved = operating_point(sign * m, sign * n, fpr)
        bounds.append(eps_lower_bound(round(tpr * len(m)), len(m), round(fpr_achieved * len(n)), len(n), delta, each))
    return max(bounds)


@not_with(
    "sources",
    "the samples are fusions of held-out source pairs, not draws from a model of the training patients: "
    "their distance to a candidate says nothing about its membership",
)
@requires("members", "nonmembers")
def mia_dcr(ctx: "EvalContext") -> dict[str, float]:
    """Distance-to-closest-record attack on the released samples (both levels), the candidate counts, the DP
    bound when the ledger is formal, and the memorization rate."""
    _check_disjoint(ctx)
    m = dcr_scores(ctx.members.images, ctx.fake)
    n = dcr_scores(ctx.nonmembers.images, ctx.fake)
    out = _attack_rows("mia_dcr", m, n, ctx, bound=True)
    out["mia_n_members_image"] = float(len(ctx.members.images))
    out["mia_n_nonmembers_image"] = float(len(ctx.nonmembers.images))
    out["mia_n_members_patient"] = float(len(np.unique(np.asarray(ctx.members.patient_id))))
    out["mia_n_nonmembers_patient"] = float(len(np.unique(np.asarray(ctx.nonmembers.patient_id))))
    out["memorization_rate"] = memorization_rate(
        ctx.fake, ctx.members.images, ctx.nonmembers.images, threshold=ctx.memorization_threshold
    )
    return out


@requires("members", "nonmembers", "discriminator")
def mia_discriminator(ctx: "EvalContext") -> dict[str, float]:
    """LOGAN white-box attack (score = the trained discriminator's output) at both levels; bound rows only
    when the ledger's guarantee covers the discriminator (:func:`discriminator_covered`)."""
    _check_disjoint(ctx)
    m = discriminator_scores(ctx.discriminator, ctx.members.images, ctx.batch_size)
    n = discriminator_scores(ctx.discriminator, ctx.nonmembers.images, ctx.batch_size)
    return _attack_rows("mia_discriminator", m, n, ctx, bound=discriminator_covered(ctx.ledger))


FAMILIES: dict[str, Callable[["EvalContext"], dict[str, float]]] = {
    "mia_dcr": mia_dcr,
    "mia_discriminator": mia_discriminator,
}


# --- metric descriptions ---------------------------------------------------------------------------------

_ATTACKS = {
    "mia_dcr": (
        "GAN-Leaks full black-box attack (Chen et al., CCS 2020): score = -min pixel-L2 distance to the "
        "released samples; sklearn roc_auc_score / roc_curve",
        "distance-to-closest-record attack on the released samples",
    ),
    "mia_discriminator": (
        "LOGAN white-box attack (Hayes et al., PoPETs 2019): score = the trained discriminator's logit; "
        "sklearn roc_auc_score / roc_curve",
        "discriminator (LOGAN) attack",
    ),
}
_LEVEL_TEXT = {
    "image": "each member / non-member image is a candidate",
    "patient": "each patient is a candidate, scored by the mean of its images' scores (the unit DP protects)",
}
_PCT = {"fpr1pct": "1 %", "fpr0p1pct": "0.1 %"}


def _bound_note(prefix: str) -> str:
    """Which runs get an attack's bound rows."""
    if prefix == "mia_dcr":
        return "Only for runs whose ledger states a formal guarantee."
    return (
        "Only for formal guarantees that cover the discriminator (in protected_networks, or input "
        "perturbation); never for output perturbation, whose discriminator is trained without privacy."
    )


def _auc_info(prefix: str, source: str, what: str, level: str) -> MetricInfo:
    return MetricInfo(
        f"{prefix}_auc_{level}",
        higher_is_better=False,
        range="[0, 1]; 0.5 = no leakage, 1 = every member ranked above every non-member",
        source=source,
        description=f"ROC AUC of the {what} separating training (member) from held-out patients; "
        f"{_LEVEL_TEXT[level]}. Closer to 0.5 = more private (below 0.5 the attack is as informative "
        "with its scores flipped).",
        family=prefix,
        ideal=0.5,
    )


def _tpr_info(prefix: str, source: str, what: str, level: str, key: str, pct: str) -> MetricInfo:
    return MetricInfo(
        f"{prefix}_tpr_at_{key}_{level}",
        higher_is_better=False,
        range=f"[0, 1]; ~{FPR_TARGETS[key]:g} = no leakage",
        source=source,
        description=f"True-positive rate of the {what} at the ROC point with the largest TPR whose "
        f"FPR <= {pct} (no interpolation); {_LEVEL_TEXT[level]}. With fewer than "
        f"{round(1 / FPR_TARGETS[key])} non-members (see mia_n_nonmembers_{level}) only FPR = 0 "
        "is admissible: the share of members scored above the top non-member.",
        family=prefix,
        ideal=FPR_TARGETS[key],
    )


def _bound_tpr_info(prefix: str, level: str, key: str, pct: str) -> MetricInfo:
    return MetricInfo(
        f"{prefix}_bound_tpr_at_{key}_{level}",
        higher_is_better=None,
        range="[0, 1]",
        source="hypothesis-testing view of DP (Kairouz et al., ICML 2015) with the ledger's "
        "per-patient (epsilon, delta)",
        description=f"Largest TPR at FPR {pct} that any attack can reach under the run's guarantee: "
        "min(1, e^eps FPR + delta, 1 - e^-eps (1 - delta - FPR)) with the per-patient (eps, delta) "
        "(members and non-members are different patients, so this is the sound bound at both "
        f"levels). Compare with {prefix}_tpr_at_{key}_{level}, keeping in mind that its FPR is "
        f"resolved only to 1 / mia_n_nonmembers_{level}. {_bound_note(prefix)}",
        family=prefix,
    )


def _eps_lower_info(prefix: str, what: str, level: str, key: str, pct: str) -> MetricInfo:
    return MetricInfo(
        f"{prefix}_eps_lower_at_{key}_{level}",
        higher_is_better=False,
        range="[0, inf); 0 = the attack demonstrates no privacy loss",
        source="DP inequality TPR <= e^eps FPR + delta solved for eps, with 95 % Clopper-Pearson "
        "limits on TPR (lower) and FPR (upper) (DP auditing, Jagielski et al., NeurIPS 2020)",
        description=f"Epsilon the {what} certifies at its FPR <= {pct} operating point: max(0, "
        "log((TPR_lo - delta) / FPR_hi)) with 95 % Clopper-Pearson limits and the ledger's per-patient "
        "delta; 95 % is nominal (the threshold is chosen on the same scores). Above the ledger's "
        f"epsilon_per_patient, the guarantee is contradicted. {_bound_note(prefix)}",
        family=prefix,
    )


def _eps_lower_max_info(prefix: str, level: str) -> MetricInfo:
    return MetricInfo(
        f"{prefix}_eps_lower_max_{level}",
        higher_is_better=None,
        range="[0, inf)",
        source="max_certifiable_epsilon: the Clopper-Pearson bound of a perfect attack (TPR 1 at FPR 0) "
        "at the candidate counts",
        description=f"The largest epsilon {prefix}_eps_lower_at_*_{level} can certify with these numbers "
        "of members and non-members, whatever the attack: a claimed epsilon above it cannot be "
        f"contradicted by this audit (it has no power there). {_bound_note(prefix)}",
        family=prefix,
    )


def _count_info(group: str, who: str, level: str) -> MetricInfo:
    return MetricInfo(
        f"mia_n_{group}_{level}",
        higher_is_better=None,
        range="{1, 2, ...}",
        source="count",
        description=f"Number of {who} {level}s the membership-inference attacks (mia_dcr_*, "
        f"mia_discriminator_*) at the {level} level were evaluated on; the FPR grid is "
        "1 / mia_n_nonmembers.",
        family="mia_dcr",
    )


_MEMORIZATION_INFO = MetricInfo(
    "memorization_rate",
    higher_is_better=False,
    range="[0, 1]; ~0 = no sample closer to the training set than held-out data is",
    source="pixel-L2 nearest-neighbour distances (float64)",
    description="Share of generated samples whose distance to the nearest training (member) image is "
    "smaller than the smallest nearest-training-image distance of any held-out (non-member) image, i.e. "
    "samples closer to a training image than any unseen real image is. 1 = every sample copies a "
    "training image; hinges on the single closest held-out image.",
    family="mia_dcr",
)


def _infos() -> list[MetricInfo]:
    """Every membership metric, per attack and level in table order: AUC, TPRs, their bounds, the epsilons they
    certify, then the most each level can certify; then the counts and the memorization rate."""
    infos: list[MetricInfo] = []
    for prefix, (source, what) in _ATTACKS.items():
        for level in LEVELS:
            infos.append(_auc_info(prefix, source, what, level))
            infos += [_tpr_info(prefix, source, what, level, key, pct) for key, pct in _PCT.items()]
            infos += [_bound_tpr_info(prefix, level, key, pct) for key, pct in _PCT.items()]
            infos += [_eps_lower_info(prefix, what, level, key, pct) for key, pct in _PCT.items()]
        infos += [_eps_lower_max_info(prefix, level) for level in LEVELS]
    for level in LEVELS:
        infos += [_count_info(group, who, level)
                  for group, who in (("members", "training (member)"), ("nonmembers", "held-out (non-member)"))]
    return infos + [_MEMORIZATION_INFO]


INFO: list[MetricInfo] = _infos()


# --- the white-box attack's scorer -----------------------------------------------------------------------


def _privacy_name(checkpoint: Mapping[str, Any] | None) -> str | None:
    if checkpoint is None:
        return None
    run = checkpoint.get("run")
    if isinstance(run, Mapping) and "privacy" in run:
        return str(run["privacy"])
    return str(checkpoint["privacy"]) if "privacy" in checkpoint else None


def _never_trained(net: nn.Module) -> bool:
    """Every bias is exactly zero: the models here initialise biases at 0 and any optimizer step moves them."""
    biases = [p for name, p in net.named_parameters() if name.endswith("bias")]
    return bool(biases) and all(bool((p == 0).all()) for p in biases)


def discriminator_scorer(
    model: nn.Module,
    checkpoint: Mapping[str, Any] | None = None,
    *,
    network: str | None = None,
    batch_size: int = 256,
    allow_untrained: bool = False,
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function images -> realness scores of the model's trained discriminator, or None.

    The function takes float images (N, 1, H, W) (or (N, H, W)) in [0, 1], rescales them to [-1, 1] (the
    range every model here trains its discriminator on), and returns the discriminator's logits, a float32
    CPU tensor (N,), computed in eval mode, without gradients, in batches of `batch_size`, on the model's
    device (the network's train/eval mode is restored afterwards).

    None when there is no discriminator of real images of the sampled modality:

    - DDPM (no discriminator), and any model whose `kind` is not "gan" unless `network` is given.
    - DDcGAN (`kind` "fusion"): its samples are fused images, and neither discriminator sees fused images
      as real (D_mri judges fused vs MRI, D_pet downsampled fused vs PET), so there is no attack on the
      fused release's membership. `network="discriminator_mri"` (or "discriminator_pet", with the model's
      downsampling applied) returns that discriminator's scorer for callers that pass member / non-member
      images of that modality.
    - The functional mechanism: it replaces the discriminator by a linear head on public features
      (`privacy.functional`) and the checkpoint stores only the model's own discriminator, which is never
      trained (it keeps its initialisation); the trained head is not saved. Detected from `checkpoint` (the
      state returned by `train.run.load_model`, or the run's ledger: privacy "functional"), and, without it,
      because every bias of the discriminator is still exactly 0 (the models initialise biases at 0 and any
      training step moves them). `allow_untrained=True` skips that check (e.g. a freshly built model).

    Output perturbation reuses the non-private run's networks: a scorer is returned (the attack is reported
    without a bound, see :func:`discriminator_covered`).

    A class mixture (one GAN per class, `models.mixture.ClassMixture`) scores an image by the largest logit
    of its classes' discriminators: the attacker needs no label, and the discriminator that trained on a
    member is the one that would recognise it.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if _privacy_name(checkpoint) == "functional":
        return None
    components = getattr(model, "components", None)
    if isinstance(components, nn.ModuleDict):  # one generator per class (models.mixture.ClassMixture)
        scorers = [discriminator_scorer(c, checkpoint, network=network, batch_size=batch_size,
                                        allow_untrained=allow_untrained) for c in components.values()]
        if any(s is None for s in scorers):
            return None

        def best_class_score(images: torch.Tensor) -> torch.Tensor:
            """Each class's discriminator saw only its class's members: an image's score is the highest."""
            return torch.stack([s(images) for s in scorers]).max(dim=0).values

        return best_class_score
    if network is None:
        if getattr(model, "kind", "") != "gan" or not isinstance(getattr(model, "discriminator", None), nn.Module):
            return None
        network = "discriminator"
    net = getattr(model, network, None)
    if not isinstance(net, nn.Module):
        raise ValueError(f"{type(model).__name__} has no network {network!r}")
    if not allow_untrained and _never_trained(net):
        return None
    prepare: Callable[[torch.Tensor], torch.Tensor] = (
        model.psi if network == "discriminator_pet" and callable(getattr(model, "psi", None)) else (lambda x: x)
    )

    def score(images: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(images)
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1:
            raise ValueError(f"expected (N, 1, H, W) images, got shape {tuple(x.shape)}")
        x = x.to(torch.float32)
        param = next(net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                out = [
                    net(prepare(x[i : i + batch_size].to(device) * 2.0 - 1.0)).reshape(-1).float().cpu()
                    for i in range(0, len(x), batch_size)
                ]
        finally:
            net.train(was_training)
        return torch.cat(out) if out else torch.zeros(0)

    return score
