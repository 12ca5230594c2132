"""The black-box threat model of the one-run audit: canary patients scored from generated samples only."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import blobs, noisy, toy_study

import dpmedgen.privacy.dpsgd as dpsgd
from dpmedgen.audit import AUDIT_COLUMNS, gather_audits, one_run_audit
from dpmedgen.data.canary import canary_mask
from dpmedgen.models import MODELS
from dpmedgen.privacy import TrainingData
from dpmedgen.privacy.audit import (
    BLACK_BOX,
    CODE_BITS,
    THREAT_MODEL,
    AuditedDPSGD,
    InputCanaries,
    audit_scores,
    code_cells,
    paint_codes,
)
from dpmedgen.runs import RunSpec
from dpmedgen.train import TrainConfig, train_model


def _patients(n: int, per: int = 1, seed: int = 0) -> TrainingData:
    """`n` patients of `per` random blob images each (32², one channel, scaled to [-1, 1])."""
    images = torch.from_numpy(blobs(n * per, seed=seed))[:, None] * 2 - 1
    return TrainingData(images=images, patient_ids=np.repeat([f"P{i:04d}" for i in range(n)], per))


def test_codes_are_balanced_distinct_and_read_back_from_the_corners():
    data = _patients(60)
    canaries = InputCanaries(data, 40, seed=1)
    assert canaries.codes.shape == (40, CODE_BITS) and (canaries.codes.sum(axis=1) == 0).all()
    assert len({c.tobytes() for c in canaries.codes}) == 40 and 0 < canaries.included.sum() < 40
    patterns, mask = paint_codes(32, 32, canaries.codes)
    assert np.array_equal(code_cells(patterns), canaries.codes) and mask.sum() == CODE_BITS  # 1-pixel cells at 32²
    assert np.array_equal(mask[:8, :8] != 0, canary_mask(32, 32)[:8, :8] != 0)  # the marker's cells, top left
    assert np.array_equal(mask, mask[::-1]) and np.array_equal(mask, mask[:, ::-1])  # and in every corner
    patterns, mask = paint_codes(128, 128, canaries.codes)
    assert np.array_equal(code_cells(patterns), canaries.codes) and mask.sum() == 16 * CODE_BITS  # 4-pixel cells


@pytest.mark.parametrize("unit, per_patient", [("patient", 3), ("image", 1)])
def test_only_the_included_canaries_images_carry_their_code(unit, per_patient):
    data = _patients(30, per=3)
    canaries = InputCanaries(data, 20, seed=2, exclude={"P0003"}, unit=unit)
    assert data.patients[canaries.patients].tolist().count("P0003") == 0
    planted = canaries.plant(data)
    changed = (planted.images != data.images).flatten(1).any(dim=1).numpy()
    coded = np.isin(data.patient_index, canaries.patients[canaries.included])
    assert np.array_equal(changed, coded & (np.arange(90) % 3 < per_patient))  # every (patient) or first (image) slice
    _, mask = paint_codes(32, 32, canaries.codes)
    assert torch.equal(planted.images[..., ~torch.from_numpy(mask)], data.images[..., ~torch.from_numpy(mask)])
    which = {p: i for i, p in enumerate(canaries.patients)}
    for row in np.flatnonzero(changed):
        assert np.array_equal(
            code_cells(planted.images[row : row + 1])[0], canaries.codes[which[data.patient_index[row]]]
        )
    assert planted.n_patients == data.n_patients  # inclusion replaces a record: N (and q) stay the study's
    with pytest.raises(ValueError, match="eligible"):
        InputCanaries(data, 30, seed=2, exclude={"P0003"})


def test_a_memorizing_release_is_caught_and_an_independent_one_is_not():
    """500 canaries among 1,000 patients. A "generator" whose samples are noisy copies of its training images
    (the included canaries' among them) is flagged far above a claim of 1; one whose samples are independent of
    the canaries (other patients' images) certifies nothing; the inclusion mask and the score's direction
    matter (flipped, the memorizing release certifies nothing either)."""
    data = _patients(1000)
    canaries = InputCanaries(data, 500, seed=3)
    trained_on = canaries.plant(data).images
    copies = torch.from_numpy(noisy(((trained_on[:, 0] + 1) / 2).numpy(), sd=0.3))
    memorized = canaries.audit(copies, delta=1e-5)
    assert memorized["n_canaries"] == 500 and memorized["n_samples"] == 1000
    assert memorized["n_correct"] == memorized["n_guesses"] == 200  # every guess right: the largest fraction
    assert memorized["epsilon_lower"] > 3.5 > 1.0  # = logit((0.05 / 3)^(1/200)) = 3.88 at delta 0
    scores = canaries.scores(copies)
    assert audit_scores(-scores, canaries.included, 1e-5)["epsilon_lower"] == 0.0
    assert audit_scores(scores, ~canaries.included, 1e-5)["epsilon_lower"] == 0.0
    independent = canaries.audit(torch.from_numpy(blobs(2000, seed=9))[:, None], delta=1e-5)
    assert independent["epsilon_lower"] < 0.5 and independent["n_samples"] == 2000


def _black_box_run(monkeypatch, noise_factor: float, *, n: int, m: int, steps: int, batch: int, epsilon: float):
    """A DCGAN (width 16) trained by the fast DP-SGD path on `n` one-slice blob patients, `m` of them black-box
    canaries, plus 100 white-box gradient canaries; audited from 2,000 samples. `noise_factor` < 1 breaks the
    run after the calibration (the ledger still claims `epsilon`)."""
    original = dpsgd.NoisyStep.__init__

    def broken(self, optimizer, noise_multiplier, *args, **kwargs):
        original(self, optimizer, noise_multiplier * noise_factor, *args, **kwargs)

    monkeypatch.setattr(dpsgd.NoisyStep, "__init__", broken)
    torch.manual_seed(0)
    data = _patients(n, seed=4)
    mode = AuditedDPSGD(n_canaries=100, target_epsilon=epsilon, delta=1e-5, seed=3, max_grad_norm=1.0)
    canaries = InputCanaries(data, m, seed=mode.rng_seed("input_canaries"))
    model = MODELS.get("dcgan")(image_size=32, latent_dim=8, width=16)
    train_model(
        model,
        canaries.plant(data),
        mode,
        TrainConfig(steps=steps, batch_size=batch, device="cpu", checkpoint_every=0),
        progress=False,
    )
    samples = model.sample(2000, generator=torch.Generator().manual_seed(5))
    return canaries.audit(samples, mode.delta) | {"epsilon_claimed": mode.epsilon_spent(), "q": mode.sample_rate}


def test_the_black_box_audit_of_a_correct_dp_sgd_run_stays_below_its_claim(monkeypatch):
    """256 patients, 200 of them canaries, q = 1/8, 150 steps, claimed epsilon 1: the bound is below the claim."""
    correct = _black_box_run(monkeypatch, 1.0, n=256, m=200, steps=150, batch=32, epsilon=1.0)
    assert correct["q"] == pytest.approx(1 / 8) and correct["epsilon_claimed"] <= 1.0
    assert correct["n_canaries"] == 200 and correct["n_samples"] == 2000
    assert correct["epsilon_lower"] <= correct["epsilon_claimed"]


def test_the_audit_stage_writes_both_threat_models_from_one_run(tmp_path):
    """`one_run_audit` on a toy study (class generators; the largest class has 3 train patients, one carries
    the canary metric's marker and is never an input canary): a white-box and a black-box row, same run."""
    study = toy_study(tmp_path, canary_patients=1)
    run = RunSpec("toy", "dcgan", "dpsgd", 1.0, 0)

    def audit(steps: int, n_canary_patients: int, out: str) -> pd.DataFrame:
        return one_run_audit(
            run, images_h5=study / "images.h5", splits_parquet=study / "splits.parquet", modality="mri",
            model_params={"width": 8, "latent_dim": 8}, privacy_params={}, delta=1e-3,
            train={"steps": steps, "batch_size": 2, "device": "cpu", "class_generators": True},
            n_canaries=50, n_canary_patients=n_canary_patients, n_samples=30, out_parquet=tmp_path / out,
            randomness="deterministic",
        )

    table = audit(4, 2, "audit.parquet")
    assert list(table.columns) == list(AUDIT_COLUMNS) and table.threat_model.tolist() == [THREAT_MODEL, BLACK_BOX]
    white, black = table.iloc[0], table.iloc[1]
    assert (white.n_canaries, black.n_canaries, black.n_samples) == (50, 2, 30) and pd.isna(white.n_samples)
    for column in ("epsilon_claimed", "noise_multiplier", "sample_rate", "steps", "seconds"):
        assert white[column] == black[column], column  # one training run
    assert (table.epsilon_lower <= table.epsilon_claimed).all() and math.isfinite(white.epsilon_claimed)
    written = pd.read_parquet(tmp_path / "audit.parquet")
    assert len(written) == 2 and str(written.n_samples.dtype) == "Int64"
    gathered = gather_audits([tmp_path / "audit.parquet"], tmp_path / "all.parquet")
    assert gathered.threat_model.tolist() == [BLACK_BOX, THREAT_MODEL]
    white_only = audit(2, 0, "white.parquet")
    assert white_only.threat_model.tolist() == [THREAT_MODEL]


def test_the_figure_shows_both_threat_models(tmp_path):
    from dpmedgen.plots.one_run_audit import plot_one_run_audit

    rows = [
        {
            "dataset": "d",
            "model": "dcgan",
            "epsilon_target": e,
            "epsilon_claimed": e * 0.99,
            "epsilon_lower": low,
            "n_canaries": m,
            "n_guesses": 100,
            "n_correct": 50,
            "threat_model": threat,
        }
        for e in (1.0, 10.0)
        for threat, m, low in ((THREAT_MODEL, 1000, 0.1), (BLACK_BOX, 500, 0.0))
    ]
    import matplotlib

    matplotlib.use("Agg")
    captured = {}
    original = matplotlib.axes.Axes.legend

    def legend(self, *args, **kwargs):
        captured["labels"] = [h.get_label() for h in kwargs["handles"]]
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(matplotlib.axes.Axes, "legend", legend)
        plot_one_run_audit(pd.DataFrame(rows), "d", [tmp_path / "f.png"])
    assert (tmp_path / "f.png").stat().st_size > 10_000
    assert any("black-box" in label for label in captured["labels"])
    assert any("white-box" in label for label in captured["labels"])
