"""``mripet`` and ``irvis``: the DDcGAN image-fusion training patches (registered pairs, one HDF5 file each).

Source: the training data of DDcGAN (Ma, Xu, Jiang, Mei and Zhang, "DDcGAN: A Dual-Discriminator
Conditional Generative Adversarial Network for Multi-Resolution Image Fusion", IEEE TIP 29, 2020;
code https://github.com/hanna-xu/DDcGAN). The authors publish the patch files on Baidu Pan only
(README "Training dataset": password-protected links, no automatic download). The Google Drive
copies used here are the ones linked, under the names ``mripet.h5`` and ``irvis.h5``, from the README
of https://github.com/waterophelia/DP-DDcGAN (a thesis on differential privacy in DDcGAN); they are
a third-party re-upload, and no checksum is published, so the first download's sha256 is recorded.

- ``mripet``: MRI-T1 / PET pairs from the Harvard Whole Brain Atlas
  (https://www.med.harvard.edu/aanlib/). Modalities ``("mri", "pet")``.
- ``irvis``: infrared / visible pairs from the TNO Image Fusion Dataset (A. Toet, figshare,
  doi:10.6084/m9.figshare.1008029). Modalities ``("ir", "vis")``.

Terms: neither patch file carries a licence. The Whole Brain Atlas images are copyright
K. A. Johnson and J. A. Becker (Harvard Medical School) and are offered for education and research;
the TNO dataset is distributed on figshare (CC BY 4.0 there, unverified). Treat both as research-use
only and cite DDcGAN and the original atlas/dataset.

File layout (from the authors' scripts: ``create_h5_file.m``/``store2hdf5.m`` in hanna-xu/utils and
``main.py``/``train.py``/``change_sampling.py`` in hanna-xu/DDcGAN): one float32 dataset ``data``
written by MATLAB as (H, W, 2, N), which h5py reads as (N, 2, W, H); the authors'
``np.transpose(data, (0, 3, 2, 1))`` gives (N, H, W, 2). Channel 0 is the high-resolution source
(visible, or MRI: the "vis" input of the generator), channel 1 the low-resolution one (infrared, or
PET: the "ir" input). Values are MATLAB ``im2double`` intensities in [0, 1]. Both channels are stored
at the same patch size (84 x 84 in DDcGAN's ``train.py``); DDcGAN makes the PET/IR input
low-resolution on the fly (``scipy.ndimage.zoom(.., 0.25)``), so no upsampling is needed here: both
modalities are returned at the stored patch size, the low-resolution one included. A file already in
channels-last layout (N, H, W, 2) is read as well (detected from which axis has length 2).
The number of patches is not documented (it depends on the authors' stride and source images).

Patients: there are none to identify. The patches are crops of a small number of source images
(Harvard atlas slices / TNO scenes), shuffled by MATLAB's ``randperm`` before writing, so the source
image of a patch cannot be recovered. Each pair gets its own id ``pair_<row index in the file>``
(``slice`` 0), so the pipeline's patient-level split is a split by pair: overlapping crops of one
source image can fall into different splits, and any "per-patient" privacy claim on these sets is a
per-pair (per-patch) claim. Labels: none (-1); fusion models are conditioned on the source pair.

Selection: ``max_pairs`` pairs drawn without replacement with ``numpy.random.default_rng(seed)``
(all when ``None`` or when the file has fewer), kept in file order. Patches larger than
``max_size`` are downsampled to fit (``skimage.transform.resize``, anti-aliased). Intensities: float
patches are taken as stored and clipped to [0, 1]; integer patches are divided by their dtype's
maximum; float patches whose maximum exceeds 1 (an 8-bit range re-save) are divided by 255.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import h5py
import numpy as np

from dpmedgen.data.schema import ImageSet
from dpmedgen.data.sources.base import DatasetError, DatasetSource, RemoteFile, downloaded_file, int_param

DDCGAN_HOMEPAGE = "https://github.com/hanna-xu/DDcGAN"
DATA_KEY = "data"
BLOCK = 1024  # rows read from the HDF5 file at a time



class FusionPairs(DatasetSource):
    """Shared reader of a DDcGAN patch file; subclasses name the file, its URL and its channels."""

    file_name: ClassVar[str] = ""
    url: ClassVar[str] = ""
    channels: ClassVar[dict[str, int]] = {}  # modality -> channel index after the (N, H, W, 2) transpose
    manual = False

    def __init__(self, max_pairs: int | None = 5000, seed: int = 0, max_size: int = 256) -> None:
        int_param("max_pairs", max_pairs, 1, allow_none=True)
        int_param("seed", seed, 0)
        int_param("max_size", max_size, 8)
        self.max_pairs, self.seed, self.max_size = max_pairs, int(seed), int(max_size)

    @property
    def name(self) -> str:
        return self.file_name.removesuffix(".h5")

    def remote_files(self) -> list[RemoteFile]:
        # No checksum is published: the machinery records the sha256 of the first download.
        return [RemoteFile(self.file_name, self.url)]

    def read(self, folder: Path) -> ImageSet:
        path = downloaded_file(folder, self.file_name)
        redo = f"delete {path} and rerun to download it again"
        try:
            with h5py.File(path, "r") as f:
                if DATA_KEY not in f:
                    raise DatasetError(f"{path} has no dataset {DATA_KEY!r} (it has {sorted(f.keys())}); {redo}")
                data = f[DATA_KEY]
                layout = self._layout(data.shape, path, redo)
                n = data.shape[0]
                rows = self._select(n)
                mods, scale = self._read_rows(data, rows, layout)
        except OSError as err:
            raise DatasetError(f"{path} is not a readable HDF5 file ({err}); {redo}") from None
        return ImageSet(
            modalities=mods,
            patient_id=np.array([f"pair_{i}" for i in rows]),
            slice=np.zeros(len(rows), dtype=np.int32),
            label=np.full(len(rows), -1, dtype=np.int8),
            dataset=self.name,
            provenance={
                "file": self.file_name,
                "layout": layout,
                "channels": dict(self.channels),
                "n_pairs_in_file": int(n),
                "n_pairs": len(rows),
                "max_pairs": self.max_pairs,
                "seed": self.seed,
                "max_size": self.max_size,
                "intensity": scale,
                "ids": "pair_<row in file>: one id per pair, the split is by pair (no patient ids)",
            },
        )

    @staticmethod
    def _layout(shape: tuple[int, ...], path: Path, redo: str) -> str:
        if len(shape) == 4 and shape[1] == 2 and shape[3] != 2:
            return "matlab (N, 2, W, H)"
        if len(shape) == 4 and shape[3] == 2 and shape[1] != 2:
            return "channels-last (N, H, W, 2)"
        raise DatasetError(f"{path}: dataset {DATA_KEY!r} has shape {shape}; expected (N, 2, W, H) or (N, H, W, 2); {redo}")

    def _select(self, n: int) -> np.ndarray:
        if self.max_pairs is None or self.max_pairs >= n:
            return np.arange(n)
        rng = np.random.default_rng(self.seed)
        return np.sort(rng.choice(n, size=self.max_pairs, replace=False))

    def _read_rows(self, data, rows: np.ndarray, layout: str) -> tuple[dict[str, np.ndarray], str]:
        matlab = layout.startswith("matlab")
        h, w = (data.shape[3], data.shape[2]) if matlab else (data.shape[1], data.shape[2])
        factor = min(1.0, self.max_size / max(h, w))
        out_hw = (max(1, round(h * factor)), max(1, round(w * factor)))
        out = {m: np.empty((len(rows), *out_hw), dtype=np.float32) for m in self.channels}
        integer = np.issubdtype(data.dtype, np.integer)
        done = 0
        for start in range(0, data.shape[0], BLOCK):
            wanted = rows[(rows >= start) & (rows < start + BLOCK)]
            if not len(wanted):
                continue
            block = data[start:min(start + BLOCK, data.shape[0])][wanted - start]
            block = np.transpose(block, (0, 3, 2, 1)) if matlab else block  # -> (n, H, W, 2)
            for m, c in self.channels.items():
                imgs = block[..., c].astype(np.float32)
                if factor < 1.0:
                    from skimage.transform import resize  # lazy: skimage/scipy cost ~0.5 s per import of dpmedgen.data

                    imgs = resize(imgs, (len(imgs), *out_hw), order=1, anti_aliasing=True, preserve_range=True)
                out[m][done:done + len(wanted)] = imgs
            done += len(wanted)
        peak = max((float(a.max()) for a in out.values() if a.size), default=0.0)
        if integer:
            div, scale = float(np.iinfo(data.dtype).max), f"integer patches / {np.iinfo(data.dtype).max}"
        elif peak <= 1.0 + 1e-3:
            div, scale = 1.0, "float patches in [0, 1] (MATLAB im2double) taken as stored, clipped to [0, 1]"
        elif peak <= 255.0 + 1e-3:
            div, scale = 255.0, "float patches in [0, 255] / 255"
        else:
            raise DatasetError(f"{self.file_name}: patch values reach {peak:g}, expected [0, 1] or [0, 255]; "
                               "delete the file and rerun to download it again")
        for m, a in out.items():
            if not np.isfinite(a).all():
                raise DatasetError(f"{self.file_name}: modality {m!r} holds non-finite values; "
                                   "delete the file and rerun to download it again")
            np.clip(a / div, 0.0, 1.0, out=a)
        return out, scale


class MRIPET(FusionPairs):
    """MRI-T1 / PET patch pairs (Harvard Whole Brain Atlas) from DDcGAN's PET-MRI training file."""

    modalities = ("mri", "pet")
    homepage = DDCGAN_HOMEPAGE
    license = ("no licence on the patch file; images (c) Harvard Whole Brain Atlas (Johnson & Becker), "
               "education/research use, cite DDcGAN and the atlas")
    file_name = "mripet.h5"
    # Google Drive file 1V2N9ujvqJkIUpzhOe3_TZqdQpICVi-m8, linked as "mripet.h5" in the README of
    # github.com/waterophelia/DP-DDcGAN (third-party copy of DDcGAN's Baidu-hosted PET-MRI training set).
    # Unverified that it is byte-identical to the authors' Medical_dataset.h5.
    url = "https://drive.google.com/uc?export=download&id=1V2N9ujvqJkIUpzhOe3_TZqdQpICVi-m8"
    channels = {"mri": 0, "pet": 1}  # DDcGAN PET-MRI train.py: channel 0 -> "vis" (MRI), 1 -> "ir" (PET)


class IRVIS(FusionPairs):
    """Infrared / visible patch pairs (TNO Image Fusion Dataset) from DDcGAN's vis-ir training file."""

    modalities = ("ir", "vis")
    homepage = DDCGAN_HOMEPAGE
    license = ("no licence on the patch file; TNO Image Fusion Dataset (Toet, figshare; CC BY 4.0 there, "
               "unverified), cite DDcGAN and TNO")
    file_name = "irvis.h5"
    # Google Drive file 1o-dhSphyyiqSHu9veiKWvxViZ_FSeZWJ, linked as "irvis.h5" (earlier "Training_Dataset.h5")
    # in the README of github.com/waterophelia/DP-DDcGAN (third-party copy of DDcGAN's vis-ir training set).
    url = "https://drive.google.com/uc?export=download&id=1o-dhSphyyiqSHu9veiKWvxViZ_FSeZWJ"
    channels = {"ir": 1, "vis": 0}  # DDcGAN train.py: channel 0 = VIS, channel 1 = IR
