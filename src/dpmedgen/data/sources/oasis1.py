"""``oasis1``: OASIS-1 cross-sectional brain MRI, axial slices labelled by dementia (CDR > 0).

Source: the Open Access Series of Imaging Studies, OASIS-1 (Marcus et al., J Cogn Neurosci 19:1498,
2007; https://sites.wustl.edu/oasisbrains/home/oasis-1/, formerly oasis-brains.org), Washington
University Knight ADRC. 416 right-handed subjects aged 18-96, one T1-weighted MPRAGE session each
(``OAS1_xxxx_MR1``); 100 subjects over 60 have very mild to moderate Alzheimer's disease (CDR 0.5-2),
and 20 non-demented subjects were rescanned within 90 days (reliability sessions ``OAS1_xxxx_MR2``).

Terms: open access under the OASIS data use terms (free for research and teaching; do not attempt to
re-identify subjects; cite Marcus et al. 2007 and acknowledge the grants listed on the OASIS site). No
registration: the files are downloaded.

Files (:meth:`OASIS1.remote_files`): the images come as 12 tarballs ``oasis_cross-sectional_disc1.tar.gz``
.. ``disc12`` (about 1.3-1.5 GB each, ~16-18 GB in all; third-party reports, not published; no checksums
are published), of which only the discs in ``discs`` are fetched (default disc 1, ~35-40 sessions); the
clinical table is the publisher's spreadsheet ``oasis_cross-sectional-5708aa0a98d82080.xlsx`` (ID, M/F,
Hand, Age, Educ, SES, MMSE, CDR, eTIV, nWBV, ASF, Delay; the old ``oasis_cross-sectional.csv`` of the same
columns is no longer on the publisher's site). The table is read with openpyxl; a CSV with those columns under the same name is accepted too (e.g. a mirror set through
``datasets.oasis1.downloads``). Each disc unpacks to ``disc<N>/OAS1_xxxx_MR<k>/`` holding ``RAW/``,
``FSL_SEG/`` and ``PROCESSED/MPRAGE/{SUBJ_111,T88_111}/``.

Images: per session, ``PROCESSED/MPRAGE/T88_111/OAS1_xxxx_MR1_mpr_n<k>_anon_111_t88_masked_gfc.hdr/.img``
(``n<k>``: the number of MPRAGE scans averaged, 3-6): the average of the session's scans, registered to
the Talairach-Tournoux 1988 atlas at 1 mm (176 x 208 x 176 voxels), gain-field corrected and brain-masked;
Analyze 7.5, read with nibabel.

Patients: ``patient_id`` is the subject, ``OAS1_xxxx`` (the session folder name without ``_MR1``). Only the
first session (MR1) is used; the reliability rescans (MR2) are skipped, so every subject appears once.

Labels (``label="cdr_positive"``, the only choice): 1 if the Clinical Dementia Rating of the MR1 row is
> 0 (0.5 very mild, 1 mild, 2 moderate dementia), 0 if it is 0. Subjects without a CDR (most subjects
under 60 were not rated) are excluded and counted in ``provenance["excluded"]``.

Slices: ``slices_per_subject`` axial slices evenly spaced from fraction ``slice_band[0]`` to ``slice_band[1]``
(default 0.3-0.7; a single slice: the middle of the band) of the brain's inferior-superior extent (the z
range of non-zero voxels of the masked volume), a central band holding the basal ganglia and the lateral
ventricles; ``slice`` is the z index in the volume. A band symmetric around 0.5 (like the default) picks
the same slices whichever way z runs.

Orientation: the array nibabel reads is (x, y, z) in the Analyze 7.5 transverse order x right->left,
y posterior->anterior, z inferior->superior (nibabel's default Analyze affine says the same: axis codes
L, A, S), which is the order the publisher's 4dfp tool ``4dfptoanalyze`` writes (4dfp docs: "first voxel
right occipital skull-base"). Each slice ``vol[:, :, z]`` is rotated by 90 degrees (``np.rot90``) so that
rows run anterior (top) to posterior and columns from the subject's right to left: the radiological view.
UNVERIFIED on a real file (no download here); check one image after the first real download.

Intensities: each subject's volume is divided by the 99.5th percentile of its brain (non-zero) voxels and
clipped to [0, 1] (one scale per subject, so the slices of a subject stay comparable). Slices are 208 x
176 (rows x columns); when 208 > ``max_size`` they are resized (skimage, anti-aliased) to keep the aspect,
the longer side becoming ``max_size``.
"""

