"""A tiny NIH ChestX-ray14 download: ``Data_Entry_2017_v2020.csv`` and two image archives
``images_001.tar.gz`` / ``images_002.tar.gz`` laid out as NIH serves them (``images/<patient>_<follow-up>.png``).

Planted (with the returned params: archives 1-2, max_per_patient 2, Infiltration vs No Finding): 7 positive
and 7 negative patients, 10 images per class. Patient 1 has a No Finding image (dropped: a positive patient
keeps only its Infiltration images), patients 5 and 6 have 3 candidate images (capped to 2), patients 15
(Mass, Effusion only) and 16 (rows in the table, images in archive 3, not downloaded) give nothing.
Image 00000002_000.png is RGBA (gray 120, random alpha), 00000011_001.png RGB (80, 80, 80), 00000008_000.png
uniform 200; the other images are noise, brighter in the centre for the positive class.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

# (patient, follow-up, finding labels, archive)
ROWS = [
    (1, 0, "No Finding", 1), (1, 1, "Infiltration", 1), (1, 2, "Infiltration|Effusion", 1),
    (2, 0, "Infiltration", 1),
    (3, 0, "No Finding", 1), (3, 1, "No Finding", 1),
    (4, 0, "Effusion", 1), (4, 1, "No Finding", 1),
    (5, 0, "Infiltration", 1), (5, 1, "Infiltration|Mass", 1), (5, 2, "Infiltration", 1),
    (6, 0, "No Finding", 1), (6, 1, "No Finding", 1), (6, 2, "No Finding", 1),
    (7, 0, "Cardiomegaly", 1), (7, 1, "Infiltration", 1),
    (8, 0, "No Finding", 1),
    (9, 0, "Infiltration", 2), (9, 1, "No Finding", 2),
    (10, 0, "No Finding", 2), (10, 1, "No Finding", 2),
    (11, 0, "Infiltration", 2), (11, 1, "Infiltration", 2),
    (12, 0, "No Finding", 2),
    (13, 0, "Infiltration|Nodule", 2),
    (14, 0, "No Finding", 2),
    (15, 0, "Mass", 2), (15, 1, "Effusion", 2),
    (16, 0, "No Finding", 3), (16, 1, "Infiltration", 3),
]
SIZE = 48
HEADER = ("Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position,"
          "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],")


def _png(rng: np.random.Generator, patient: int, follow_up: int, labels: str) -> bytes:
    if (patient, follow_up) == (2, 0):
        rgba = np.full((SIZE, SIZE, 4), 120, np.uint8)
        rgba[..., 3] = rng.integers(0, 256, (SIZE, SIZE))
        img = Image.fromarray(rgba, "RGBA")
    elif (patient, follow_up) == (11, 1):
        img = Image.fromarray(np.full((SIZE, SIZE, 3), 80, np.uint8), "RGB")
    elif (patient, follow_up) == (8, 0):
        img = Image.fromarray(np.full((SIZE, SIZE), 200, np.uint8), "L")
    else:
        arr = rng.integers(20, 150, (SIZE, SIZE))
        if "Infiltration" in labels:
            arr[12:36, 12:36] += 100
        img = Image.fromarray(arr.astype(np.uint8), "L")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_raw(folder: Path) -> dict:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = [HEADER]
    for patient, follow_up, labels, _ in ROWS:
        lines.append(f"{patient:08d}_{follow_up:03d}.png,{labels},{follow_up},{patient},{40 + patient},"
                     f"{'MF'[patient % 2]},PA,2500,2048,0.168,0.168,")
    csv = "Data_Entry_2017_v2020.csv"
    (folder / csv).write_text("\n".join(lines) + "\n")
    names = [csv]
    for archive in (1, 2):
        name = f"images_{archive:03d}.tar.gz"
        with tarfile.open(folder / name, "w:gz") as tar:
            info = tarfile.TarInfo("images")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
            for patient, follow_up, labels, where in ROWS:
                if where != archive:
                    continue
                data = _png(rng, patient, follow_up, labels)
                info = tarfile.TarInfo(f"images/{patient:08d}_{follow_up:03d}.png")
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
        names.append(name)
    return {"params": {"archives": [1, 2], "n_per_class": 10, "max_per_patient": 2, "max_size": 32, "seed": 0},
            "files": names}
