"""A tiny ISIC 2020 training download: ``ISIC_2020_Training_GroundTruth_v2.csv``,
``ISIC_2020_Training_Duplicates.csv`` and ``ISIC_2020_Training_JPEG.zip`` (``train/ISIC_<7 digits>.jpg``),
laid out as the ISIC challenge bucket serves them (RGB JPEGs, here 56x40).

Planted (with the returned params: max_per_patient 2): 6 melanoma patients IP_0000001..6 and 6 other
patients IP_0000007..12, 7 images per class. IP_0000001 has a benign image first (dropped, its melanoma
keeps slice 1); IP_0000003 has melanoma at slices 0 and 2 around a benign one; IP_0000007 has 3 benign
images (capped to 2); ISIC_0000602 and ISIC_0000902 are listed as duplicates (image_name_2) and dropped.
ISIC_0000801 is uniform RGB (200, 100, 50) (luma 124.2); ISIC_0001001 is 230 in its central 40x40 square
and black in the 8-pixel side margins. Other images: noise with a dark centre (melanoma) or a light one.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

# (image number, patient number, target); image_name = ISIC_%07d, patient_id = IP_%07d
ROWS = [
    (101, 1, 0), (102, 1, 1),
    (201, 2, 1),
    (301, 3, 1), (302, 3, 0), (303, 3, 1),
    (401, 4, 1),
    (501, 5, 1),
    (601, 6, 1), (602, 6, 1),
    (701, 7, 0), (702, 7, 0), (703, 7, 0),
    (801, 8, 0),
    (901, 9, 0), (902, 9, 0),
    (1001, 10, 0),
    (1101, 11, 0),
    (1201, 12, 0),
]
DUPLICATES = [(601, 602), (901, 902)]
W, H = 56, 40
SITES = ["torso", "lower extremity", "upper extremity", "head/neck", ""]


def _jpeg(rng: np.random.Generator, number: int, target: int) -> bytes:
    if number == 801:
        arr = np.empty((H, W, 3), np.uint8)
        arr[...] = (200, 100, 50)
    elif number == 1001:
        arr = np.zeros((H, W, 3), np.uint8)
        arr[:, 8:48] = 230
    else:
        arr = rng.integers(120, 200, (H, W, 3))
        arr[12:28, 20:36] += -90 if target else 50
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def write_raw(folder: Path) -> dict:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = ["image_name,patient_id,lesion_id,sex,age_approx,anatom_site_general_challenge,diagnosis,"
             "benign_malignant,target"]
    for number, patient, target in ROWS:
        sex = "" if patient == 12 else ("male", "female")[patient % 2]
        diagnosis = "melanoma" if target else ("nevus", "unknown")[number % 2]
        lines.append(f"ISIC_{number:07d},IP_{patient:07d},IL_{number + 5000000:07d},{sex},{30 + 5 * patient}.0,"
                     f"{SITES[number % len(SITES)]},{diagnosis},{'malignant' if target else 'benign'},{target}")
    table, dups, archive = ("ISIC_2020_Training_GroundTruth_v2.csv", "ISIC_2020_Training_Duplicates.csv",
                            "ISIC_2020_Training_JPEG.zip")
    (folder / table).write_text("\n".join(lines) + "\n")
    (folder / dups).write_text("image_name_1,image_name_2\n"
                               + "".join(f"ISIC_{a:07d},ISIC_{b:07d}\n" for a, b in DUPLICATES))
    with zipfile.ZipFile(folder / archive, "w") as z:
        z.writestr("train/", b"")
        for number, _, target in ROWS:
            z.writestr(f"train/ISIC_{number:07d}.jpg", _jpeg(rng, number, target))
    return {"params": {"n_per_class": 7, "max_per_patient": 2, "max_size": 32, "seed": 0},
            "files": [table, dups, archive]}
