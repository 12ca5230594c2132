"""The common HDF5 image schema shared by every dataset, preprocessed set and sample file.

Layout of one file::

    /modalities/<name>   float32 (N, H, W), values in [0, 1]   one array per modality ("mri", "pet", ...)
    /patient_id          utf-8 strings (N,)                     "" for synthetic samples
    /slice               int32 (N,)                             slice index within the patient's volume
    /label               int8 (N,)                              class label; -1 when unknown/unconditional
    attrs: schema_version, dataset, modalities (JSON list), provenance (JSON object)

All modalities of one file share N, H and W, so row i of every array describes the same image (for
paired data, e.g. MRI-PET, row i of each modality is the same patient and slice).
Files are written atomically (temporary file, then rename): a crash never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dpmedgen.io import write_atomic

SCHEMA_VERSION = 1


class SchemaError(ValueError):
    """A file or array does not follow the common image schema."""


@dataclass
class ImageSet:
    """In-memory form of one schema file."""

    modalities: dict[str, np.ndarray]
    patient_id: np.ndarray
    slice: np.ndarray
    label: np.ndarray
    dataset: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.patient_id = np.asarray(self.patient_id, dtype=object).astype(str)
        self.slice = np.asarray(self.slice, dtype=np.int32)
        self.label = np.asarray(self.label, dtype=np.int8)
        self.modalities = {k: np.asarray(v, dtype=np.float32) for k, v in self.modalities.items()}
        self.validate()

    def __len__(self) -> int:
        return len(self.patient_id)

    @property
    def shape(self) -> tuple[int, int]:
        first = next(iter(self.modalities.values()))
        return int(first.shape[1]), int(first.shape[2])

    def validate(self) -> None:
        if not self.modalities:
            raise SchemaError("an image set needs at least one modality")
        n = len(self.patient_id)
        for name, arr in self.modalities.items():
            if arr.ndim != 3:
                raise SchemaError(f"modality {name!r} must be (N, H, W); got shape {arr.shape}")
            if arr.shape[0] != n:
                raise SchemaError(f"modality {name!r} has {arr.shape[0]} images but {n} patient ids")
            if n and (not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0):
                raise SchemaError(f"modality {name!r} must hold finite values in [0, 1]")
        shapes = {a.shape for a in self.modalities.values()}
        if len(shapes) != 1:
            raise SchemaError(f"all modalities must share one shape; got {sorted(shapes)}")
        if len(self.slice) != n or len(self.label) != n:
            raise SchemaError("patient_id, slice and label must have one entry per image")

    def subset(self, mask: np.ndarray) -> "ImageSet":
        """Rows selected by a boolean mask or an index array."""
        return ImageSet(
            modalities={k: v[mask] for k, v in self.modalities.items()},
            patient_id=self.patient_id[mask],
            slice=self.slice[mask],
            label=self.label[mask],
            dataset=self.dataset,
            provenance=dict(self.provenance),
        )


def write_image_set(path: str | os.PathLike, images: ImageSet) -> None:
    """Write `images` to `path` in the common schema, atomically."""
    images.validate()

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            grp = f.create_group("modalities")
            for name, arr in images.modalities.items():
                grp.create_dataset(name, data=arr, compression="gzip", compression_opts=4, chunks=True if len(arr) else None)
            f.create_dataset("patient_id", data=images.patient_id.astype(object), dtype=h5py.string_dtype("utf-8"))
            f.create_dataset("slice", data=images.slice)
            f.create_dataset("label", data=images.label)
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["dataset"] = images.dataset
            f.attrs["modalities"] = json.dumps(list(images.modalities))
            f.attrs["provenance"] = json.dumps(images.provenance, sort_keys=True, default=str)

    write_atomic(path, write)


def read_image_set(path: str | os.PathLike, modalities: list[str] | None = None) -> ImageSet:
    """Read a schema file; `modalities` selects a subset (default: all). Errors name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            version = int(f.attrs.get("schema_version", -1))
            if version != SCHEMA_VERSION:
                raise SchemaError(f"{path}: schema_version {version}, expected {SCHEMA_VERSION}")
            available = json.loads(f.attrs["modalities"])
            wanted = available if modalities is None else list(modalities)
            missing = [m for m in wanted if m not in available]
            if missing:
                raise SchemaError(f"{path}: no modality {missing}; it has {available}")
            return ImageSet(
                modalities={m: f["modalities"][m][()] for m in wanted},
                patient_id=np.array([s.decode() if isinstance(s, bytes) else s for s in f["patient_id"][()]]),
                slice=f["slice"][()],
                label=f["label"][()],
                dataset=str(f.attrs.get("dataset", "")),
                provenance=json.loads(f.attrs.get("provenance", "{}")),
            )
    except (KeyError, OSError, ValueError) as err:  # ValueError: a garbled attribute (JSON) or dataset
        raise SchemaError(f"{path}: not a valid dpmedgen image file ({err})") from err