from __future__ import annotations

import csv
import math
import re
import zipfile
from pathlib import Path

import numpy as np

from dpmedgen.data.schema import ImageSet
from dpmedgen.data.sources.base import DatasetError, DatasetSource, RemoteFile, int_param, unpacked_dir

NAME = "oasis1"
N_DISCS = 12
# https://download.nrg.wustl.edu/data/oasis_cross-sectional_disc{1..12}.tar.gz: the OASIS-1 download links
# (used by e.g. braindataprep's OASIS-1 harvester, 2024); no checksums are published.
DISC_URL = "https://download.nrg.wustl.edu/data/oasis_cross-sectional_disc{d}.tar.gz"
# The clinical table as the publisher serves it since the 2024 move to sites.wustl.edu (clinica issue #1314:
# "from oasis_cross-sectional.csv to oasis_cross-sectional-5708aa0a98d82080.xlsx", same data).
TABLE = "oasis_cross-sectional-5708aa0a98d82080.xlsx"
TABLE_URL = f"https://sites.wustl.edu/oasisbrains/files/2024/04/{TABLE}"
LABELS = ("cdr_positive",)
SESSION = re.compile(r"OAS1_\d{4}_MR(\d+)")
IMAGE_DIR = Path("PROCESSED", "MPRAGE", "T88_111")
IMAGE_GLOB = "*_t88_masked_gfc.hdr"
PERCENTILE = 99.5



def disc_file(d: int) -> RemoteFile:
    return RemoteFile(name=f"oasis_cross-sectional_disc{d}.tar.gz", url=DISC_URL.format(d=d), unpack=True)



def _redo(path: Path) -> str:
    return f"delete {path} and rerun to download it again"


def _redo_disc(unpacked: Path) -> str:
    """What to do about a bad file inside an unpacked disc: unpack again, and if that fails download again."""
    return (f"delete {unpacked} and rerun to unpack it again (if that does not help, delete "
            f"{unpacked.parent / (unpacked.name + '.tar.gz')} too, to download it again)")


