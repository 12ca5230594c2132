"""The audit stage: a one-run white-box audit of a DP-SGD configuration of the study (`dpmedgen.privacy.audit`).

For a (dataset, model, epsilon, seed) of the study's DP-SGD grid, the model is trained once more on the same
training data, with the same DP-SGD settings (sampler, clipping, calibration, accountant, steps, batch), plus
`n_canaries` white-box gradient canaries; the canaries' scores give a 95 % lower bound on epsilon, written
beside the epsilon the run's ledger claims. With one generator per class (`train.class_generators`) the audited
training is that of the largest class, with a class generator's steps: the same mechanism as each class's.

The audit run is a diagnostic: it is not part of the study's release and writes no checkpoint.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pandas as pd

from dpmedgen.io import write_parquet
from dpmedgen.privacy.audit import THREAT_MODEL, AuditedDPSGD
from dpmedgen.privacy.randomness import check_randomness
from dpmedgen.results import EPSILON_TARGET
from dpmedgen.runs import RunSpec

#: The audit table (`results/audit.parquet`): one row per audited configuration.
AUDIT_COLUMNS = (
    "dataset", "model", "privacy", EPSILON_TARGET, "seed", "epsilon_claimed", "epsilon_lower", "delta",
    "n_canaries", "n_guesses", "n_correct", "threat_model", "network", "noise_multiplier", "sample_rate",
    "steps", "adjacency", "seconds",
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
) -> pd.DataFrame:
    """Train `run`'s DP-SGD configuration with `n_canaries` gradient canaries and write its audit row."""
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
    start = time.perf_counter()
    train_model(model, data, mode, cfg, run_name=f"{run.name} (audit)", progress=False)
    result = mode.audit()
    ledger = mode.ledger()
    row = run.table_keys() | {
        "epsilon_claimed": result["epsilon_claimed"], "epsilon_lower": result["epsilon_lower"], "delta": delta,
        "n_canaries": result["n_canaries"], "n_guesses": result["n_guesses"], "n_correct": result["n_correct"],
        "threat_model": THREAT_MODEL, "network": result["network"], "noise_multiplier": ledger["noise_multiplier"],
        "sample_rate": ledger["sample_rate"], "steps": ledger["steps"], "adjacency": ledger["adjacency"],
        "seconds": time.perf_counter() - start,
    }
    table = pd.DataFrame([row], columns=list(AUDIT_COLUMNS))
    write_parquet(table, out_parquet)
    return table


def gather_audits(files: list[str | os.PathLike], out_parquet: str | os.PathLike) -> pd.DataFrame:
    """The audit table of the study: every audit row, sorted by run."""
    tables = [pd.read_parquet(f) for f in files]
    table = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=list(AUDIT_COLUMNS))
    table = table.sort_values(["dataset", "model", EPSILON_TARGET, "seed"], kind="stable").reset_index(drop=True)
    write_parquet(table, out_parquet)
    return table


__all__ = ["AUDIT_COLUMNS", "gather_audits", "one_run_audit"]
