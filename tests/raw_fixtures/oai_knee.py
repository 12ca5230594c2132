"""A tiny OAI user folder: the baseline image release index and DICOM series, and the KL reading file.

Layout as the OAI serves it (see dpmedgen.data.sources.oai_knee)::

    OAI/00m/contents.csv                              Folder, ParticipantID, StudyDate, Barcode,
                                                      StudyDescription, SeriesDescription (quoted CSV)
    OAI/00m/0.C.2/<ID>/<yyyymmdd>/<8 digits>/001 ...  one DICOM per slice, no extension
    OAI/00m/0.E.1/...
    OAI/kxr_sq_bu00.txt                               "|"-separated: ID|SIDE|READPRJ|V00BARCDBU|V00XRKL|...

Planted cohort (``PLANTED``): 12 participants with a graded right-knee SAG_IW_TSE_RIGHT series of
5 slices (one of 1 slice), 6 with KL < 2 and 6 with KL >= 2, plus distractors: a participant whose
right knee has no KL grade, one graded only on the left, a left-knee and a coronal series, and a
radiograph. Each slice's pixel [0, 0] is its maximum (4000) and pixel [0, 1] is 500 * InstanceNumber,
so after per-slice max scaling it reads InstanceNumber / 8; label-1 knees have a brighter centre.
One series has its InstanceNumbers in reverse file order (to check the sort).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

SERIES = "SAG_IW_TSE_RIGHT"
# participant ID -> (package, KL of the right knee, number of slices)
PLANTED = {
    "9000101": ("0.C.2", 0, 5), "9000102": ("0.C.2", 1, 5), "9000103": ("0.C.2", 2, 5),
    "9000104": ("0.C.2", 3, 5), "9000105": ("0.C.2", 0, 1), "9000106": ("0.C.2", 4, 5),
    "9000207": ("0.E.1", 1, 5), "9000208": ("0.E.1", 2, 5), "9000209": ("0.E.1", 0, 5),
    "9000210": ("0.E.1", 3, 5), "9000211": ("0.E.1", 1, 5), "9000212": ("0.E.1", 2, 5),
}
REVERSED = "9000104"  # its files 001..005 carry InstanceNumber 5..1
NO_GRADE = "9000113"  # right-knee series, KL missing ('.')
LEFT_ONLY = "9000114"  # right-knee series, graded on the left knee only
SIZE = 32
DATE = "20050301"


def _dicom(path: Path, pixels: np.ndarray, pid: str, study: str, series: str, instance: int, barcode: str) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[pid, series, str(instance)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[pid, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[pid, series])
    ds.Modality = "MR" if "^MR^" in study else "DX"
    ds.PatientID = pid
    ds.StudyDate = DATE
    ds.AccessionNumber = "0166" + barcode
    ds.StudyDescription = study
    ds.SeriesDescription = series
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [float(instance) * 3.0, -80.0, 80.0]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def _slice(rng: np.random.Generator, label: int, instance: int) -> np.ndarray:
    img = rng.integers(100, 1500, size=(SIZE, SIZE)).astype(np.float64)
    img[10:22, 10:22] += 1500 if label else 300  # OA knees: a brighter centre
    img[0, 0] = 4000
    img[0, 1] = 500 * instance
    return img.astype(np.uint16)


def xray_barcode(pid: str) -> str:
    """A radiograph barcode (V00BARCDBU: '0166' + 8 digits starting with 0)."""
    return "01660" + pid


def write_raw(folder: Path) -> dict:
    rng = np.random.default_rng(0)
    root = Path(folder) / "OAI"
    visit = root / "00m"
    contents, kl_rows, barcode = [], [], 10000100

    def series(pid: str, package: str, name: str, n: int, label: int, reverse: bool = False) -> None:
        nonlocal barcode
        barcode += 1
        rel = f"{package}/{pid}/{DATE}/{barcode}"
        study = f"OAI^MR^ENROLLMENT^{name.rsplit('_', 1)[1]}"
        (visit / rel).mkdir(parents=True)
        for i in range(1, n + 1):
            instance = n + 1 - i if reverse else i
            _dicom(visit / rel / f"{i:03d}", _slice(rng, label, instance), pid, study, name, instance, str(barcode))
        contents.append([rel, pid, DATE, str(barcode), study, name])

    for pid, (package, kl, n) in PLANTED.items():
        series(pid, package, SERIES, n, int(kl >= 2), reverse=pid == REVERSED)
        kl_rows.append([pid, "1: Right", "15", xray_barcode(pid), str(kl), "0", "0"])
        kl_rows.append([pid, "2: Left", "15", xray_barcode(pid), "0", "0", "0"])
    # distractors
    series("9000101", "0.C.2", "SAG_IW_TSE_LEFT", 2, 1)
    series("9000102", "0.C.2", "COR_IW_TSE_RIGHT", 2, 1)
    series(NO_GRADE, "0.E.1", SERIES, 3, 0)
    kl_rows.append([NO_GRADE, "1: Right", "15", xray_barcode(NO_GRADE), ".", ".", "."])
    series(LEFT_ONLY, "0.E.1", SERIES, 3, 1)
    kl_rows.append([LEFT_ONLY, "2: Left", "15", xray_barcode(LEFT_ONLY), "3", "1", "0"])
    # a later reading project (37) of 9000103 disagrees: the lowest project (15) wins
    kl_rows.append(["9000103", "1: Right", "37", xray_barcode("9000103"), "0", "0", "0"])
    # a radiograph (8-digit series id starting with 0)
    xray = f"0.C.2/9000101/{DATE}/00430703"
    (visit / xray).mkdir(parents=True)
    _dicom(visit / xray / "001", _slice(rng, 0, 1), "9000101", "OAI^XRAY^ENROLLMENT^KNEE",
           "Bilateral PA Fixed Flexion Knee", 1, "00430703")
    contents.append([xray, "9000101", DATE, "00430703", "OAI^XRAY^ENROLLMENT^KNEE", "Bilateral PA Fixed Flexion Knee"])

    with open(visit / "contents.csv", "w", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_ALL)
        writer.writerow(["Folder", "ParticipantID", "StudyDate", "Barcode", "StudyDescription", "SeriesDescription"])
        writer.writerows(contents)
    with open(root / "kxr_sq_bu00.txt", "w", newline="") as f:
        f.write("ID|SIDE|READPRJ|V00BARCDBU|V00XRKL|V00XRJSM|V00XRJSL\n")
        f.writelines("|".join(r) + "\n" for r in kl_rows)
    return {"params": {"root": str(root), "series": SERIES, "slices_per_knee": 3, "max_size": SIZE}, "files": []}
