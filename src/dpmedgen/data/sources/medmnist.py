"""``medmnist``: one 2D MedMNIST v2 / MedMNIST+ set (28, 64, 128 or 224 pixels), one npz from Zenodo.

Source: Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
classification", Scientific Data 10:41 (2023); MedMNIST+ sizes 64/128/224 added in medmnist 3.0.
Files: Zenodo record 10519652 (https://zenodo.org/records/10519652), one ``<flag>.npz`` (28 px) or
``<flag>_<size>.npz`` per set. URLs and MD5s below are copied from ``medmnist/info.py`` of
github.com/MedMNIST/MedMNIST, ``__version__ = "3.0.2"`` (commit 3bb56be6); they are the publisher's
checksums. The ``medmnist`` package itself is not a dependency.

Licence: CC BY 4.0 for every 2D set except DermaMNIST (CC BY-NC 4.0), as declared in info.py; the
source datasets' own terms also apply (see the MedMNIST paper). Size: 12 2D sets, from 780 images
(BreastMNIST) to 236,386 (TissueMNIST); see ``FLAGS`` for the per-set counts.

npz layout (``medmnist/dataset.py``): ``train_images``, ``val_images``, ``test_images``: uint8
(N, S, S) for grey sets or (N, S, S, 3) for RGB sets; ``train_labels``, ``val_labels``,
``test_labels``: (N, 1) class indices, or (N, 14) 0/1 findings for the multi-label ChestMNIST.

Patients: MedMNIST publishes no patient ids, so each image is its own "patient" with id
``<split>_<index>`` (its row in the npz's split array), ``slice`` 0. The pipeline's split by patient is
then a split by image: images of one patient (e.g. ChestMNIST's 30,805 patients behind 112,120
images) can fall into different splits, and a per-patient privacy claim on this set is a per-image
claim. The ``splits`` of the npz are only pooled (default all three); the pipeline re-splits.

Images: RGB sets are converted to grey by ITU-R BT.601 luminance (0.299 R + 0.587 G + 0.114 B, as
PIL's "L"); intensities are uint8 / 255 (dtype range, not per image). Images keep the chosen ``size``.

Labels: by default the original class index. ``labels`` maps each new label (0..K-1) to the list of
original indices it takes; images of other classes are dropped. For ChestMNIST (multi-label; required
there) an image gets new label k when it has at least one finding and all its findings are in the list
of k, or when it has no finding and the list of k is empty (``[]`` means "no finding"); images with
findings spread over several lists or outside all lists are dropped. Lists must not overlap.
``max_images`` keeps a random subset (``numpy.random.default_rng(seed)``, rows kept in order).
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dpmedgen.data.schema import ImageSet
from dpmedgen.data.sources.base import DatasetError, DatasetSource, RemoteFile, downloaded_file

ZENODO = "https://zenodo.org/records/10519652/files/{name}?download=1"
SIZES = (28, 64, 128, 224)
SPLIT_NAMES = ("train", "val", "test")
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
BLOCK = 4096  # images converted to float at a time


class Flag(NamedTuple):
    n_channels: int
    n_classes: int
    multi_label: bool
    n_images: int  # train + val + test, from info.py n_samples
    md5: dict[int, str]  # size -> MD5 of the npz


# medmnist/info.py 3.0.2 (commit 3bb56be69bca38e5f105b21e4d6482b91354d3a4): "MD5", "MD5_64", "MD5_128", "MD5_224".
# URLs there: https://zenodo.org/records/10519652/files/<flag>.npz?download=1 (28 px) and <flag>_<size>.npz (others).
FLAGS: dict[str, Flag] = {
    "pathmnist": Flag(3, 9, False, 107180, {
        28: "a8b06965200029087d5bd730944a56c1", 64: "55aa9c1e0525abe5a6b9d8343a507616",
        128: "ac42d08fb904d92c244187169d1fd1d9", 224: "2c51a510bcdc9cf8ddb2af93af1eadec"}),
    "chestmnist": Flag(1, 14, True, 112120, {
        28: "02c8a6516a18b556561a56cbdd36c4a8", 64: "9de6cd0b934ebb5b7426cfba5efbae16",
        128: "db107e5590b27930b62dbaf558aebee3", 224: "45bd33e6f06c3e8cdb481c74a89152aa"}),
    "dermamnist": Flag(3, 7, False, 10015, {
        28: "0744692d530f8e62ec473284d019b0c7", 64: "b70a2f5635c6199aeaa28c31d7202e1f",
        128: "2defd784463fa5243564e855ed717de1", 224: "8974907d8e169bef5f5b96bc506ae45d"}),
    "octmnist": Flag(1, 4, False, 109309, {
        28: "c68d92d5b585d8d81f7112f81e2d0842", 64: "e229e9440236b774d9f0dfef9d07bdaf",
        128: "0a97e76651ace45c5d943ee3f65b63ae", 224: "abc493b6d529d5de7569faaef2773ba3"}),
    "pneumoniamnist": Flag(1, 2, False, 5856, {
        28: "28209eda62fecd6e6a2d98b1501bb15f", 64: "8f4eceb4ccffa70c672198ea285246c6",
        128: "05b46931834c231683c68f40c47b2971", 224: "d6a3c71de1b945ea11211b03746c1fe1"}),
    "retinamnist": Flag(3, 5, False, 1600, {
        28: "bd4c0672f1bba3e3a89f0e4e876791e4", 64: "afda852cc34dcda56f86ad2b2457dbcc",
        128: "e48e916a24454daf90583d4e6efb1a18", 224: "eae7e3b6f3fcbda4ae613ebdcbe35348"}),
    "breastmnist": Flag(1, 2, False, 780, {
        28: "750601b1f35ba3300ea97c75c52ff8f6", 64: "742edef2a1fd1524b2efff4bd7ba9364",
        128: "363e4b3f8d712e9b5de15470a2aaadf1", 224: "b56378a6eefa9fed602bb16d192d4c8b"}),
    "bloodmnist": Flag(3, 8, False, 17092, {
        28: "7053d0359d879ad8a5505303e11de1dc", 64: "2b94928a2ae4916078ca51e05b6b800b",
        128: "adace1e0ed228fccda1f39692059dd4c", 224: "b718ff6835fcbdb22ba9eacccd7b2601"}),
    "tissuemnist": Flag(1, 8, False, 236386, {
        28: "ebe78ee8b05294063de985d821c1c34b", 64: "123ece2eba09d0aa5d698fda57103344",
        128: "61b955355d7425a89687b06cca3ce0c2", 224: "b077128c4a949f0a4eb01517f9037b9c"}),
    "organamnist": Flag(1, 11, False, 58830, {
        28: "68e3f8846a6bd62f0c9bf841c0d9eacc", 64: "2dcccc29b88e6da5a01161ef20cda288",
        128: "eeae80d0a227a8d099027e1b3cfd3b60", 224: "50747347e05c87dd3aaf92c49f9f3170"}),
    "organcmnist": Flag(1, 11, False, 23583, {
        28: "b9ceb9546e10131b32923c5bbeaea2b1", 64: "3ce34a8724ea6f548e6db4744d03b6a9",
        128: "773c1f009daa3fe5d9a2a201b2a7ed94", 224: "050f5e875dc056f6768abf94ec9995d1"}),
    "organsmnist": Flag(1, 11, False, 25211, {
        28: "9ab87b696fb54e2a387ebe992d6ed5f1", 64: "53a6d115339d874c25e309a994ff46d3",
        128: "ded0c5fa01a95dc4978b956f613e9b8e", 224: "b354719e553fbbb2513d5533f52a4cb1"}),
}
FLAGS_3D = ("organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d", "vesselmnist3d", "synapsemnist3d")


def npz_name(flag: str, size: int) -> str:
    """The publisher's file name: ``<flag>.npz`` at 28 pixels, ``<flag>_<size>.npz`` otherwise."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_labels(labels, flag: str, info: Flag) -> dict[int, tuple[int, ...]] | None:
    if labels is None:
        if info.multi_label:
            raise DatasetError(f"datasets param labels is required for the multi-label {flag!r}: map each new label "
                               "to the findings it takes, [] for 'no finding', e.g. {0: [], 1: [6]}")
        return None
    if not isinstance(labels, Mapping) or not labels:
        raise DatasetError(f"datasets param labels must be a non-empty mapping new label -> list of original labels, got {labels!r}")
    out: dict[int, tuple[int, ...]] = {}
    for key, values in labels.items():
        new = int(key) if isinstance(key, str) and key.isdigit() else key
        if not _is_int(new):
            raise DatasetError(f"datasets param labels: key {key!r} is not a non-negative integer label")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not all(_is_int(v) for v in values):
            raise DatasetError(f"datasets param labels[{key!r}] must be a list of original label indices, got {values!r}")
        bad = [v for v in values if not 0 <= v < info.n_classes]
        if bad:
            raise DatasetError(f"datasets param labels[{key!r}]: {bad} not among {flag!r}'s labels 0..{info.n_classes - 1}")
        if not values and not info.multi_label:
            raise DatasetError(f"datasets param labels[{key!r}] is empty ([] means 'no finding', only for chestmnist)")
        out[int(new)] = tuple(int(v) for v in values)
    if sorted(out) != list(range(len(out))) or len(out) > 127:
        raise DatasetError(f"datasets param labels: new labels must be 0..K-1 (K <= 127), got {sorted(out)}")
    seen: set[int] = set()
    for new, values in sorted(out.items()):
        overlap = seen & set(values)
        if overlap:
            raise DatasetError(f"datasets param labels: original labels {sorted(overlap)} are in more than one list")
        seen |= set(values)
    if info.multi_label and sum(1 for v in out.values() if not v) > 1:
        raise DatasetError("datasets param labels: at most one list may be [] ('no finding')")
    return dict(sorted(out.items()))