class OASIS1(DatasetSource):
    modalities = ("mri",)
    homepage = "https://sites.wustl.edu/oasisbrains/home/oasis-1/"
    license = ("OASIS data use terms: open access for research and teaching, no re-identification, "
               "cite Marcus et al. 2007 and acknowledge the OASIS grants")

    def __init__(self, discs=(1,), slices_per_subject: int = 8, slice_band=(0.3, 0.7),
                 label: str = "cdr_positive", max_size: int = 256) -> None:
        if isinstance(discs, (int, str)) or not isinstance(discs, (list, tuple)) or not discs or any(
                isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= d <= N_DISCS for d in discs):
            raise DatasetError(f"datasets param discs must be a non-empty list of disc numbers in 1..{N_DISCS}, "
                               f"got {discs!r}")
        if len(set(discs)) != len(discs):
            raise DatasetError(f"datasets param discs lists a disc twice: {discs!r}")
        self.discs = sorted(int(d) for d in discs)
        self.slices_per_subject = int_param("slices_per_subject", slices_per_subject, 1)
        if (not isinstance(slice_band, (list, tuple)) or len(slice_band) != 2
                or any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in slice_band)
                or not 0.0 <= slice_band[0] < slice_band[1] <= 1.0):
            raise DatasetError("datasets param slice_band must be [low, high] fractions of the brain's "
                               f"inferior-superior extent with 0 <= low < high <= 1, got {slice_band!r}")
        self.slice_band = (float(slice_band[0]), float(slice_band[1]))
        if label not in LABELS:
            raise DatasetError(f"datasets param label must be one of {list(LABELS)}, got {label!r}")
        self.label = label
        self.max_size = int_param("max_size", max_size, 8)

    def remote_files(self) -> list[RemoteFile]:
        return [disc_file(d) for d in self.discs] + [RemoteFile(name=TABLE, url=TABLE_URL)]

    def read(self, folder: Path) -> ImageSet:
        from tqdm import tqdm

        folder = Path(folder)
        cdr = self._cdr(folder / TABLE)
        sessions, rescans = self._sessions(folder)
        subjects = [(sid, path, cdr[sid]) for sid, path in sessions if cdr.get(sid) is not None]
        if not subjects:
            raise DatasetError(f"{NAME}: none of the {len(sessions)} MR1 sessions of discs {self.discs} has a CDR "
                               f"in {folder / TABLE}; {_redo(folder / TABLE)}")

        images, pids, slices, labels, shape = [], [], [], [], None
        for sid, path, rating in tqdm(subjects, desc=NAME, unit="subject", leave=False):
            vol = self._volume(path)
            if shape is None:
                shape = vol.shape
            elif vol.shape != shape:
                raise DatasetError(f"{path}: volume shape {vol.shape} differs from the other subjects' {shape} "
                                   f"(all T88_111 images are atlas-sized); {_redo_disc(path.parents[5])}")
            for z, image in self._slices(vol):
                images.append(image)
                pids.append(sid[:9])
                slices.append(z)
                labels.append(int(rating > 0))
        labels = np.asarray(labels)
        return ImageSet(
            modalities={"mri": np.stack(images)}, patient_id=np.asarray(pids), slice=np.asarray(slices),
            label=labels, dataset=NAME,
            provenance={
                "discs": self.discs, "table": TABLE,
                "image": str(IMAGE_DIR / "OAS1_xxxx_MR1_mpr_n<k>_anon_111_t88_masked_gfc.hdr"),
                "sessions": "MR1 only (reliability rescans MR2 skipped)",
                "subjects": len(subjects),
                "excluded": {"no_cdr": len(sessions) - len(subjects), "mr2_rescans": rescans},
                "label": self.label, "label_meaning": {"0": "CDR = 0", "1": "CDR > 0 (0.5, 1 or 2)"},
                "slices_per_subject": self.slices_per_subject, "slice_band": list(self.slice_band),
                "slice": "z index, evenly spaced in slice_band of the brain's inferior-superior extent",
                "orientation": "np.rot90 of vol[:, :, z]: anterior up, subject's right on the left (radiological)",
                "intensity": f"per subject divided by the {PERCENTILE}th percentile of brain voxels, clipped to [0, 1]",
                "max_size": self.max_size, "shape": list(images[0].shape),
                "class_counts": {str(c): int((labels == c).sum()) for c in (0, 1)},
            },
        )

    # --- the files --------------------------------------------------------------------------------

    def _sessions(self, folder: Path) -> tuple[list[tuple[str, Path]], int]:
        """(session id, masked T88 header) of every MR1 session of the discs, sorted; and the MR2 count."""
        found, rescans = {}, 0
        for d in self.discs:
            remote = disc_file(d)
            unpacked = unpacked_dir(folder, remote)
            root = unpacked / f"disc{d}"
            if not root.is_dir():
                raise DatasetError(f"{root} not found (the unpacked {remote.name} holds disc{d}/OAS1_xxxx_MR1/...); "
                                   + _redo_disc(unpacked))
            for session in sorted(p for p in root.iterdir() if p.is_dir() and SESSION.fullmatch(p.name)):
                if SESSION.fullmatch(session.name).group(1) != "1":
                    rescans += 1
                    continue
                headers = sorted((session / IMAGE_DIR).glob(IMAGE_GLOB))
                if not headers:
                    raise DatasetError(f"{session / IMAGE_DIR}: no {IMAGE_GLOB} image; " + _redo_disc(unpacked))
                found.setdefault(session.name, headers[0])
        return sorted(found.items()), rescans

    def _cdr(self, path: Path) -> dict[str, float | None]:
        """Session ID -> CDR (None when not rated) from the clinical table (.xlsx, or .csv content)."""
        if not path.is_file():
            raise DatasetError(f"{path} not found (the OASIS-1 clinical table); rerun to download it")
        try:
            sheets = _xlsx_sheets(path) if zipfile.is_zipfile(path) else [_csv_rows(path)]
        except (OSError, KeyError, IndexError, ValueError, AttributeError, TypeError, zipfile.BadZipFile,
                csv.Error) as err:
            raise DatasetError(f"{path}: not a readable spreadsheet ({type(err).__name__}: {err}); "
                               f"{_redo(path)}") from err
        # the first sheet with a header row naming ID and CDR
        found = next(((rows, i) for rows in sheets for i, r in enumerate(rows) if "ID" in r and "CDR" in r), None)
        if found is None:
            first = next((r for rows in sheets for r in rows if r), [])
            raise DatasetError(f"{path}: no header row with columns ID and CDR (first row: {first}); "
                               f"it is not the OASIS-1 clinical table: {_redo(path)}")
        rows, header = found
        id_col, cdr_col = rows[header].index("ID"), rows[header].index("CDR")
        out: dict[str, float | None] = {}
        for row in rows[header + 1:]:
            sid = row[id_col] if len(row) > id_col else ""
            if sid:
                out.setdefault(sid, _number(row[cdr_col] if len(row) > cdr_col else ""))
        return out

    def _volume(self, header: Path) -> np.ndarray:
        import nibabel as nib

        if not header.with_suffix(".img").is_file():
            raise DatasetError(f"{header.with_suffix('.img')} not found (the image data of {header.name}); "
                               f"{_redo_disc(header.parents[5])}")
        try:
            vol = np.asarray(nib.load(header).dataobj, dtype=np.float32)
        except Exception as err:  # nibabel raises many types for a truncated or garbled Analyze pair
            raise DatasetError(f"{header} / .img: not a readable Analyze 7.5 image ({type(err).__name__}: {err}); "
                               f"{_redo_disc(header.parents[5])}") from err
        if vol.ndim == 4 and vol.shape[3] == 1:  # OASIS stores (176, 208, 176, 1)
            vol = vol[..., 0]
        if vol.ndim != 3 or not np.isfinite(vol).all() or not (vol > 0).any():
            raise DatasetError(f"{header}: expected a 3-D brain volume with finite values, got shape {vol.shape}; "
                               f"{_redo_disc(header.parents[5])}")
        return vol

    def _slices(self, vol: np.ndarray):
        """(z, [0, 1] axial image in radiological view) for the slices of one subject."""
        from skimage.transform import resize

        brain = vol > 0
        zs = np.flatnonzero(brain.any(axis=(0, 1)))
        low, high = self.slice_band
        n = self.slices_per_subject
        fractions = np.linspace(low, high, n) if n > 1 else np.array([(low + high) / 2])
        positions = zs[0] + fractions * (zs[-1] - zs[0])
        scale = float(np.percentile(vol[brain], PERCENTILE))
        for z in np.unique(np.round(positions).astype(int)):
            image = np.clip(np.rot90(vol[:, :, z]) / scale, 0.0, 1.0)
            if max(image.shape) > self.max_size:
                f = self.max_size / max(image.shape)
                size = (max(1, round(image.shape[0] * f)), max(1, round(image.shape[1] * f)))
                image = np.clip(resize(image, size, anti_aliasing=True, preserve_range=True), 0.0, 1.0)
            yield int(z), image.astype(np.float32)


# --- the clinical table -------------------------------------------------------------------------------


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:  # '', 'N/A'
        return None
    return None if math.isnan(value) else value


def _csv_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [[c.strip() for c in row] for row in csv.reader(f)]


def _xlsx_sheets(path: Path) -> list[list[list[str]]]:
    """The worksheets of an .xlsx in workbook order, as rows of strings (empty cells ''), read with openpyxl."""
    from openpyxl import load_workbook

    workbook = load_workbook(path, read_only=True, data_only=True)
    try:
        return [[["" if v is None else str(v).strip() for v in row] for row in sheet.iter_rows(values_only=True)]
                for sheet in workbook.worksheets]
    finally:
        workbook.close()
