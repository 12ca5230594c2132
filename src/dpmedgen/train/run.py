"""Train one run from the preprocessed images and the patient split, and write its artefacts."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from dpmedgen.data.schema import read_image_set
from dpmedgen.data.split import read_splits, select_split
from dpmedgen.models import MODELS, GANModel
from dpmedgen.privacy import PRIVACY_MODES, TrainingData, write_ledger
from dpmedgen.runs import RunSpec
from dpmedgen.train.engine import TrainConfig, seed_everything, train_gan


def load_training_data(images_h5: str | os.PathLike, splits_parquet: str | os.PathLike, modality: str) -> TrainingData:
    """The train split's images of one modality, scaled from [0, 1] to [-1, 1], shape (N, 1, H, W)."""
    images = read_image_set(images_h5, modalities=[modality])
    train = select_split(images, read_splits(splits_parquet), "train")
    pixels = torch.from_numpy(train.modalities[modality]).unsqueeze(1) * 2.0 - 1.0
    return TrainingData(images=pixels, patient_ids=train.patient_id)


def train_run(
    run: RunSpec,
    *,
    images_h5: str | os.PathLike,
    splits_parquet: str | os.PathLike,
    modality: str,
    model_params: dict[str, Any],
    privacy_params: dict[str, Any],
    delta: float,
    train: dict[str, Any],
    checkpoint: str | os.PathLike,
    ledger: str | os.PathLike,
    log_csv: str | os.PathLike,
    reference_checkpoint: str | os.PathLike | None = None,
    reference_log: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `run` and write its checkpoint, privacy ledger and training log; return the ledger.

    Modes that add no privacy to training (`reuses_nonprivate_training`, e.g. output perturbation) do not
    train again: they take the non-private run of the same dataset, model and seed
    (`reference_checkpoint`, `reference_log`) and only write their own ledger.
    """
    data = load_training_data(images_h5, splits_parquet, modality)
    image_size = int(data.images.shape[-1])
    privacy = PRIVACY_MODES.get(run.privacy)(target_epsilon=run.epsilon, delta=delta, seed=run.seed, **privacy_params)
    identity = {"dataset": run.dataset, "model": run.model, "privacy": run.privacy, "seed": run.seed}
    sizes = {"n_train_images": data.n_images, "n_train_patients": data.n_patients}

    if privacy.reuses_nonprivate_training:
        state = _reference_state(run, reference_checkpoint)
        privacy.set_output_shape(tuple(data.images.shape[1:]))
        record = privacy.ledger() | identity | sizes | {"trained_by": state["run"]}
        state["run"] = run.as_dict()
        _save_checkpoint(state, checkpoint)
        shutil.copyfile(reference_log, log_csv)
        write_ledger(ledger, record)
        return record

    seed_everything(run.seed)  # weight initialisation must not depend on what ran before in this process
    model: GANModel = MODELS.get(run.model)(image_size=image_size, **model_params)
    cfg = TrainConfig(seed=run.seed, **train)
    rows = train_gan(model, data, privacy, cfg, run_name=run.name, log_csv=log_csv, progress=progress)

    # The run's identity goes beside the ledger; its `epsilon` is the *spent* bound, never the target.
    record = privacy.ledger() | identity | sizes
    state = {
        "run": run.as_dict(),
        "model": run.model,
        "model_params": dict(model_params),
        "image_size": image_size,
        "modality": modality,
        "generator": model.generator.state_dict(),
        "discriminator": model.discriminator.state_dict(),
        "final_log": rows[-1] if rows else {},
    }
    _save_checkpoint(state, checkpoint)
    write_ledger(ledger, record)
    return record


def _save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _reference_state(run: RunSpec, reference_checkpoint: str | os.PathLike | None) -> dict[str, Any]:
    if reference_checkpoint is None:
        raise ValueError(f"{run.name}: privacy mode {run.privacy!r} reuses the non-private run; give its checkpoint")
    state = torch.load(reference_checkpoint, map_location="cpu", weights_only=True)
    ref = state["run"]
    expected = {"dataset": run.dataset, "model": run.model, "privacy": "none", "seed": run.seed}
    if {k: ref[k] for k in expected} != expected:
        raise ValueError(f"{run.name}: reference checkpoint {reference_checkpoint} is run {ref}, expected {expected}")
    return state


def load_generator(checkpoint: str | os.PathLike) -> tuple[GANModel, dict[str, Any]]:
    """Rebuild the trained model from a checkpoint (loaded with weights_only=True)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model: GANModel = MODELS.get(state["model"])(image_size=state["image_size"], **state["model_params"])
    model.generator.load_state_dict(state["generator"])
    return model, state