class MedMNIST(DatasetSource):
    modalities = ("image",)
    homepage = "https://medmnist.com/"
    license = "CC BY 4.0 (DermaMNIST: CC BY-NC 4.0); source datasets' terms apply"

    def __init__(self, flag: str = "pneumoniamnist", size: int = 64, labels: Mapping | None = None,
                 splits: Sequence[str] = SPLIT_NAMES, max_images: int | None = None, seed: int = 0) -> None:
        if flag in FLAGS_3D:
            raise DatasetError(f"datasets param flag {flag!r} is a 3D MedMNIST set; only 2D sets are supported: {sorted(FLAGS)}")
        if flag not in FLAGS:
            raise DatasetError(f"datasets param flag must be one of {sorted(FLAGS)}, got {flag!r}")
        if not _is_int(size) or size not in SIZES:
            raise DatasetError(f"datasets param size must be one of {list(SIZES)}, got {size!r}")
        if isinstance(splits, str) or not isinstance(splits, Sequence) or not splits \
                or any(s not in SPLIT_NAMES for s in splits) or len(set(splits)) != len(splits):
            raise DatasetError(f"datasets param splits must be a non-empty list of distinct {list(SPLIT_NAMES)}, got {splits!r}")
        if max_images is not None and (not _is_int(max_images) or max_images < 1):
            raise DatasetError(f"datasets param max_images must be an integer >= 1 or null, got {max_images!r}")
        if not _is_int(seed) or seed < 0:
            raise DatasetError(f"datasets param seed must be an integer >= 0, got {seed!r}")
        self.flag, self.size, self.info = flag, int(size), FLAGS[flag]
        self.labels = _check_labels(labels, flag, self.info)
        self.splits = tuple(s for s in SPLIT_NAMES if s in splits)  # canonical order
        self.max_images, self.seed = max_images, int(seed)

    @property
    def file_name(self) -> str:
        return npz_name(self.flag, self.size)

    def remote_files(self) -> list[RemoteFile]:
        return [RemoteFile(self.file_name, ZENODO.format(name=self.file_name), md5=self.info.md5[self.size])]

    def _new_labels(self, raw: np.ndarray) -> np.ndarray:
        """New label per image (-1: dropped) from the npz labels (N, 1) or (N, 14)."""
        if not self.info.multi_label:
            original = raw[:, 0].astype(np.int64)
            if self.labels is None:
                return original
            out = np.full(len(original), -1, dtype=np.int64)
            for new, olds in self.labels.items():
                out[np.isin(original, olds)] = new
            return out
        findings = raw.astype(bool)
        out = np.full(len(findings), -1, dtype=np.int64)
        has_any = findings.any(axis=1)
        for new, olds in self.labels.items():
            if not olds:
                out[~has_any] = new
            else:
                outside = np.ones(findings.shape[1], dtype=bool)
                outside[list(olds)] = False
                out[has_any & ~findings[:, outside].any(axis=1)] = new
        return out

    def read(self, folder: Path) -> ImageSet:
        path = downloaded_file(folder, self.file_name)
        redo = f"delete {path} and rerun to download it again"
        try:
            npz = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise DatasetError(f"{path} is not a readable npz file ({err}); {redo}") from None
        with npz:
            needed = [f"{s}_{kind}" for s in self.splits for kind in ("images", "labels")]
            missing = [k for k in needed if k not in npz.files]
            if missing:
                raise DatasetError(f"{path} has no array {missing[0]!r} (it has {sorted(npz.files)}); {redo}")
            try:
                arrays = {k: npz[k] for k in needed}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                raise DatasetError(f"{path}: cannot read its arrays ({err}); {redo}") from None
        ids, labels, images = [], [], []
        n_labels = 14 if self.info.multi_label else 1
        for split in self.splits:
            imgs, raw = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            grey = imgs.ndim == 3 and self.info.n_channels == 1
            rgb = imgs.ndim == 4 and imgs.shape[-1] == 3 and self.info.n_channels == 3
            if not (grey or rgb) or imgs.shape[1:3] != (self.size, self.size) or imgs.dtype != np.uint8:
                raise DatasetError(f"{path}: {split}_images is {imgs.dtype} {imgs.shape}, expected uint8 "
                                   f"(N, {self.size}, {self.size}{', 3' if self.info.n_channels == 3 else ''}); {redo}")
            raw = raw.reshape(len(raw), -1) if raw.ndim else raw  # (N, 1) as published; (N,) or (N, 1, 1) tolerated
            if raw.shape != (len(imgs), n_labels):
                raise DatasetError(f"{path}: {split}_labels has shape {raw.shape}, expected ({len(imgs)}, {n_labels}); {redo}")
            if raw.size and (raw.min() < 0 or raw.max() >= (2 if self.info.multi_label else self.info.n_classes)):
                raise DatasetError(f"{path}: {split}_labels holds values outside {self.flag!r}'s labels; {redo}")
            new = self._new_labels(raw)
            keep = np.flatnonzero(new >= 0)
            ids += [f"{split}_{i}" for i in keep]
            labels.append(new[keep])
            images.append((imgs, keep))
        labels_all = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
        chosen = np.arange(len(ids))
        if self.max_images is not None and self.max_images < len(ids):
            chosen = np.sort(np.random.default_rng(self.seed).choice(len(ids), size=self.max_images, replace=False))
        out = self._to_float(images, chosen)
        return ImageSet(
            modalities={"image": out},
            patient_id=np.array(ids, dtype=object)[chosen],
            slice=np.zeros(len(chosen), dtype=np.int32),
            label=labels_all[chosen],
            dataset="medmnist",
            provenance={
                "flag": self.flag,
                "size": self.size,
                "file": self.file_name,
                "splits": list(self.splits),
                "labels": {str(k): list(v) for k, v in self.labels.items()} if self.labels else "original",
                "max_images": self.max_images,
                "seed": self.seed,
                "n_images": int(len(chosen)),
                "intensity": "uint8 / 255" + ("; RGB -> BT.601 luminance" if self.info.n_channels == 3 else ""),
                "ids": "<split>_<row>: one id per image, the split is by image (no patient ids)",
            },
        )

    def _to_float(self, images: list[tuple[np.ndarray, np.ndarray]], chosen: np.ndarray) -> np.ndarray:
        """The chosen rows (indices into the concatenation of each split's kept rows) as float32 in [0, 1]."""
        out = np.empty((len(chosen), self.size, self.size), dtype=np.float32)
        offset, done = 0, 0
        for imgs, keep in images:
            mine = chosen[(chosen >= offset) & (chosen < offset + len(keep))] - offset
            rows = keep[mine]
            for start in range(0, len(rows), BLOCK):
                block = imgs[rows[start:start + BLOCK]].astype(np.float32)
                if block.ndim == 4:
                    block = block @ LUMA
                out[done:done + len(block)] = np.clip(block / 255.0, 0.0, 1.0)
                done += len(block)
            offset += len(keep)
        return out
