"""``chestxray14``: NIH ChestX-ray14, a balanced two-class subset (one finding against another, default
Infiltration against No Finding) of frontal chest X-rays.

Source: NIH Clinical Center, https://nihcc.app.box.com/v/ChestXray-NIHCC (Wang et al., "ChestX-ray8:
Hospital-scale Chest X-ray Database and Benchmarks ...", CVPR 2017). 112,120 frontal X-rays of 30,805
patients, 8-bit 1024x1024 PNG, in 12 archives ``images_001.tar.gz`` .. ``images_012.tar.gz`` (about 42 GB
together; each unpacks to ``images/<8-digit patient>_<3-digit follow-up>.png``, the images in file-name
order, so ``images_001`` holds patients 1 to about 1,335). Labels: the metadata table
``Data_Entry_2017_v2020.csv`` (one row per image: ``Image Index``, ``Finding Labels`` -- ``|``-separated
findings mined from the reports, or ``No Finding`` --, ``Follow-up #``, ``Patient ID``, age, sex, view,
original size and pixel spacing).

Terms (NIH FAQ): the use of the data set is unrestricted, but you must link the original download site,
acknowledge the NIH Clinical Center and cite the CVPR 2017 paper.

Only the archives named by the ``archives`` parameter are downloaded (default: the first, 4,999 images,
about 2 GB), and only images inside them can be selected. The metadata table has no stable direct URL at
NIH (it is a box.com web page); the URL below is a public mirror (see ``CSV_URL``), which a config can
override per file (``datasets.<name>.downloads``).

Cohort. Patients are ``Patient ID`` (written with 8 digits, as in the file names); ``slice`` is the
image's ``Follow-up #``. An image is of class 1 when ``positive`` is among its findings and of class 0
when ``negative`` is (an image with both is dropped). A patient may have images of both classes over
their follow-ups, but the pipeline needs one label per patient, so: **a patient is positive when any
of their images in the whole table carries the positive finding, and only their positive images are
kept; every other patient with negative images is negative**. A negative patient therefore never had
the positive finding, in any follow-up. Then, for each class separately, the patients are shuffled
with ``seed`` and taken in that order, each with their first ``max_per_patient`` images by follow-up
number, until ``n_per_class`` images are taken (the last patient may give fewer). When a class has
fewer images than ``n_per_class`` in the downloaded archives, both classes get as many as the smaller
one has (a warning says so; ``provenance['n_per_class_used']`` records it), so the classes stay balanced.

Images are converted to grayscale (a few PNGs are RGB or RGBA: PIL's ``convert("L")``, the alpha channel
ignored), scaled to [0, 1] by the 8-bit range (divided by 255; 16-bit images by 65535), centre-cropped
to a square (the PNGs already are) and resized to ``max_size`` x ``max_size`` with anti-aliasing.
Rows are ordered by patient, then follow-up.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dpmedgen.data.schema import ImageSet
from dpmedgen.data.sources.base import DatasetError, DatasetSource, RemoteFile, downloaded_file, int_param, unpacked_dir
from dpmedgen.data.sources.image_files import balanced_selection, selection_image_set

FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax", "No Finding",
)

# The 12 image archives, as listed by NIH's batch_download_zips.py (the same 12 links appear in PyHealth's
# pyhealth/datasets/chestxray14.py and many copies of the script); md5 sums from NIH's FAQ_CHESTXRAY.pdf (Q07).
ARCHIVES = {
    1: ("https://nihcc.box.com/shared/static/vfk49d74nhbxq3nqjg0900w5nvkorp5c.gz", "fe8ed0a6961412fddcbb3603c11b3698"),
    2: ("https://nihcc.box.com/shared/static/i28rlmbvmfjbl8p2n3ril0pptcmcu9d1.gz", "ab07a2d7cbe6f65ddd97b4ed7bde10bf"),
    3: ("https://nihcc.box.com/shared/static/f1t00wrtdk94satdfb9olcolqx20z2jp.gz", "2301d03bde4c246388bad3876965d574"),
    4: ("https://nihcc.box.com/shared/static/0aowwzs5lhjrceb3qp67ahp0rd1l1etg.gz", "9f1b7f5aae01b13f4bc8e2c44a4b8ef6"),
    5: ("https://nihcc.box.com/shared/static/v5e3goj22zr6h8tzualxfsqlqaygfbsn.gz", "1861f3cd0ef7734df8104f2b0309023b"),
    6: ("https://nihcc.box.com/shared/static/asi7ikud9jwnkrnkj99jnpfkjdes7l6l.gz", "456b53a8b351afd92a35bc41444c58c8"),
    7: ("https://nihcc.box.com/shared/static/jn1b4mw4n6lnh74ovmcjb8y48h8xj07n.gz", "1075121ea20a137b87f290d6a4a5965e"),
    8: ("https://nihcc.box.com/shared/static/tvpxmn7qyrgl0w8wfh9kqfjskv6nmm1j.gz", "b61f34cec3aa69f295fbb593cbd9d443"),
    9: ("https://nihcc.box.com/shared/static/upyy3ml7qdumlgk2rfcvlb9k6gvqq2pj.gz", "442a3caa61ae9b64e61c561294d1e183"),
    10: ("https://nihcc.box.com/shared/static/l6nilvfa9cg3s28tqv1qc1olm3gnz54p.gz", "09ec81c4c31e32858ad8cf965c494b74"),
    11: ("https://nihcc.box.com/shared/static/hhq8fkdgvcari67vfhs7ppg2w6ni4jze.gz", "499aefc67207a5a97692424cf5dbeed5"),
    12: ("https://nihcc.box.com/shared/static/ioqwiy20ihqwyr8pf4c24eazhh281pbu.gz", "dc9fda1757c2de0032b63347a7d2895c"),
}

CSV_NAME = "Data_Entry_2017_v2020.csv"
# UNVERIFIED mirror: NIH serves this table only through the box.com web page
# https://nihcc.app.box.com/v/ChestXray-NIHCC/file/219760887468 (no direct link found). This Hugging Face copy
# is the one community scripts download (PyHealth uses a Google Drive copy instead:
# https://drive.google.com/uc?export=download&id=1mkOZNfYt-Px52b8CJZJANNbM3ULUVO3f). No published checksum.
CSV_URL = "https://huggingface.co/datasets/alkzar90/NIH-Chest-X-ray-dataset/resolve/main/data/Data_Entry_2017_v2020.csv"
COLUMNS = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID")


class ChestXray14(DatasetSource):
    modalities = ("xray",)
    homepage = "https://nihcc.app.box.com/v/ChestXray-NIHCC"
    license = "unrestricted use; link the NIH download site, acknowledge the NIH Clinical Center, cite Wang et al. CVPR 2017"
    manual = False

    def __init__(self, positive: str = "Infiltration", negative: str = "No Finding", n_per_class: int = 500,
                 max_per_patient: int = 3, archives: list[int] | int = (1,), seed: int = 0,
                 max_size: int = 256) -> None:
        for name, value in (("positive", positive), ("negative", negative)):
            if value not in FINDINGS:
                raise DatasetError(f"datasets param {name} must be one of {list(FINDINGS)}, got {value!r}")
        if positive == negative:
            raise DatasetError(f"datasets params positive and negative must differ, both are {positive!r}")
        self.positive, self.negative = positive, negative
        self.n_per_class = int_param("n_per_class", n_per_class, 1)
        self.max_per_patient = int_param("max_per_patient", max_per_patient, 1)
        self.seed = int_param("seed", seed, 0)
        self.max_size = int_param("max_size", max_size, 8)
        archives = [archives] if isinstance(archives, (int, np.integer)) and not isinstance(archives, bool) else archives
        if not isinstance(archives, (list, tuple)) or not archives or any(
                isinstance(a, bool) or a not in ARCHIVES for a in archives):
            raise DatasetError(f"datasets param archives must be a non-empty list of archive numbers 1..12, got {archives!r}")
        self.archives = sorted({int(a) for a in archives})

    def _archive(self, k: int) -> RemoteFile:
        url, md5 = ARCHIVES[k]
        return RemoteFile(f"images_{k:03d}.tar.gz", url, md5=md5, unpack=True)

    def remote_files(self) -> list[RemoteFile]:
        return [RemoteFile(CSV_NAME, CSV_URL)] + [self._archive(k) for k in self.archives]

    def _table(self, folder: Path) -> pd.DataFrame:
        path = downloaded_file(folder, CSV_NAME)
        try:
            df = pd.read_csv(path, index_col=False, dtype={"Image Index": str, "Finding Labels": str})
            missing = [c for c in COLUMNS if c not in df.columns]
            if missing:
                raise ValueError(f"no column {missing[0]!r} (columns: {list(df.columns)})")
            df = df[list(COLUMNS)].dropna()
            df["Follow-up #"] = df["Follow-up #"].astype(int)
            df["Patient ID"] = df["Patient ID"].astype(int)
        except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as err:
            raise DatasetError(f"{path}: malformed metadata table ({err}); delete it and rerun to download it again") from None
        return df

    def read(self, folder: Path) -> ImageSet:
        folder = Path(folder)
        df = self._table(folder)
        files, owner = {}, {}  # image name -> path, and -> the archive folder holding it
        for k in self.archives:
            remote = self._archive(k)
            where = unpacked_dir(folder, remote)
            if not where.is_dir():
                raise DatasetError(f"{where} is missing ({remote.name} not unpacked); rerun to unpack it again "
                                   f"(delete {folder / remote.name} too if the error comes back)")
            found = {p.name: p for p in where.rglob("*.png")}
            if not found:
                raise DatasetError(f"{where} holds no PNG image; delete it and {folder / remote.name} and rerun")
            files.update(found)
            owner.update(dict.fromkeys(found, where))

        findings = df["Finding Labels"].str.split("|").map(set)
        pos = findings.map(lambda f: self.positive in f).to_numpy()
        neg = findings.map(lambda f: self.negative in f).to_numpy()
        image_class = np.where(pos & ~neg, 1, np.where(neg & ~pos, 0, -1))
        positive_patients = set(df["Patient ID"][pos])
        patient_class = np.where(df["Patient ID"].isin(positive_patients), 1, 0)
        keep = (image_class == patient_class) & df["Image Index"].isin(set(files)).to_numpy()
        candidates: dict[int, dict[str, list]] = {0: {}, 1: {}}
        sub = df[keep].assign(label=patient_class[keep]).sort_values(["Patient ID", "Follow-up #", "Image Index"])
        for name, follow_up, patient, label in zip(sub["Image Index"], sub["Follow-up #"], sub["Patient ID"], sub["label"]):
            candidates[int(label)].setdefault(f"{patient:08d}", []).append((int(follow_up), name))

        chosen, n = balanced_selection(candidates, self.n_per_class, self.max_per_patient, self.seed)
        if n == 0:
            raise DatasetError(f"chestxray14: no {self.positive!r} or no {self.negative!r} image in archives "
                               f"{self.archives}; add archives (datasets param archives)")
        return selection_image_set(
            chosen, n, self.n_per_class, path_of=files, unpacked_of=owner.__getitem__, size=self.max_size,
            modality="xray", dataset="chestxray14", where=f"in archives {self.archives}",
            provenance={
                "labels": {"0": self.negative, "1": self.positive},
                "archives": self.archives,
                "max_per_patient": self.max_per_patient,
                "seed": self.seed,
                "max_size": self.max_size,
                "selection": "per class: patients shuffled with seed, first max_per_patient images by follow-up; "
                             "a patient with the positive finding in any image is positive (positive images only)",
                "intensity": "grayscale / 255 (16-bit: / 65535), centre square crop, resized to max_size",
            },
        )
