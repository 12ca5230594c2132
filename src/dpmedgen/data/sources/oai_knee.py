"""``oai_knee``: baseline knee MRI of the Osteoarthritis Initiative (OAI), labelled by radiographic OA.

Source: the Osteoarthritis Initiative, a multi-centre longitudinal cohort of 4,796 participants
(2,686 in group "C", the first half of the cohort, and 2,110 in group "E") with or at risk of knee
osteoarthritis, imaged with 3T MRI (Siemens Trio) and radiographs at baseline and follow-up visits.
Distributed by the NIMH Data Archive (https://nda.nih.gov/oai/, formerly oai.epi-ucsf.org).

Terms: free for research, but only after registration and acceptance of the OAI data use terms;
the images may not be redistributed. Nothing is downloaded (``manual = True``): the user fetches
the data and points the ``root`` parameter to it.

What to fetch into ``root`` (the layout ``read`` expects)::

    <root>/00m/contents.csv                      index of the baseline image release, one row per series:
                                                 Folder, ParticipantID, StudyDate, Barcode,
                                                 StudyDescription, SeriesDescription
    <root>/00m/0.C.2/<ID>/<yyyymmdd>/<8 digits>/001, 002, ...   one DICOM file per slice (no extension)
    <root>/00m/0.E.1/<ID>/<yyyymmdd>/<8 digits>/001, ...        (second half of the cohort)
    <root>/kxr_sq_bu00.txt                       baseline semi-quantitative X-ray readings ("|"-separated;
                                                 ID, SIDE, READPRJ, V00XRKL, ...), or set ``labels_file``

``Folder`` in contents.csv is relative to ``00m/`` (e.g. ``0.C.2/9000099/20040909/10249506``); series
folders starting with 1 hold MR, with 0 radiographs. A package folder (``0.C.2`` or ``0.E.1``) that is
absent is skipped (one may use half the cohort); a series folder missing inside a package present is
an error (incomplete unpack).

Selection: the series named by ``series`` (SeriesDescription, default ``SAG_IW_TSE_RIGHT``: sagittal
intermediate-weighted fat-suppressed turbo spin echo, ~37 slices of 3 mm, the sequence used for
semi-quantitative MRI reading of OA features; its ``slices_per_knee`` central slices span ~2.4 cm of
the knee rather than the ~6 mm the 0.7 mm DESS slices would) of each participant's baseline visit; if
a participant has several series of that name, the first in Folder order. Slices are ordered by
InstanceNumber (file name when absent) and the ``slices_per_knee`` central ones are kept; ``slice`` is
their index in that order.

Patients: ``patient_id`` is the 7-digit OAI participant ID (one knee per participant: the side of
``series``).

Labels: the Kellgren-Lawrence grade of that knee (``V00XRKL`` in ``kxr_sq_bu00.txt``, SIDE 1 = right,
2 = left); where a knee was read by several reading projects (READPRJ), the lowest-numbered project
with a grade is used (project 15 is the central baseline reading). label = 1 if KL >= ``kl_threshold``
(default 2: radiographic OA), else 0. Knees without a KL grade are excluded (counted in provenance).

Intensities: each slice is divided by its own maximum (so [0, 1]; an all-zero slice stays 0), then
resized to ``max_size`` x ``max_size`` (skimage, anti-aliased; OAI MR slices are near-square).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np

from dpmedgen.data.schema import ImageSet
from dpmedgen.data.sources.base import DatasetError, DatasetSource, int_param

NAME = "oai_knee"
VISIT = "00m"
CONTENTS = "contents.csv"
CONTENTS_COLUMNS = ("Folder", "ParticipantID", "SeriesDescription")
KL_COLUMNS = ("ID", "SIDE", "READPRJ", "V00XRKL")
SIDES = {"RIGHT": 1, "LEFT": 2}  # the SIDE code of the OAI assessment files
# Knee series of the OAI MRI protocol with one image per slice position (SAG_T2_MAP is multi-echo,
# MP_LOCATOR a localizer: both left out); COR_T1_3D_FLASH and SAG_T2_MAP were acquired on the right knee only.
SERIES = tuple(f"{s}_{side}" for s in ("SAG_3D_DESS", "SAG_IW_TSE", "COR_IW_TSE", "COR_MPR", "AX_MPR")
               for side in SIDES) + ("COR_T1_3D_FLASH_RIGHT",)

HOW_TO = (
    "The OAI knee MRI cannot be downloaded automatically. Register at https://nda.nih.gov/oai/ (NIMH Data "
    "Archive) and accept the OAI data use terms, then fetch (1) the baseline image release '00m' (image "
    "packages 0.C.2 and 0.E.1, holding the knee MRI series such as {series}) and unpack it so that "
    "<root>/00m/contents.csv and <root>/00m/0.C.2/<participant>/<yyyymmdd>/<series id>/001, 002, ... exist; "
    "(2) the baseline semi-quantitative X-ray reading file kxr_sq_bu00.txt (X-ray image assessments, ASCII) "
    "at <root>/{labels_file} or wherever datasets.oai_knee.params.labels_file says. Then set "
    "datasets.oai_knee.params.root to <root>."
)



def _code(value: str) -> int | None:
    """The leading integer of an OAI field ('2', '1: Right', '2: 2'); None for a missing value ('.', '')."""
    m = re.match(r"\s*(\d+)", value or "")
    return int(m.group(1)) if m else None


class OAIKnee(DatasetSource):
    modalities = ("mri",)
    homepage = "https://nda.nih.gov/oai/"
    license = "OAI data use terms (NIMH Data Archive): registration required, research use, no redistribution"
    manual = True

    def __init__(self, root: str | os.PathLike | None = None, series: str = "SAG_IW_TSE_RIGHT",
                 labels_file: str = "kxr_sq_bu00.txt", kl_threshold: int = 2,
                 slices_per_knee: int = 8, max_size: int = 256) -> None:
        if series not in SERIES:
            raise DatasetError(f"datasets param series must be one of {list(SERIES)}, got {series!r}")
        if not isinstance(labels_file, str) or not labels_file:
            raise DatasetError(f"datasets param labels_file must be a file path, got {labels_file!r}")
        if not isinstance(root, (str, os.PathLike)) or not str(root):
            raise DatasetError(f"datasets param root is required (the folder you downloaded the OAI data into), "
                               f"got {root!r}. " + HOW_TO.format(series=series, labels_file=labels_file))
        self.root = Path(root).expanduser()
        self.series = series
        self.side = SIDES[series.rsplit("_", 1)[1]]
        self.labels_file = labels_file
        self.kl_threshold = int_param("kl_threshold", kl_threshold, 1, 4)
        self.slices_per_knee = int_param("slices_per_knee", slices_per_knee, 1)
        self.max_size = int_param("max_size", max_size, 8)

    def _fail(self, what: str) -> DatasetError:
        return DatasetError(f"{NAME}: {what}. " + HOW_TO.format(series=self.series, labels_file=self.labels_file))

    def read(self, folder: Path) -> ImageSet:
        """The cohort from the user's ``root`` (``folder``, the empty download folder, is not used)."""
        from tqdm import tqdm

        visit = self._visit_dir()
        series = self._series_folders(visit)
        grades = self._kl_grades()
        knees, skipped = [], {"no_kl_grade": 0, "package_absent": 0}
        for pid, rel in sorted(series.items()):
            if grades.get(pid) is None:
                skipped["no_kl_grade"] += 1
            elif not (visit / Path(rel).parts[0]).is_dir():
                skipped["package_absent"] += 1
            else:
                knees.append((pid, visit / rel, grades[pid]))
        if not knees:
            raise self._fail(f"no {self.series} series with a KL grade found under {visit} "
                             f"({len(series)} listed in {CONTENTS}, skipped: {skipped})")

        size = self.max_size
        images = np.zeros((len(knees) * self.slices_per_knee, size, size), dtype=np.float32)
        pids, slices, labels = [], [], []
        for pid, path, kl in tqdm(knees, desc=NAME, unit="knee", leave=False):
            for index, image in self._central_slices(path):
                images[len(pids)] = image
                pids.append(pid)
                slices.append(index)
                labels.append(int(kl >= self.kl_threshold))
        labels = np.asarray(labels)
        return ImageSet(
            modalities={"mri": images[: len(pids)]}, patient_id=np.asarray(pids), slice=np.asarray(slices),
            label=labels, dataset=NAME,
            provenance={
                "root": str(self.root), "visit": VISIT, "series": self.series, "side": self.side,
                "labels_file": str(self._labels_path()), "kl_column": "V00XRKL",
                "kl_rule": "lowest READPRJ with a grade", "kl_threshold": self.kl_threshold,
                "label_meaning": {"0": f"KL < {self.kl_threshold}", "1": f"KL >= {self.kl_threshold}"},
                "slices_per_knee": self.slices_per_knee, "max_size": size,
                "intensity": "per slice divided by its maximum, resized to max_size x max_size",
                "series_listed": len(series), "knees": len(knees), "excluded": skipped,
                "class_counts": {str(c): int((labels == c).sum()) for c in (0, 1)},
            },
        )

    # --- the files --------------------------------------------------------------------------------

    def _visit_dir(self) -> Path:
        if not self.root.is_dir() or not any(self.root.iterdir()):
            raise self._fail(f"root folder {self.root} is missing or empty")
        # <root>/00m is the expected layout; <root> itself being 00m, or 00m nested once, is accepted too.
        for cand in (self.root / VISIT, self.root, self.root / VISIT / VISIT):
            if (cand / CONTENTS).is_file():
                return cand
        raise self._fail(f"{self.root / VISIT / CONTENTS} not found (the index of the baseline image release)")

    def _series_folders(self, visit: Path) -> dict[str, str]:
        """participant ID -> Folder (relative to 00m/) of its `series`, from contents.csv."""
        path = visit / CONTENTS
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                rows, columns = list(reader), reader.fieldnames or []
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise DatasetError(f"{path}: cannot read it ({err}); unpack the 00m image release again") from err
        missing = [c for c in CONTENTS_COLUMNS if c not in columns]
        if missing:
            raise DatasetError(f"{path}: no column {missing} (has {columns}); it is not the OAI image "
                               "release index: unpack the 00m image release again")
        out: dict[str, str] = {}
        for row in sorted(rows, key=lambda r: (r["Folder"] or "")):
            if (row["SeriesDescription"] or "").strip() == self.series:
                pid, rel = (row["ParticipantID"] or "").strip(), (row["Folder"] or "").strip().strip("/")
                if not pid.isdigit() or not rel:
                    raise DatasetError(f"{path}: malformed row {row}; unpack the 00m image release again")
                out.setdefault(pid, rel)
        return out

    def _labels_path(self) -> Path:
        path = Path(self.labels_file).expanduser()
        path = path if path.is_absolute() else self.root / path
        if not path.is_file() and path.parent.is_dir():  # the OAI files come as KXR_SQ_BU00.txt too
            same = [p for p in path.parent.iterdir() if p.name.lower() == path.name.lower()]
            path = same[0] if same else path
        return path

    def _kl_grades(self) -> dict[str, int | None]:
        """participant ID -> baseline KL grade of the `series` knee (None: not graded)."""
        path = self._labels_path()
        if not path.is_file():
            raise self._fail(f"KL grade file {path} not found")
        try:
            with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
                reader = csv.DictReader(f, delimiter="|")
                rows, columns = list(reader), reader.fieldnames or []
        except (OSError, csv.Error) as err:
            raise DatasetError(f"{path}: cannot read it ({err}); download kxr_sq_bu00.txt again") from err
        missing = [c for c in KL_COLUMNS if c not in columns]
        if missing:
            raise DatasetError(f"{path}: no column {missing} (has {columns}); it must be the '|'-separated "
                               "baseline X-ray reading kxr_sq_bu00.txt: download it again")
        best: dict[str, tuple[int, int | None]] = {}
        for row in rows:
            if _code(row["SIDE"]) != self.side:
                continue
            pid, project = (row["ID"] or "").strip(), _code(row["READPRJ"])
            kl = _code(row["V00XRKL"])
            kl = kl if kl is not None and kl <= 4 else None
            rank = project if project is not None else 10**9
            if pid not in best or (best[pid][1] is None and kl is not None) or (
                    kl is not None and rank < best[pid][0]):
                best[pid] = (rank, kl)
        return {pid: kl for pid, (_, kl) in best.items()}

    def _central_slices(self, path: Path):
        """(index in the sorted volume, [0, 1] image) of the central `slices_per_knee` slices of a series."""
        import pydicom
        from skimage.transform import resize

        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")) if path.is_dir() else []
        if not files:
            raise DatasetError(f"series folder {path} is missing or empty though its package folder exists: "
                               "unpack the OAI 00m image package again")
        order = []
        for p in files:
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
            except Exception as err:
                raise DatasetError(f"{p}: not a readable DICOM file ({err}); "
                                   "unpack the OAI 00m image package again") from err
            number = ds.get("InstanceNumber")
            order.append((int(number) if number not in (None, "") else 10**9, p.name, p))
        order.sort()
        start = max(0, (len(order) - self.slices_per_knee) // 2)
        for index in range(start, min(len(order), start + self.slices_per_knee)):
            p = order[index][2]
            try:
                image = pydicom.dcmread(p).pixel_array.astype(np.float32)
            except Exception as err:
                raise DatasetError(f"{p}: cannot decode its pixels ({err}); "
                                   "unpack the OAI 00m image package again") from err
            if image.ndim != 2:
                raise DatasetError(f"{p}: expected one 2-D slice per file, got pixel shape {image.shape}")
            image = np.clip(image, 0, None)
            peak = float(image.max())
            image = image / peak if peak > 0 else image
            if image.shape != (self.max_size, self.max_size):
                image = resize(image, (self.max_size, self.max_size), anti_aliasing=True, preserve_range=True)
            yield index, np.clip(image, 0.0, 1.0)
