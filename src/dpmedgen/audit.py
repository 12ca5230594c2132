"""The audit stage: a one-run audit of a DP-SGD configuration of the study (`dpmedgen.privacy.audit`) under two
threat models, from one training run.

For a (dataset, model, epsilon, seed) of the study's DP-SGD grid, the model is trained once more on the same
training data, with the same DP-SGD settings (sampler, clipping, calibration, accountant, steps, batch), plus
`n_canaries` white-box gradient canaries and `n_canary_patients` black-box input canaries (training patients
whose images carry a code iff included; N, q and sigma are unchanged). The gradient canaries are scored from
every noisy update, the input canaries from `n_samples` samples of the trained generator only; each gives a
95 % lower bound on epsilon, written beside the epsilon the run's ledger claims (two rows). With one
generator per class (`train.class_generators`) the audited training is that of the largest class, with a
class generator's steps: the same mechanism as each class's. A fusion model draws no unconditional samples:
it gets the white-box row only (and so does `n_canary_patients` 0).

The audit run is a diagnostic: it is not part of the study's release and writes no checkpoint.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import pandas as pd

from dpmedgen.io import write_parquet
from dpmedgen.privacy.audit import BLACK_BOX, THREAT_MODEL, AuditedDPSGD, InputCanaries
from dpmedgen.privacy.randomness import check_randomness
from dpmedgen.results import EPSILON_TARGET
from dpmedgen.runs import RunSpec

log = logging.getLogger(__name__)

#: The audit table (`results/audit.parquet`): one row per audited configuration and threat model. `seconds`:
#: the audit run's training (shared by its two rows); `score_seconds`: the scoring (black-box: drawing the
#: samples too); `n_samples`: the samples the black-box auditor saw (missing for the white-box row).
AUDIT_COLUMNS = (
    "dataset", "model", "privacy", EPSILON_TARGET, "seed", "epsilon_claimed", "epsilon_lower", "delta",
    "n_canaries", "n_guesses", "n_correct", "threat_model", "network", "noise_multiplier", "sample_rate",
    "steps", "adjacency", "seconds", "n_samples", "score_seconds",
)


def one_run_audit(
    run: RunSpec,
    *,
    images_h5: str | os.PathLike,
    splits_parquet: str | os.PathLike,
    modality: str,
    model_params: dict[str, Any],
    privacy_params: dict[str, Any],
    delta: float,
    train: dict[str, Any],
    n_canaries: int,
    out_parquet: str | os.PathLike,
    randomness: str = "secret",
    n_canary_patients: int = 0,
    n_samples: int = 1,
) -> pd.DataFrame:
    """Train `run`'s DP-SGD configuration with `n_canaries` gradient canaries and `n_canary_patients` input
    canaries, and write its audit rows (white-box; black-box unless `n_canary_patients` is 0 or the model is a
    fusion model)."""
    import torch

    from dpmedgen.data.canary import canary_patients
    from dpmedgen.data.split import read_splits
    from dpmedgen.train.engine import TrainConfig, seed_everything, train_model
    from dpmedgen.train.run import class_config, class_parts, model_and_training_data, uses_class_generators

    if run.privacy != "dpsgd":
        raise ValueError(f"{run.name}: the one-run audit instruments DP-SGD runs; got privacy mode {run.privacy!r}")
    check_randomness(randomness)
    seed_everything(run.seed)
    model, data = model_and_training_data(run, images_h5, splits_parquet, modality, model_params)
    cfg = TrainConfig(seed=run.seed, **(train | {"checkpoint_every": 0, "grid_every": 0}))
    if uses_class_generators(cfg, model, data, run.name):  # the largest class, with a class generator's steps
        parts = class_parts(data, run)
        data = max(parts.values(), key=lambda part: part.n_patients)
        cfg = class_config(cfg, len(parts))
    mode = AuditedDPSGD(
        n_canaries=n_canaries, target_epsilon=run.epsilon, delta=delta,
        seed=run.seed if randomness == "deterministic" else None, **privacy_params,
    )
    black_box = n_canary_patients > 0 and model.kind != "fusion"
    if n_canary_patients > 0 and not black_box:
        log.info("%s: a fusion model draws no unconditional samples; black-box audit skipped", run.name)
    if black_box:  # the carriers of the `canary` metric's marker are left out: their corner holds a marker
        inputs = InputCanaries(
            data, n_canary_patients, mode.rng_seed("input_canaries"),
            exclude=canary_patients(read_splits(splits_parquet)), unit=mode.unit,
        )
        data = inputs.plant(data)
    start = time.perf_counter()
    train_model(model, data, mode, cfg, run_name=f"{run.name} (audit)", progress=False)
    seconds = time.perf_counter() - start
    ledger = mode.ledger()
    shared = run.table_keys() | {
        "epsilon_claimed": mode.epsilon_spent(), "delta": delta, "noise_multiplier": ledger["noise_multiplier"],
        "sample_rate": ledger["sample_rate"], "steps": ledger["steps"], "adjacency": ledger["adjacency"],
        "seconds": seconds,
    }
    start = time.perf_counter()
    white = mode.audit()
    rows = [shared | _counts(white) | {
        "threat_model": THREAT_MODEL, "network": white["network"], "n_samples": None,
        "score_seconds": time.perf_counter() - start,
    }]
    if black_box:
        start = time.perf_counter()
        samples = model.sample(n_samples, generator=torch.Generator().manual_seed(mode.rng_seed("audit_samples")))
        black = inputs.audit(samples, delta)
        rows.append(shared | _counts(black) | {
            "threat_model": BLACK_BOX, "network": "samples", "n_samples": black["n_samples"],
            "score_seconds": time.perf_counter() - start,
        })
    table = pd.DataFrame(rows, columns=list(AUDIT_COLUMNS)).astype({"n_samples": "Int64"})
    write_parquet(table, out_parquet)
    return table


def _counts(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in ("epsilon_lower", "n_canaries", "n_guesses", "n_correct")}


def gather_audits(files: list[str | os.PathLike], out_parquet: str | os.PathLike) -> pd.DataFrame:
    """The audit table of the study: every audit row (each threat model of each run), sorted by run."""
    tables = [pd.read_parquet(f) for f in files]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(AUDIT_COLUMNS))
    order = ["dataset", "model", EPSILON_TARGET, "seed", "threat_model"]
    table = table.sort_values(order, kind="stable").reset_index(drop=True)
    write_parquet(table, out_parquet)
    return table


__all__ = ["AUDIT_COLUMNS", "gather_audits", "one_run_audit"]
