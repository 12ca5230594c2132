"""Train one run from the preprocessed images and the patient split, and write its artefacts."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from dpmedgen.data.canary import canary_patients, plant
from dpmedgen.data.schema import read_image_set
from dpmedgen.data.split import read_splits, select_split
from dpmedgen.io import load_torch, write_atomic
from dpmedgen.models import MODELS, GenerativeModel
from dpmedgen.models.mixture import ClassMixture
from dpmedgen.privacy import PRIVACY_MODES, TrainingData, compose_parallel, write_ledger
from dpmedgen.privacy.randomness import check_randomness
from dpmedgen.train.pretrain import initialisation_record, load_pretrained
from dpmedgen.runs import RunSpec
from dpmedgen.train.engine import TrainConfig, fingerprint, seed_everything, train_model

log = logging.getLogger(__name__)

GRID_SAMPLES = 16  # images per progress grid
GRID_SEED = 2024  # fixed latents / inputs for every grid of a run, so grids are comparable across epochs


def load_split_images(
    images_h5: str | os.PathLike, splits_parquet: str | os.PathLike, modalities: tuple[str, ...], split: str = "train"
) -> TrainingData:
    """One split's images, modalities stacked as channels, scaled from [0, 1] to [-1, 1]: (N, C, H, W).

    The images of canary patients (the split table's ``canary`` column) carry the canary marker in every
    channel (:mod:`dpmedgen.data.canary`): training sees them that way."""
    images = read_image_set(images_h5, modalities=list(modalities))
    splits = read_splits(splits_parquet)
    part = select_split(images, splits, split)
    pixels = torch.from_numpy(np.stack([part.modalities[m] for m in modalities], axis=1)) * 2.0 - 1.0
    carriers = pd.Series(part.patient_id.astype(str)).isin(canary_patients(splits)).to_numpy()
    if carriers.any():
        pixels = plant(pixels, carriers, low=-1.0, high=1.0)
    return TrainingData(images=pixels, patient_ids=part.patient_id, labels=part.label.astype(np.int64))


def build_model(name: str, image_size: int, params: dict[str, Any]) -> GenerativeModel:
    return MODELS.get(name)(image_size=image_size, **params)


def model_modalities(model: GenerativeModel, dataset_modality: str) -> tuple[str, ...]:
    return tuple(model.modalities) if model.modalities else (dataset_modality,)


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
    progress_dir: str | os.PathLike | None = None,
    reference_checkpoint: str | os.PathLike | None = None,
    reference_log: str | os.PathLike | None = None,
    reference_progress_dir: str | os.PathLike | None = None,
    progress: bool = True,
    randomness: str = "secret",
    init_checkpoint: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Train `run`; write its checkpoint, ledger, per-epoch log and (`progress_dir`) sample grids; return the ledger.

    A resume checkpoint (`resume.pt` beside `checkpoint`) is written during training; a killed job started again
    with the same settings continues from there; the file is removed once the run has finished.

    Modes that add no privacy to training (`reuses_nonprivate_training`, e.g. output perturbation) take the
    non-private run of the same dataset, model and seed (`reference_checkpoint`, `reference_log`,
    `reference_progress_dir`) and only write their own ledger.

    With `train["class_generators"]`, an unconditional model is trained once per class label of the train
    split, on that class's patients only, each with its own privacy-mode instance and random streams and
    ceil(steps / K) steps; the checkpoint holds every class's weights (`load_model` returns a
    `ClassMixture`), the ledger is their parallel composition (`compose_parallel`), the log has a `class`
    column, and each class has its own resume file (`resume_class<k>.pt`) and progress grids.

    `randomness` (`dpmedgen.privacy.randomness`): "secret" (default) gives every privacy-mode instance (this
    run, each class generator) its own 128-bit root from the OS, kept only in the resume files; "deterministic"
    derives it from the public run seed (bit-identical reruns; not a DP release, and the ledger says so).

    `init_checkpoint` (`dpmedgen.train.pretrain`): public pretrained weights every model starts from (the
    ledger's `initialisation` says which).
    """
    check_randomness(randomness)
    seed_everything(run.seed)  # weight initialisation must not depend on what ran before in this process
    model, data = model_and_training_data(run, images_h5, splits_parquet, modality, model_params)
    image_size, modalities = int(data.images.shape[-1]), model_modalities(model, modality)
    init_state = None
    if init_checkpoint is not None:
        init_state = load_pretrained(init_checkpoint, run.model, model_params, image_size)
        model.load_state_dict(init_state["state_dict"])
    job = _RunTraining(
        run=run, model_params=dict(model_params), privacy_params=dict(privacy_params), delta=delta,
        randomness=randomness, modalities=modalities, image_size=image_size, init_state=init_state,
        checkpoint=Path(checkpoint), progress_dir=progress_dir, progress=progress,
    )
    privacy = job.new_privacy_mode(run.seed)
    identity = {"dataset": run.dataset, "model": run.model, "privacy": run.privacy, "seed": run.seed}
    sizes = {"n_train_images": data.n_images, "n_train_patients": data.n_patients}
    if progress_dir is not None:
        shutil.rmtree(progress_dir, ignore_errors=True)
        Path(progress_dir).mkdir(parents=True)
    if privacy.reuses_nonprivate_training:
        state = _reference_state(run, reference_checkpoint)
        privacy.set_output_shape(tuple(state["output_shape"]))
        record = privacy.full_ledger() | identity | sizes | {"trained_by": state["run"]}
        record |= state.get("initialisation") or initialisation_record(None)
        if "classes" in state:
            record["class_generators"] = list(state["classes"])
        state["run"] = run.as_dict()
        _copy_reference_outputs(state, checkpoint, reference_log, log_csv, reference_progress_dir, progress_dir)
        write_ledger(ledger, record)
        return record

    cfg = TrainConfig(seed=run.seed, **train)
    job.grid_inputs = _grid_inputs(model, images_h5, splits_parquet, modalities)
    state = {
        "run": run.as_dict(),
        "model": run.model,
        "model_params": dict(model_params),
        "image_size": image_size,
        "modalities": list(modalities),
        "output_shape": [1, image_size, image_size],
        "initialisation": job.initialisation,
    }
    if not uses_class_generators(cfg, model, data, run.name):
        rows, resume = job.train_one(model, data, privacy, cfg, "", log_csv)
        # The run's identity goes beside the ledger (its `epsilon_spent` is the bound, `epsilon_target` the target).
        record = privacy.full_ledger() | identity | sizes | job.initialisation
        state |= {"state_dict": model.state_dict(), "final_log": rows[-1] if rows else {}}
        resumes = [resume]
    else:
        ledgers, classes, resumes = job.train_classes(data, cfg, log_csv)
        record = compose_parallel(ledgers) | identity | sizes | {"class_generators": sorted(ledgers)} | job.initialisation
        state |= classes
    _save_checkpoint(state, checkpoint)
    write_ledger(ledger, record)
    for resume in resumes:
        resume.unlink(missing_ok=True)
    return record


def _copy_reference_outputs(state, checkpoint, reference_log, log_csv, reference_progress_dir, progress_dir) -> None:
    """A run that reuses the non-private training: its checkpoint (the reference's weights under its own
    identity), and the reference's log and progress grids."""
    _save_checkpoint(state, checkpoint)
    shutil.copyfile(reference_log, log_csv)
    if progress_dir is not None and reference_progress_dir is not None:
        shutil.copytree(reference_progress_dir, progress_dir, dirs_exist_ok=True)


@dataclass
class _RunTraining:
    """What every training of one run shares (the model, or each class generator): its settings, the weights
    it starts from, and where its resume files and progress grids go."""

    run: RunSpec
    model_params: dict[str, Any]
    privacy_params: dict[str, Any]
    delta: float
    randomness: str
    modalities: tuple[str, ...]
    image_size: int
    init_state: dict[str, Any] | None
    checkpoint: Path
    progress_dir: str | os.PathLike | None
    progress: bool
    grid_inputs: Any = None

    @cached_property
    def initialisation(self) -> dict[str, Any]:
        """What the ledger says about the weights every training of the run starts from."""
        return initialisation_record(self.init_state)

    def new_privacy_mode(self, seed: int):
        """The run's privacy mode with its own random root: `seed` when deterministic, else a fresh secret."""
        root = seed if self.randomness == "deterministic" else None
        return PRIVACY_MODES.get(self.run.privacy)(
            target_epsilon=self.run.epsilon, delta=self.delta, seed=root, **self.privacy_params
        )

    def train_one(self, model: GenerativeModel, part: TrainingData, privacy, cfg: TrainConfig, tag: str, log_path):
        """Train `model` on `part`; `tag` names its resume file and progress grids ("" for a single model).
        Returns the log rows and the resume file."""
        run = self.run
        resume = self.checkpoint.with_name(f"resume{tag}.pt")
        run_fingerprint = fingerprint(
            run=run.as_dict(), model_params=self.model_params, privacy_params=self.privacy_params, delta=self.delta,
            randomness=self.randomness, train=cfg.fingerprint_fields(), modalities=self.modalities, tag=tag,
            initialisation=self.initialisation, data=hashlib.sha256(part.images.numpy().tobytes()).hexdigest(),
        )

        def on_grid(epoch: int, trained: GenerativeModel) -> None:
            if self.progress_dir is not None:
                _write_grid(trained, self.grid_inputs, Path(self.progress_dir) / f"epoch_{epoch:05d}{tag}.png")

        rows = train_model(
            model, part, privacy, cfg, run_name=f"{run.name}{tag}", log_csv=log_path, resume_path=resume,
            run_fingerprint=run_fingerprint, on_grid=on_grid, progress=self.progress,
        )
        return rows, resume

    def train_classes(self, data: TrainingData, cfg: TrainConfig, log_csv) -> tuple[dict, dict[str, Any], list[Path]]:
        """One generator per class label, each on its class's patients with its own privacy mode and random
        streams: the classes' ledgers, the checkpoint entries (`classes`, `state_dicts`, `final_log`) and the
        resume files. The log of every class is written to `log_csv` with a `class` column."""
        parts = class_parts(data, self.run)
        # The configured steps are shared: each class's generator trains steps / K steps on 1/K-ish of the
        # data, so the mixture costs what one generator would and sees each image about as often.
        class_cfg = class_config(cfg, len(parts))
        ledgers, state_dicts, logs, resumes, final_logs = {}, [], [], [], {}
        for label, part in parts.items():
            # Every class has its own random streams (initialisation, latents, and the privacy mode's noise and
            # sampling): a class's release must not reveal the noise that protects another class.
            class_seed = self.run.seed * 1000 + label
            seed_everything(class_seed)
            component = build_model(self.run.model, self.image_size, self.model_params)
            if self.init_state is not None:
                component.load_state_dict(self.init_state["state_dict"])
            mode = self.new_privacy_mode(class_seed)
            class_log = Path(log_csv).with_name(f".{Path(log_csv).stem}_class{label}.csv")
            rows, resume = self.train_one(component, part, mode, replace(class_cfg, seed=class_seed), f"_class{label}", class_log)
            ledgers[label] = mode.full_ledger() | {"n_train_images": part.n_images, "n_train_patients": part.n_patients}
            state_dicts.append(component.state_dict())
            final_logs[f"class{label}"] = rows[-1] if rows else {}
            logs.append(pd.read_csv(class_log).assign(**{"class": label}))
            class_log.unlink()
            resumes.append(resume)
        _write_csv(pd.concat(logs, ignore_index=True), log_csv)
        return ledgers, {"classes": sorted(parts), "state_dicts": state_dicts, "final_log": final_logs}, resumes


def model_and_training_data(
    run: RunSpec, images_h5, splits_parquet, modality: str, model_params: dict[str, Any]
) -> tuple[GenerativeModel, TrainingData]:
    """`run`'s model, built at the preprocessed images' size, and its training data (the modalities it reads)."""
    image_size = int(read_image_set(images_h5, modalities=[modality]).shape[-1])
    model = build_model(run.model, image_size, model_params)
    return model, load_split_images(images_h5, splits_parquet, model_modalities(model, modality))


def uses_class_generators(cfg: TrainConfig, model: GenerativeModel, data: TrainingData, name: str = "run") -> bool:
    """Whether `train.class_generators` applies: an unconditional model on data with a label on every image."""
    if not cfg.class_generators or model.kind == "fusion":
        return False
    if data.labels is None or bool((data.labels < 0).all()):
        log.info("%s: the dataset has no class labels; train.class_generators is ignored (one generator)", name)
        return False
    return True


def class_config(cfg: TrainConfig, n_classes: int) -> TrainConfig:
    """A class generator's settings: the configured steps are shared between the classes, so the mixture costs
    what one generator would and sees each image about as often."""
    return replace(cfg, steps=max(1, math.ceil(cfg.steps / n_classes)))


def class_parts(data: TrainingData, run: RunSpec) -> dict[int, TrainingData]:
    """The training data of each class label (at least two classes, each a whole set of patients)."""
    if data.labels is None or (data.labels < 0).any():
        raise ValueError(f"{run.name}: train.class_generators needs a class label on every training image")
    labels = sorted(int(c) for c in np.unique(data.labels))
    if len(labels) < 2:
        raise ValueError(
            f"{run.name}: train.class_generators needs at least two classes in the train split, found {labels}; "
            "set train.class_generators: false for a one-class dataset"
        )
    return {label: data.subset(data.labels == label) for label in labels}


def _write_csv(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def _grid_inputs(model: GenerativeModel, images_h5, splits_parquet, modalities) -> torch.Tensor | None:
    """Fusion models fuse a fixed set of validation pairs (never training data) for their progress grids."""
    if model.kind != "fusion":
        return None
    val = load_split_images(images_h5, splits_parquet, modalities, split="val")
    return val.images[:GRID_SAMPLES]


def _write_grid(model: GenerativeModel, inputs: torch.Tensor | None, path: Path) -> None:
    from dpmedgen.plots.grid import save_image_grid

    rng_state = torch.get_rng_state()  # drawing a grid must not change the training's random stream
    try:
        if inputs is not None:
            images = model.fuse(inputs.to(next(model.parameters()).device))
        else:
            images = model.sample(GRID_SAMPLES, generator=torch.Generator().manual_seed(GRID_SEED))
    finally:
        torch.set_rng_state(rng_state)
    save_image_grid(images[:, 0].numpy(), path, n_cols=8)


def _save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def _reference_state(run: RunSpec, reference_checkpoint: str | os.PathLike | None) -> dict[str, Any]:
    if reference_checkpoint is None:
        raise ValueError(f"{run.name}: privacy mode {run.privacy!r} reuses the non-private run; give its checkpoint")
    state = load_torch(reference_checkpoint)
    ref = state["run"]
    expected = {"dataset": run.dataset, "model": run.model, "privacy": "none", "seed": run.seed}
    if {k: ref[k] for k in expected} != expected:
        raise ValueError(f"{run.name}: reference checkpoint {reference_checkpoint} is run {ref}, expected {expected}")
    return state


def load_model(checkpoint: str | os.PathLike) -> tuple[GenerativeModel | ClassMixture, dict[str, Any]]:
    """Rebuild the trained model from a checkpoint (loaded with weights_only=True), in eval mode: a
    `ClassMixture` for a run of one generator per class."""
    state = load_torch(checkpoint)
    if "classes" in state:
        components = {}
        for label, state_dict in zip(state["classes"], state["state_dicts"]):
            components[int(label)] = build_model(state["model"], state["image_size"], state["model_params"])
            components[int(label)].load_state_dict(state_dict)
        model = ClassMixture(components)
    else:
        model = build_model(state["model"], state["image_size"], state["model_params"])
        model.load_state_dict(state["state_dict"])
    model.eval()
    return model, state


