"""``isic``: ISIC 2020 (SIIM-ISIC melanoma challenge) training set, a balanced melanoma / not-melanoma subset
of dermoscopy images, in grayscale.

Source: International Skin Imaging Collaboration, https://challenge.isic-archive.com/data/#2020 (Rotemberg
et al., "A patient-centric dataset of images and metadata for identifying melanomas using clinical
context", Scientific Data 2021). 33,126 dermoscopy JPEGs of 2,056 patients, 584 of them melanoma, of
varied sizes (up to 6000x4000), in ``ISIC_2020_Training_JPEG.zip`` (23 GB; it unpacks to
``train/ISIC_<7 digits>.jpg``), with the table ``ISIC_2020_Training_GroundTruth_v2.csv`` (``image_name``,
``patient_id``, ``lesion_id``, ``sex``, ``age_approx``, ``anatom_site_general_challenge``, ``diagnosis``,
``benign_malignant``, ``target``) and ``ISIC_2020_Training_Duplicates.csv`` (425 pairs ``image_name_1``,
``image_name_2`` of the same image). No smaller official JPEG set exists (the official alternatives are
DICOM: 48.9 GB, or 23.0 GB "corrected"); resized copies on Kaggle (e.g. cdeotte/jpeg-melanoma-512x512)
are community-made and need a Kaggle account.

License: CC BY-NC 4.0 (attribution "ISIC 2020 challenge dataset", non-commercial use).

Cohort. Patients are ``patient_id``; ``slice`` is the image's index among all of its patient's images in
the table, sorted by ``image_name`` (so it names the same image whatever is selected). The label is
``target`` (1 melanoma, 0 not). The second image of each duplicate pair is dropped (a copy on both sides
of a train/test split would fake memorisation). One label per patient: **a patient with any melanoma
image is positive and only their melanoma images are kept; every other patient is negative**. Then, for
each class separately, patients are shuffled with ``seed`` and taken in that order, each with their first
``max_per_patient`` images by name, until ``n_per_class`` images are taken. Melanoma is rare (584 images,
fewer with the per-patient cap), so when a class cannot give ``n_per_class`` images, both classes get as
many as the smaller one can (a warning says so; ``provenance['n_per_class_used']`` records it).

Images are decoded at a reduced scale (PIL JPEG draft mode, still at least ``max_size``), converted to
grayscale luminance (ITU-R 601-2 luma, L = 0.299 R + 0.587 G + 0.114 B: the pipeline models single-channel
images, so colour is lost), scaled to [0, 1] by the 8-bit range (divided by 255), centre-cropped to a
square and resized to ``max_size`` x ``max_size`` with anti-aliasing. Rows are ordered by patient, then slice.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dpmedgen.data.schema import ImageSet
from dpmedgen.data.sources.base import DatasetError, DatasetSource, RemoteFile, downloaded_file, int_param, unpacked_dir
from dpmedgen.data.sources.image_files import balanced_selection, selection_image_set

BASE_URL = "https://isic-challenge-data.s3.amazonaws.com/2020/"
# The official ISIC 2020 download table (challenge.isic-archive.com/data) links these files; no checksums are
# published, so the first download's sha256 is recorded.
IMAGES = RemoteFile("ISIC_2020_Training_JPEG.zip", BASE_URL + "ISIC_2020_Training_JPEG.zip", unpack=True)
TABLE = RemoteFile("ISIC_2020_Training_GroundTruth_v2.csv", BASE_URL + "ISIC_2020_Training_GroundTruth_v2.csv")
DUPLICATES = RemoteFile("ISIC_2020_Training_Duplicates.csv", BASE_URL + "ISIC_2020_Training_Duplicates.csv")


def _csv(folder: Path, remote: RemoteFile, columns: tuple[str, ...]) -> pd.DataFrame:
    path = downloaded_file(folder, remote.name)
    try:
        df = pd.read_csv(path, dtype=str, index_col=False)
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: malformed table ({err}); delete it and rerun to download it again") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: no column {missing[0]!r} (columns: {list(df.columns)}); delete it and rerun "
                           "to download it again")
    return df


class ISIC(DatasetSource):
    modalities = ("dermoscopy",)
    homepage = "https://challenge.isic-archive.com/data/#2020"
    license = "CC BY-NC 4.0 (ISIC 2020 challenge dataset)"
    manual = False

    def __init__(self, n_per_class: int = 500, max_per_patient: int = 3, seed: int = 0, max_size: int = 256) -> None:
        self.n_per_class = int_param("n_per_class", n_per_class, 1)
        self.max_per_patient = int_param("max_per_patient", max_per_patient, 1)
        self.seed = int_param("seed", seed, 0)
        self.max_size = int_param("max_size", max_size, 8)

    def remote_files(self) -> list[RemoteFile]:
        return [TABLE, DUPLICATES, IMAGES]

    def read(self, folder: Path) -> ImageSet:
        folder = Path(folder)
        df = _csv(folder, TABLE, ("image_name", "patient_id", "target"))
        duplicates = _csv(folder, DUPLICATES, ("image_name_1", "image_name_2"))
        df = df.dropna(subset=["image_name", "patient_id", "target"])
        if not df["target"].isin(["0", "1"]).all():
            bad = df.loc[~df["target"].isin(["0", "1"]), "target"].iloc[0]
            raise DatasetError(f"{folder / TABLE.name}: target must be 0 or 1, found {bad!r}; delete it and rerun")
        df = df.assign(target=df["target"].astype(int)).sort_values(["patient_id", "image_name"])
        df["slice"] = df.groupby("patient_id").cumcount()

        where = unpacked_dir(folder, IMAGES)
        if not where.is_dir():
            raise DatasetError(f"{where} is missing ({IMAGES.name} not unpacked); rerun to unpack it again "
                               f"(delete {folder / IMAGES.name} too if the error comes back)")
        files = {p.stem: p for p in where.rglob("*.jpg")}
        if not files:
            raise DatasetError(f"{where} holds no JPEG image; delete it and {folder / IMAGES.name} and rerun")

        positive_patients = set(df.loc[df["target"] == 1, "patient_id"])
        df["label"] = df["patient_id"].isin(positive_patients).astype(int)
        keep = (df["target"] == df["label"]) & ~df["image_name"].isin(duplicates["image_name_2"])
        candidates: dict[int, dict[str, list]] = {0: {}, 1: {}}
        for name, patient, s, label in df.loc[keep & df["image_name"].isin(set(files)),
                                              ["image_name", "patient_id", "slice", "label"]].itertuples(index=False):
            candidates[int(label)].setdefault(patient, []).append((int(s), name))

        chosen, n = balanced_selection(candidates, self.n_per_class, self.max_per_patient, self.seed)
        if n == 0:
            raise DatasetError(f"isic: no melanoma or no other image found in {where}; delete it and "
                               f"{folder / IMAGES.name} and rerun")
        return selection_image_set(
            chosen, n, self.n_per_class, path_of=files, unpacked_of=lambda name: where, size=self.max_size,
            modality="dermoscopy", dataset="isic", where=f"with max_per_patient={self.max_per_patient}",
            provenance={
                "labels": {"0": "not melanoma", "1": "melanoma"},
                "max_per_patient": self.max_per_patient,
                "seed": self.seed,
                "max_size": self.max_size,
                "duplicates_dropped": int(df["image_name"].isin(duplicates["image_name_2"]).sum()),
                "selection": "per class: patients shuffled with seed, first max_per_patient images by name; a patient "
                             "with any melanoma image is positive (melanoma images only); duplicates (image_name_2) dropped",
                "intensity": "JPEG luma (ITU-R 601-2) / 255, centre square crop, resized to max_size",
            },
        )
