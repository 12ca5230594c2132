"""A tiny OASIS-1 download: two disc tarballs and the clinical spreadsheet, as the publisher serves them.

Layout (see dpmedgen.data.sources.oasis1)::

    oasis_cross-sectional_disc1.tar.gz   disc1/OAS1_0001_MR1/OAS1_0001_MR1.txt
                                         disc1/OAS1_0001_MR1/PROCESSED/MPRAGE/T88_111/
                                             OAS1_0001_MR1_mpr_n4_anon_111_t88_masked_gfc.hdr/.img
                                             OAS1_0001_MR1_mpr_n4_anon_111_t88_gfc.hdr/.img (unmasked: a decoy)
    oasis_cross-sectional_disc2.tar.gz   disc2/OAS1_0010_MR1/...
    oasis_cross-sectional-5708aa0a98d82080.xlsx   ID, M/F, Hand, Age, Educ, SES, MMSE, CDR, eTIV, nWBV,
                                                  ASF, Delay (shared strings, empty cells left out)

Images are big-endian int16 Analyze 7.5 pairs of shape (32, 40, 12, 1) written by nibabel, in the
Analyze transverse order (x right->left, y posterior->anterior, z inferior->superior): an ellipsoidal
"brain" of intensity ~600 on a zero background over z = 2..9 (z = 3..11 for OAS1_0009), a dark centre
("ventricles", 150; wider when CDR > 0) and a bright 3 x 3 marker (3000) at the anterior right, x 8..10,
y 27..29. The marker makes the 99.5th brain percentile 3000, so after scaling it reads 1.0 and the
brain ~0.2; in the radiological view (np.rot90) it sits at rows 10..12, columns 8..10 (top left).

Planted cohort (``PLANTED``): 13 subjects with a CDR, 6 with CDR 0 and 7 with CDR > 0, plus distractors:
two young subjects without CDR, a reliability rescan (OAS1_0006_MR2) and a table row for a subject on a
disc that is not downloaded.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import numpy as np

TABLE = "oasis_cross-sectional-5708aa0a98d82080.xlsx"
SHAPE = (32, 40, 12)
COLUMNS = ["ID", "M/F", "Hand", "Age", "Educ", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF", "Delay"]
# session -> (disc, n averaged scans, CDR or None, (z first, z last) of the brain)
SESSIONS = {
    "OAS1_0001_MR1": (1, 4, 0.0, (2, 9)), "OAS1_0002_MR1": (1, 4, 0.0, (2, 9)),
    "OAS1_0003_MR1": (1, 3, 0.5, (2, 9)), "OAS1_0004_MR1": (1, 4, None, (2, 9)),
    "OAS1_0005_MR1": (1, 4, 1.0, (2, 9)), "OAS1_0006_MR1": (1, 3, 0.0, (2, 9)),
    "OAS1_0006_MR2": (1, 3, None, (2, 9)), "OAS1_0007_MR1": (1, 4, 0.5, (2, 9)),
    "OAS1_0009_MR1": (1, 4, 2.0, (3, 11)),
    "OAS1_0010_MR1": (2, 4, 0.0, (2, 9)), "OAS1_0011_MR1": (2, 4, 0.5, (2, 9)),
    "OAS1_0012_MR1": (2, 3, 0.0, (2, 9)), "OAS1_0013_MR1": (2, 4, None, (2, 9)),
    "OAS1_0014_MR1": (2, 4, 1.0, (2, 9)), "OAS1_0015_MR1": (2, 4, 0.0, (2, 9)),
    "OAS1_0016_MR1": (2, 5, 0.5, (2, 9)),
}
# subject -> label, for the MR1 sessions with a CDR
PLANTED = {s[:9]: int(c > 0) for s, (_, _, c, _) in SESSIONS.items() if s.endswith("_MR1") and c is not None}
NOT_DOWNLOADED = "OAS1_0020_MR1"  # in the table, on disc 3
DECOY = "OAS1_0001_MR1"  # also has the unmasked _t88_gfc image
MARKER = (slice(8, 11), slice(27, 30))  # x, y of the anterior-right marker in the volume
MARKER_VIEW = (slice(10, 13), slice(8, 11))  # rows, columns of the marker after np.rot90
SLICES = {"OAS1_0009": [5, 9]}  # the other subjects: [4, 7] (slices_per_subject=2, band 0.3-0.7)


def volume(rng: np.random.Generator, cdr: float, zrange: tuple[int, int]) -> np.ndarray:
    x, y = np.meshgrid(np.arange(SHAPE[0]), np.arange(SHAPE[1]), indexing="ij")
    inside = ((x - 16) / 12) ** 2 + ((y - 20) / 16) ** 2 <= 1
    ventricles = ((x - 16) / (5 if cdr else 2)) ** 2 + ((y - 20) / (6 if cdr else 3)) ** 2 <= 1
    vol = np.zeros(SHAPE + (1,), dtype=np.int16)
    for z in range(zrange[0], zrange[1] + 1):
        plane = np.where(inside, 600 + rng.integers(-20, 21, size=inside.shape), 0)
        plane[ventricles] = 150
        plane[MARKER] = 3000
        vol[:, :, z, 0] = plane
    return vol


def _analyze(path: Path, data: np.ndarray) -> None:
    import nibabel as nib

    header = nib.AnalyzeHeader(endianness=">")
    header.set_data_dtype(np.int16)
    header.set_data_shape(data.shape)
    header.set_zooms((1.0, 1.0, 1.0, 1.0))
    nib.save(nib.AnalyzeImage(data.astype(">i2"), None, header), str(path))


def write_xlsx(path: Path, rows: list[list]) -> None:
    """The clinical table as an Excel workbook (one sheet, empty cells left empty), written with openpyxl."""
    from openpyxl import Workbook

    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "oasis_cross-sectional"
    for row in rows:
        sheet.append([None if v == "" else v for v in row])
    workbook.save(path)


def table_rows() -> list[list]:
    rows = [COLUMNS]
    for i, (session, (_, _, cdr, _)) in enumerate(list(SESSIONS.items()) + [(NOT_DOWNLOADED, (3, 4, 0.0, None))]):
        young = cdr is None and session.endswith("_MR1")
        age = 24 + i if young else 66 + i
        rows.append([session, "F" if i % 2 else "M", "R", age, None if young else 2 + i % 4,
                     None if young else 1 + i % 5, None if young else 30 - 2 * int(cdr or 0),
                     cdr, 1300 + 10 * i, round(0.8 - 0.005 * i, 3), round(1.3 + 0.01 * i, 3),
                     "N/A" if session.endswith("_MR1") else 30])
    return rows


def write_raw(folder: Path) -> dict:
    rng = np.random.default_rng(0)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in (1, 2):
            stage = Path(tmp) / f"disc{d}"
            for session, (disc, n, cdr, zrange) in SESSIONS.items():
                if disc != d:
                    continue
                t88 = stage / session / "PROCESSED" / "MPRAGE" / "T88_111"
                t88.mkdir(parents=True)
                (stage / session / f"{session}.txt").write_text(f"SESSION ID: {session}\n")
                stem = f"{session}_mpr_n{n}_anon_111_t88"
                _analyze(t88 / f"{stem}_masked_gfc.img", volume(rng, cdr or 0.0, zrange))
                if session == DECOY:
                    _analyze(t88 / f"{stem}_gfc.img", np.full(SHAPE + (1,), 50, dtype=np.int16))
            name = f"oasis_cross-sectional_disc{d}.tar.gz"
            with tarfile.open(folder / name, "w:gz") as tar:
                tar.add(stage, arcname=f"disc{d}")
            files.append(name)
    write_xlsx(folder / TABLE, table_rows())
    files.append(TABLE)
    return {"params": {"discs": [1, 2], "slices_per_subject": 2, "slice_band": [0.3, 0.7], "max_size": 64},
            "files": files}


def xlsx_bytes(rows: list[list]) -> bytes:
    """The workbook of `rows` as bytes (for tests that plant a modified table)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_xlsx(Path(tmp) / "t.xlsx", rows)
        return (Path(tmp) / "t.xlsx").read_bytes()
