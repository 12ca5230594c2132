"""Public pretraining: one model trained non-privately on a public cohort, the initialisation of every run.

DP-SGD generators trained from a random initialisation on a few thousand records learn little at useful ε;
the DP image-generation literature starts them from weights trained on public data instead (e.g. Ghalebikesabi
et al., "Differentially private diffusion models generate useful synthetic images", 2023; Harder et al.,
"Pre-trained perceptual features improve differentially private image generation", TMLR 2023). Here the public
data is a `datasets` entry with ``public: true`` (for the default study a second ``brain_phantom`` cohort with
another seed: other virtual patients, none of them in the studied cohort), and a studied dataset names it under
``pretrain_on``. Every run of a model on that dataset, private or not, then starts from the same pretrained
weights (each class generator too), so the privacy modes differ only in how they use the private data.

Privacy: the pretraining reads no private record, so it costs no privacy budget; the ledger of every run states
its initialisation (:func:`initialisation_record`). Its hyper-parameters, like every other one, are fixed in
advance in the config.

The pretraining uses every image of the public set (all splits, labels ignored), the model's training settings
(`train` with the model's overrides: batch size, learning rates) and ``pretrain.steps`` steps, from the public
seed ``pretrain.seed``.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import numpy as np
import torch

from dpmedgen.data.schema import read_image_set
from dpmedgen.io import load_torch, write_atomic
from dpmedgen.privacy import PRIVACY_MODES, TrainingData
from dpmedgen.train.engine import TrainConfig, seed_everything, train_model

log = logging.getLogger(__name__)

__all__ = ["PRETRAINED_FORMAT", "pretrain", "load_pretrained", "initialisation_record", "weights_sha256"]

PRETRAINED_FORMAT = 1


def _public_images(images_h5: str | os.PathLike, modalities: tuple[str, ...]) -> TrainingData:
    """Every image of the public set, the model's modalities as channels, scaled to [-1, 1]."""
    images = read_image_set(images_h5, modalities=list(modalities))
    pixels = torch.from_numpy(np.stack([images.modalities[m] for m in modalities], axis=1)) * 2.0 - 1.0
    return TrainingData(images=pixels, patient_ids=np.asarray(images.patient_id))


def weights_sha256(state_dict: dict[str, Any]) -> str:
    """SHA-256 of the weights themselves (every entry in name order: a tensor's dtype, shape and bytes; a nested
    dict, as some models keep, entry by entry; any other value by its repr): two files holding the same weights
    have the same digest, whatever else they record (e.g. the pretraining's timing)."""
    digest = hashlib.sha256()

    def update(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key in sorted(value, key=str):
                update(f"{prefix}/{key}", value[key])
        elif isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{prefix}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(f"{prefix}|{value!r}|".encode())

    update("", state_dict)
    return digest.hexdigest()


def pretrain(
    model_name: str,
    *,
    model_params: dict[str, Any],
    images_h5: str | os.PathLike,
    modality: str,
    public_dataset: str,
    steps: int,
    train: dict[str, Any],
    seed: int,
    out: str | os.PathLike,
    log_csv: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train `model_name` non-privately on every image of the public set `images_h5` and write its weights to
    `out`; return the record that runs copy into their ledgers."""
    from dpmedgen.train.run import build_model, model_modalities

    image_size = int(read_image_set(images_h5, modalities=[modality]).shape[-1])
    seed_everything(seed)
    model = build_model(model_name, image_size, model_params)
    modalities = model_modalities(model, modality)
    data = _public_images(images_h5, modalities)
    settings = {k: v for k, v in train.items() if k != "class_generators"}
    cfg = TrainConfig(**(settings | {"steps": int(steps), "seed": int(seed), "checkpoint_every": 0, "grid_every": 0}))
    # public data, public seed: the shuffle needs no secret root, and the same config pretrains the same weights
    nonprivate = PRIVACY_MODES.get("none")(target_epsilon=float("inf"), delta=0.0, seed=int(seed))
    rows = train_model(model, data, nonprivate, cfg, run_name=f"pretrain {model_name} on {public_dataset}",
                       log_csv=log_csv, progress=progress)
    record = {
        "dataset": public_dataset,
        "model": model_name,
        "steps": int(steps),
        "seed": int(seed),
        "n_images": int(data.n_images),
        "n_patients": int(data.n_patients),
    }
    state = {
        "format": PRETRAINED_FORMAT,
        "model": model_name,
        "model_params": dict(model_params),
        "image_size": image_size,
        "modalities": list(modalities),
        "state_dict": model.state_dict(),
        "pretraining": record,
        "final_log": rows[-1] if rows else {},
    }
    write_atomic(out, lambda tmp: torch.save(state, tmp))
    return record


def load_pretrained(path: str | os.PathLike, model_name: str, model_params: dict[str, Any], image_size: int) -> dict[str, Any]:
    """The pretrained state in `path`, checked to be the weights of the same model (name, parameters, size)."""
    state = load_torch(path)
    expected = {"model": model_name, "model_params": dict(model_params), "image_size": int(image_size)}
    found = {k: state.get(k) for k in expected}
    if found != expected:
        raise ValueError(f"{path}: pretrained weights of {found}, but the run trains {expected}; pretrain again")
    return state


def initialisation_record(state: dict[str, Any] | None) -> dict[str, Any]:
    """What a ledger says about the weights a run started from."""
    if state is None:
        return {"initialisation": "random (public seed)"}
    pre = state["pretraining"]
    return {
        "initialisation": (
            f"pretrained non-privately on the public dataset {pre['dataset']!r} ({pre['n_images']} images of "
            f"{pre['n_patients']} patients, {pre['steps']} steps): no private record read, no privacy cost"
        ),
        "initialisation_sha256": weights_sha256(state["state_dict"]),
    }
