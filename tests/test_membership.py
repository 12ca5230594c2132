"""Known-answer tests for dpmedgen.metrics.membership (membership-inference attacks, DP bounds, memorization)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from dpmedgen.metrics import EvalContext, PatientImages
from dpmedgen.metrics.membership import (
    FAMILIES,
    INFO,
    discriminator_covered,
    discriminator_scorer,
    dcr_scores,
    dp_tpr_bound,
    eps_lower_bound,
    memorization_rate,
    memorization_threshold,
    mia_dcr,
    mia_discriminator,
    nearest_distances,
    operating_point,
    patient_privacy,
    patient_scores,
    two_sided_eps_lower,
    max_certifiable_epsilon,
    roc_summary,
    tpr_at_fpr,
)
from dpmedgen.models import MODELS

SIZE = 16  # EvalContext needs >= 11x11 images


def smooth_images(n: int, seed: int, size: int = SIZE) -> np.ndarray:
    """i.i.d. smooth random images in [0, 1], float32 (n, size, size)."""
    rng = np.random.default_rng(seed)
    x = gaussian_filter(rng.random((n, size, size)), sigma=(0, 1.5, 1.5))
    lo, hi = x.min(axis=(1, 2), keepdims=True), x.max(axis=(1, 2), keepdims=True)
    return ((x - lo) / (hi - lo)).astype(np.float32)


def group(images: np.ndarray, per_patient: int, prefix: str) -> PatientImages:
    ids = np.array([f"{prefix}{i // per_patient:03d}" for i in range(len(images))])
    return PatientImages(images, ids)


def context(fake, members, nonmembers, **kw) -> EvalContext:
    return EvalContext(members.images, fake, members=members, nonmembers=nonmembers, **kw)


FORMAL_DPSGD = {  # the shape of a DP-SGD ledger (results/.../dpsgd/eps1/seed0/privacy.json)
    "mechanism": "dpsgd",
    "privacy": "dpsgd",
    "guarantee": "formal",
    "unit": "patient",
    "epsilon_spent": 1.0,
    "delta": 1e-5,
    "epsilon_per_patient": 1.0,
    "delta_per_patient": 1e-5,
    "epsilon_per_image": 2.0,
    "delta_per_image": 5e-5,
    "protected_networks": ["discriminator"],
}
OUTPUT_GAUSSIAN = {  # output perturbation: no guarantee, networks reused from the non-private run
    "mechanism": "output_gaussian",
    "privacy": "output_gaussian",
    "guarantee": "none",
    "unit": "image",
    "epsilon_spent": math.inf,
    "delta": 0.0,
    "trained_by": {"privacy": "none"},
}
INPUT_GAUSSIAN = {  # no protected_networks, no delta_per_*: every network is post-processing
    "mechanism": "input_gaussian",
    "privacy": "input_gaussian",
    "guarantee": "formal",
    "unit": "patient",
    "epsilon_spent": 1.0,
    "delta": 1e-5,
    "epsilon_per_patient": 1.0,
    "epsilon_per_image": 0.25,
}

E = math.e
BOUND_1PCT = E * 0.01 + 1e-5  # e^1 * 1 % + delta, by hand: 0.0271928...
BOUND_01PCT = E * 0.001 + 1e-5  # 0.0027282...


# --- ROC summary -----------------------------------------------------------------------------------------


def test_roc_summary_hand_computed_with_ties():
    # pairs (member > non-member = 1, tie = 1/2): 3 beats both (2); each 2 ties 2 and beats 0 (1.5 + 1.5);
    # 1 beats 0 (1): AUC = 6 / 8. Only FPR = 0 is admissible with 2 non-members: members strictly above the
    # top non-member (2): only 3, so TPR = 1/4; the members tied with it do not count.
    r = roc_summary([3, 2, 2, 1], [2, 0])
    assert r == {"auc": 0.75, "tpr_at_fpr1pct": 0.25, "tpr_at_fpr0p1pct": 0.25, "n_members": 4, "n_nonmembers": 2}
    # all tied: no information
    r = roc_summary([1.0] * 5, [1.0] * 7)
    assert r["auc"] == 0.5 and r["tpr_at_fpr1pct"] == 0.0 and r["tpr_at_fpr0p1pct"] == 0.0
    # perfectly separated, and reversed
    assert roc_summary([5, 6], [1, 2, 3])["tpr_at_fpr0p1pct"] == 1.0
    r = roc_summary([1, 2], [5, 6, 7])
    assert r["auc"] == 0.0 and r["tpr_at_fpr1pct"] == 0.0


def test_tpr_at_fpr_is_conservative():
    # 150 non-members scored 0..149: admissible FPRs are k/150, so "FPR <= 1 %" allows k = 1 (0.67 %) but
    # not k = 2 (1.33 %). 10 members above all non-members, 10 between the 2nd and 3rd highest, 10 low.
    non = np.arange(150.0)
    mem = np.r_[np.full(10, 149.5), np.full(10, 147.5), np.full(10, 0.5)]
    tpr, fpr = operating_point(mem, non, 0.01)
    assert (tpr, fpr) == (pytest.approx(1 / 3), 0.0)  # of the points with the best TPR, the lowest FPR
    # linear interpolation of the ROC between (1/150, 1/3) and (2/150, 2/3) would claim 1/2 at FPR 1 %
    assert tpr_at_fpr(mem, non, 0.01) == pytest.approx(1 / 3)
    assert tpr_at_fpr(mem, non, 0.001) == pytest.approx(1 / 3)  # FPR 0 only
    assert tpr_at_fpr(mem, non, 2 / 150) == pytest.approx(2 / 3)  # exactly on the grid is admissible
    # a non-member tied with the top members drags them into FPR > 0: at FPR 0 they are lost
    # (FPR 1/200 <= 1 % admits them; the member at -1 is below all 199 others)
    assert tpr_at_fpr([2.0, 2.0, -1.0], [2.0] + [0.0] * 199, 0.001) == 0.0
    assert tpr_at_fpr([2.0, 2.0, -1.0], [2.0] + [0.0] * 199, 0.01) == pytest.approx(2 / 3)


def test_roc_summary_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        roc_summary([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        roc_summary([np.nan, 1.0], [1.0])


# --- DP bound and empirical epsilon ----------------------------------------------------------------------


def test_dp_tpr_bound_hand_computed():
    assert dp_tpr_bound(0.01, 1.0, 1e-5) == pytest.approx(0.027192818285, rel=1e-9)
    assert dp_tpr_bound(0.001, 1.0, 1e-5) == pytest.approx(0.0027282818285, rel=1e-9)
    assert dp_tpr_bound(0.01, 0.0, 0.0) == pytest.approx(0.01)  # eps = 0: no attack beats chance
    # large eps: the two-sided form 1 - e^-10 (1 - 1e-5 - 0.01) = 0.99995505 is below 1 and e^10 * 0.01
    assert dp_tpr_bound(0.01, 10.0, 1e-5) == pytest.approx(1 - math.exp(-10) * 0.98999, rel=1e-12)
    assert dp_tpr_bound(0.01, math.inf, 0.0) == 1.0


def test_eps_lower_bound_clopper_pearson_hand_computed():
    # 44/44 members flagged, 0/20 non-members: the 97.5 % one-sided Clopper-Pearson limits have closed forms
    # TPR_lo = 0.025^(1/44), FPR_hi = 1 - 0.025^(1/20)
    expected = math.log(0.025 ** (1 / 44) / (1 - 0.025 ** (1 / 20)))
    assert eps_lower_bound(44, 44, 0, 20, delta=0.0) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(1.6974, abs=1e-3)
    assert eps_lower_bound(44, 44, 0, 20, delta=1e-5) < expected
    # nothing flagged, or chance-level: 0
    assert eps_lower_bound(0, 44, 0, 20, delta=1e-5) == 0.0
    assert eps_lower_bound(3, 44, 1, 20, delta=1e-5) == 0.0
    with pytest.raises(ValueError):
        eps_lower_bound(5, 4, 0, 20, delta=0.0)


def test_two_sided_eps_lower_counts_an_inverted_attack_at_bonferroni_confidence():
    """Members all scored below every non-member: the one-sided bound sees nothing, the two-sided one certifies
    what the flipped attack shows, each direction at 97.5 % (one-sided limits at 98.75 %), never more than the
    one-sided bound of the same counts at 95 %."""
    members, nonmembers = np.zeros(44), np.ones(20)
    assert eps_lower_bound(0, 44, 0, 20, delta=0.0) == 0.0
    flipped = two_sided_eps_lower(members, nonmembers, 0.01, delta=0.0)
    expected = math.log(0.0125 ** (1 / 44) / (1 - 0.0125 ** (1 / 20)))
    assert flipped == pytest.approx(expected, rel=1e-6) and 0 < flipped < eps_lower_bound(44, 44, 0, 20, delta=0.0)
    assert two_sided_eps_lower(nonmembers[:20], members[:20], 0.01, delta=0.0) == pytest.approx(
        math.log(0.0125 ** (1 / 20) / (1 - 0.0125 ** (1 / 20))), rel=1e-6)  # the direct attack, same confidence
    assert two_sided_eps_lower(np.arange(44) % 2, np.arange(20) % 2, 0.01, delta=1e-5) == 0.0  # no signal


def test_max_certifiable_epsilon_is_the_perfect_attacks_and_bounds_every_attack():
    assert max_certifiable_epsilon(44, 20, 1e-5) == pytest.approx(
        two_sided_eps_lower(np.ones(44), np.zeros(20), 0.01, 1e-5), abs=1e-12)
    assert max_certifiable_epsilon(44, 20, 1e-5) == pytest.approx(1.526, abs=1e-3)  # a claim of 2 is untestable
    rng = np.random.default_rng(0)
    for _ in range(20):
        m, n = rng.normal(1, 1, 44), rng.normal(0, 1, 20)
        assert two_sided_eps_lower(m, n, 0.01, 1e-5) <= max_certifiable_epsilon(44, 20, 1e-5) + 1e-12
    assert max_certifiable_epsilon(5600, 1200, 1e-5) > 5  # more candidates, more power


def test_patient_privacy_and_coverage_from_ledgers():
    assert patient_privacy(FORMAL_DPSGD) == (1.0, 1e-5)
    assert patient_privacy(INPUT_GAUSSIAN) == (1.0, 1e-5)  # delta_per_patient absent: the ledger's delta
    assert patient_privacy(OUTPUT_GAUSSIAN) is None and patient_privacy(None) is None
    image_unit = {"guarantee": "formal", "unit": "image", "epsilon_spent": 1.0, "delta": 1e-5}
    assert patient_privacy(image_unit) is None  # no patient-level statement
    assert patient_privacy(image_unit | {"unit": "patient"}) == (1.0, 1e-5)

    assert discriminator_covered(FORMAL_DPSGD)
    assert discriminator_covered(FORMAL_DPSGD | {"protected_networks": ["discriminator_mri", "generator"]})
    assert discriminator_covered(FORMAL_DPSGD | {"protected_networks": ["discriminator head"]})  # functional
    assert not discriminator_covered(FORMAL_DPSGD | {"protected_networks": ["denoiser"]})
    assert discriminator_covered(INPUT_GAUSSIAN)
    assert not discriminator_covered(OUTPUT_GAUSSIAN)
    # even a formal ledger does not cover networks reused from another (non-private) run
    formal_output = OUTPUT_GAUSSIAN | {"guarantee": "formal", "epsilon_spent": 1.0, "epsilon_per_patient": 1.0}
    assert not discriminator_covered(formal_output)
    assert not discriminator_covered(None)


# --- DCR attack and memorization -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def population():
    """Members (40 patients x 3 images) and non-members (15 patients x 3) from one distribution."""
    members = group(smooth_images(120, seed=1), 3, "m")
    nonmembers = group(smooth_images(45, seed=2), 3, "n")
    return members, nonmembers


def test_dcr_scores_and_distances_known_answer():
    a = np.zeros((2, SIZE, SIZE), np.float32)
    a[1] += 0.5
    samples = np.stack([np.zeros((SIZE, SIZE)), np.ones((SIZE, SIZE))]).astype(np.float32)
    # image 0 copies sample 0 (distance 0); image 1 is 0.5 * 16 = 8 away from both samples
    np.testing.assert_allclose(nearest_distances(a, samples), [0.0, 8.0], atol=1e-9)
    np.testing.assert_allclose(dcr_scores(a, samples), [0.0, -8.0], atol=1e-9)


def test_copying_generator_is_fully_exposed(population):
    members, nonmembers = population
    rng = np.random.default_rng(0)
    fake = members.images[rng.permutation(len(members.images))]  # exact copies, shuffled
    out = mia_dcr(context(fake, members, nonmembers))
    for level in ("image", "patient"):
        assert out[f"mia_dcr_auc_{level}"] == 1.0
        assert out[f"mia_dcr_tpr_at_fpr1pct_{level}"] == 1.0
        assert out[f"mia_dcr_tpr_at_fpr0p1pct_{level}"] == 1.0
    assert out["memorization_rate"] == 1.0
    assert (out["mia_n_members_image"], out["mia_n_nonmembers_image"]) == (120, 45)
    assert (out["mia_n_members_patient"], out["mia_n_nonmembers_patient"]) == (40, 15)
    assert not any("bound" in k or "eps_lower" in k for k in out)  # no ledger, no bound rows


def test_independent_samples_are_at_chance():
    # Samples, members and non-members are i.i.d. from one distribution, so member and non-member scores are
    # exchangeable and E[AUC] = 0.5. For independent scores the AUC's standard error is
    # sqrt((m + n + 1) / (12 m n)) = 0.029 at m = n = 200; the shared samples correlate the scores somewhat,
    # so we allow 0.1 (~3.5 SE) at the image level. The patient level (100 vs 100 patients, SE 0.041) gets 0.15.
    members = group(smooth_images(200, seed=11), 2, "m")
    nonmembers = group(smooth_images(200, seed=12), 2, "n")
    fake = smooth_images(300, seed=13)
    out = mia_dcr(context(fake, members, nonmembers))
    assert abs(out["mia_dcr_auc_image"] - 0.5) < 0.1
    assert abs(out["mia_dcr_auc_patient"] - 0.5) < 0.15
    # a fresh sample beats the closest of 200 fresh non-members with probability ~1/201
    assert out["memorization_rate"] < 0.03


def test_memorization_rate_counts_only_closer_than_held_out(population):
    members, nonmembers = population
    threshold = nearest_distances(nonmembers.images, members.images).min()
    # a sample whose distance to members is just under / over the closest non-member's
    base = members.images[:1].astype(np.float64)
    direction = np.ones_like(base) / SIZE  # unit L2 norm
    near = np.clip(base + 0.5 * threshold * direction, 0, 1)  # at most 0.5 * threshold away
    far = smooth_images(3, seed=99)
    samples = np.concatenate([near, far]).astype(np.float32)
    assert nearest_distances(near, members.images)[0] < threshold
    assert (nearest_distances(far, members.images) >= threshold).all()
    assert memorization_rate(samples, members.images, nonmembers.images) == 0.25
    # a threshold computed beforehand (once per dataset) is the one used
    assert memorization_threshold(members.images, nonmembers.images) == threshold
    assert memorization_rate(samples, members.images, nonmembers.images, threshold=threshold) == 0.25
    assert memorization_rate(samples, members.images, nonmembers.images, threshold=0.0) == 0.0


def test_bound_rows_follow_the_ledger(population):
    members, nonmembers = population
    fake = smooth_images(30, seed=5)
    out = mia_dcr(context(fake, members, nonmembers, ledger=FORMAL_DPSGD))
    for level in ("image", "patient"):  # the per-patient (eps, delta) at both levels (split by patient)
        assert out[f"mia_dcr_bound_tpr_at_fpr1pct_{level}"] == pytest.approx(BOUND_1PCT, rel=1e-9)
        assert out[f"mia_dcr_bound_tpr_at_fpr0p1pct_{level}"] == pytest.approx(BOUND_01PCT, rel=1e-9)
        for key in ("fpr1pct", "fpr0p1pct"):
            assert 0.0 <= out[f"mia_dcr_eps_lower_at_{key}_{level}"] < 1.0  # chance-level attack: nothing shown
    for ledger in (OUTPUT_GAUSSIAN, None, {"guarantee": "none", "epsilon_spent": math.inf, "delta": 0.0}):
        out = mia_dcr(context(fake, members, nonmembers, ledger=ledger))
        assert not any("bound" in k or "eps_lower" in k for k in out)
    # a copying generator under a claimed eps = 1 guarantee: the audit's epsilon exceeds the claim
    out = mia_dcr(context(members.images, members, nonmembers, ledger=FORMAL_DPSGD))
    assert out["mia_dcr_eps_lower_at_fpr1pct_image"] > 1.0  # 120/120 vs 0/45: log(0.97 / 0.078) = 2.5


def test_patient_aggregation_groups_by_id():
    ids, means = patient_scores(np.array([1.0, 2.0, 3.0, 4.0, 6.0]), np.array(["b", "a", "b", "c", "a"]))
    assert ids.tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(means, [4.0, 2.0, 4.0])
    ids, means = patient_scores(np.array([1.0, 3.0]), np.array([7, 7]))
    assert ids.tolist() == [7] and means.tolist() == [2.0]


def constant_images(values) -> np.ndarray:
    return np.stack([np.full((SIZE, SIZE), v, np.float32) for v in values])


def mean_scorer(x: torch.Tensor) -> torch.Tensor:
    """A toy discriminator: realness = mean pixel value."""
    return x.mean(dim=(1, 2, 3))


def test_discriminator_family_with_toy_scorer():
    # members: patient A images 0.9, 0.3 (mean 0.6), patient B 0.7, 0.7; non-members C 0.5, 0.5 and D 0.4, 0.2
    # (mean 0.3); images interleaved so grouping must follow the ids. Image level: only 0.3 loses (to 0.5,
    # 0.5, 0.4; beats 0.2): AUC = (4 + 4 + 4 + 1) / 16. Patient level: {0.6, 0.7} vs {0.5, 0.3}: AUC 1.
    members = PatientImages(constant_images([0.9, 0.7, 0.3, 0.7]), np.array(["A", "B", "A", "B"]))
    nonmembers = PatientImages(constant_images([0.4, 0.5, 0.2, 0.5]), np.array(["D", "C", "D", "C"]))
    fake = constant_images([0.5, 0.6])
    ctx = context(fake, members, nonmembers, discriminator=mean_scorer, ledger=FORMAL_DPSGD)
    out = mia_discriminator(ctx)
    assert out["mia_discriminator_auc_image"] == pytest.approx(13 / 16)
    assert out["mia_discriminator_auc_patient"] == 1.0
    assert out["mia_discriminator_tpr_at_fpr1pct_image"] == 0.75  # 0.9, 0.7, 0.7 above the top non-member 0.5
    assert out["mia_discriminator_tpr_at_fpr1pct_patient"] == 1.0
    assert out["mia_discriminator_bound_tpr_at_fpr1pct_patient"] == pytest.approx(BOUND_1PCT, rel=1e-9)
    # not covered: output perturbation (no guarantee), and a formal guarantee protecting other networks only
    for ledger in (OUTPUT_GAUSSIAN, FORMAL_DPSGD | {"protected_networks": ["generator"]}):
        ctx = context(fake, members, nonmembers, discriminator=mean_scorer, ledger=ledger)
        out = mia_discriminator(ctx)
        assert "mia_discriminator_auc_image" in out and not any("bound" in k or "eps_lower" in k for k in out)
    # the DCR family of the same run keeps its bound when only the discriminator is uncovered
    ctx = context(fake, members, nonmembers, ledger=FORMAL_DPSGD | {"protected_networks": ["generator"]})
    assert "mia_dcr_bound_tpr_at_fpr1pct_patient" in mia_dcr(ctx)


def test_overlapping_patients_are_rejected(population):
    members, nonmembers = population
    ids = np.where(np.arange(45) == 0, members.patient_id[0], nonmembers.patient_id)  # one patient in both
    shared = PatientImages(nonmembers.images, ids)
    with pytest.raises(ValueError, match="both members and non-members"):
        mia_dcr(context(members.images[:5], members, shared))


def test_info_lists_every_name_and_families_declare_inputs(population):
    members, nonmembers = population
    names = {m.name for m in INFO}
    assert len(names) == len(INFO)
    ctx = context(members.images, members, nonmembers, discriminator=mean_scorer, ledger=FORMAL_DPSGD)
    produced = set(mia_dcr(ctx)) | set(mia_discriminator(ctx))
    assert produced == names  # a formal, covering ledger produces every documented name
    for m in INFO:
        assert m.family in FAMILIES and m.name.startswith(("mia_", "memorization_rate"))
        assert "." not in m.name
        assert m.higher_is_better is (None if ("bound" in m.name or "_n_" in m.name or "_max_" in m.name) else False)
    assert FAMILIES["mia_dcr"].requires == ("members", "nonmembers")
    assert FAMILIES["mia_discriminator"].requires == ("members", "nonmembers", "discriminator")


# --- the white-box scorer --------------------------------------------------------------------------------


def one_adam_step(model) -> None:
    """One discriminator update of the GAN loss, as training would do."""
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.discriminator.parameters(), lr=1e-3)
    real = torch.rand(4, 1, 32, 32) * 2 - 1
    nets = {"generator": model.generator, "discriminator": model.discriminator}
    model.loss("discriminator", nets, real, 4).sum().backward()
    opt.step()


@pytest.mark.parametrize("name", ["dcgan", "sngan"])
def test_discriminator_scorer_on_gan(name):
    torch.manual_seed(0)
    model = MODELS.get(name)(image_size=32, width=8, latent_dim=8)
    x = torch.rand(7, 1, 32, 32)
    # freshly built = never trained: refused unless allowed (a functional run's checkpoint looks like this)
    assert discriminator_scorer(model) is None
    score = discriminator_scorer(model, allow_untrained=True, batch_size=3)
    s = score(x)
    assert s.shape == (7,) and s.dtype == torch.float32 and torch.isfinite(s).all()
    model.eval()
    with torch.no_grad():
        expected = model.discriminator(x * 2 - 1)  # the discriminator trains on [-1, 1]
    torch.testing.assert_close(s, expected.float(), rtol=1e-5, atol=1e-6)
    assert score(x[:, 0]).shape == (7,)  # (N, H, W) accepted

    model.train()
    one_adam_step(model)
    score = discriminator_scorer(model)  # trained: biases moved
    assert score is not None
    state_before = {k: v.clone() for k, v in model.discriminator.state_dict().items() if torch.is_tensor(v)}
    assert torch.isfinite(score(x)).all()
    assert model.discriminator.training  # mode restored
    for k, v in model.discriminator.state_dict().items():
        if torch.is_tensor(v):
            assert torch.equal(v, state_before[k]), k  # scoring changes nothing (SNGAN: no power iteration)
    # a functional run: the checkpoint names the mode (the trained head is not in the model)
    assert discriminator_scorer(model, {"run": {"privacy": "functional"}}) is None
    assert discriminator_scorer(model, {"privacy": "functional"}) is None  # or its ledger
    assert discriminator_scorer(model, {"run": {"privacy": "dpsgd"}}) is not None


def test_discriminator_scorer_none_without_gan_discriminator():
    ddpm = MODELS.get("ddpm")(image_size=32, block_out_channels=(8, 8), norm_num_groups=4, attention=False)
    assert discriminator_scorer(ddpm, allow_untrained=True) is None
    ddcgan = MODELS.get("ddcgan")(image_size=32, width=4, dense_layers=1, pet_downsample=2)
    assert discriminator_scorer(ddcgan, allow_untrained=True) is None  # fused samples: no default attack
    x = torch.rand(5, 1, 32, 32)
    s = discriminator_scorer(ddcgan, network="discriminator_mri", allow_untrained=True)(x)
    assert s.shape == (5,) and torch.isfinite(s).all()
    s = discriminator_scorer(ddcgan, network="discriminator_pet", allow_untrained=True)(x)  # downsampled first
    with torch.no_grad():
        expected = ddcgan.discriminator_pet(torch.nn.functional.avg_pool2d(x * 2 - 1, 2))
    torch.testing.assert_close(s, expected)
    with pytest.raises(ValueError, match="no network"):
        discriminator_scorer(ddcgan, network="discriminator")


def test_discriminator_family_with_real_scorer(population):
    members, nonmembers = population
    def big(p):  # 32x32
        return PatientImages(np.kron(p.images, np.ones((1, 2, 2), np.float32)), p.patient_id)

    m, n = big(members), big(nonmembers)
    torch.manual_seed(0)
    model = MODELS.get("dcgan")(image_size=32, width=8, latent_dim=8)
    one_adam_step(model)
    ctx = EvalContext(m.images, m.images[:10], members=m, nonmembers=n, discriminator=discriminator_scorer(model))
    out = mia_discriminator(ctx)
    assert all(np.isfinite(v) for v in out.values()) and 0 <= out["mia_discriminator_auc_patient"] <= 1
