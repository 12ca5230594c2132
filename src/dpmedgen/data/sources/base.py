"""The dataset adapter interface: what to download, and how to turn the download into an ImageSet.

A dataset adapter is a :class:`DatasetSource` subclass registered in ``dpmedgen.data.DATASETS`` under
its config name. The ``download`` rule calls :func:`dpmedgen.data.sources.build_dataset`, which

1. constructs the adapter from ``datasets.<name>.params`` (the constructor validates them, so a bad
   parameter fails at config check, before any job runs, with a :class:`DatasetError` naming it);
2. fetches every :meth:`DatasetSource.remote_files` entry into the download folder
   (``<resources_dir>/downloads/<source>/``), resumably and verified by checksum
   (:mod:`dpmedgen.data.download`), and unpacks the archives among them;
3. calls :meth:`DatasetSource.read` on that folder, which returns the cohort in the common schema
   (:class:`~dpmedgen.data.schema.ImageSet`: modalities with values in [0, 1], ``patient_id``,
   ``slice``, ``label``). Resizing to the working resolution and the split by patient happen later,
   in the ``preprocess`` and ``split`` rules, so ``read`` returns images at any (common) size.

``read`` must be deterministic (the same files and parameters give the same ImageSet, rows in a fixed
order) and must fail with a :class:`DatasetError` that names the missing or malformed file and says
what to do, never with a bare ``KeyError`` or ``IndexError``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from dpmedgen.data.schema import ImageSet


class DatasetError(ValueError):
    """A dataset's parameters, download or raw files are wrong; the message names what and says what to do."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a dataset as its publisher serves it.

    ``name`` is the file name inside the download folder. ``sha256`` / ``md5`` are the checksums the
    publisher documents (hex); when neither is published, the sha256 of the first download is recorded
    in the folder's ``checksums.json`` and every later download or reuse is verified against it.
    ``unpack``: the file is an archive (``.tar``, ``.tar.gz``/``.tgz``, ``.zip``) to extract into the
    folder ``<download folder>/<name without the archive suffix>/``. ``google_drive``: the URL is a
    Google-Drive-style link whose large files answer first with a "can't scan for viruses" confirm page
    (detected automatically for drive.google.com / drive.usercontent.google.com URLs).
    """

    name: str
    url: str
    sha256: str | None = None
    md5: str | None = None
    unpack: bool = False
    google_drive: bool = False

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise DatasetError(f"remote file name {self.name!r} must be a plain file name")
        if not self.google_drive and any(h in self.url for h in ("drive.google.com", "drive.usercontent.google.com")):
            object.__setattr__(self, "google_drive", True)


class DatasetSource(ABC):
    """Base class of dataset adapters (one subclass per dataset, one file per subclass).

    Class attributes, shown in README's dataset table and checked at config time:

    - ``modalities``: the modality names :meth:`read` writes (a config's ``datasets.<name>.modality``
      and a fusion model's ``modalities`` must be among them);
    - ``homepage``, ``license``: where the data comes from and under which terms;
    - ``manual``: True when the data cannot be downloaded automatically (registration, data-use
      agreement); the adapter then reads a folder the user points to and :meth:`remote_files` is empty.

    Subclasses take their parameters as keyword arguments of ``__init__`` (with defaults; a parameter
    not in the signature is refused at config check) and validate them there.
    """

    modalities: ClassVar[tuple[str, ...]] = ()
    homepage: ClassVar[str] = ""
    license: ClassVar[str] = ""
    manual: ClassVar[bool] = False

    def remote_files(self) -> list[RemoteFile]:
        """The files to download (fetched in this order into the download folder). Default: none."""
        return []

    @abstractmethod
    def read(self, folder: Path) -> ImageSet:
        """The cohort from the download folder (archives already unpacked into their sub-folders)."""


def int_param(name: str, value, minimum: int, maximum: int | None = None, allow_none: bool = False) -> int | None:
    """`value` as an int if it is an integer in [minimum, maximum] (or None when allowed); else a DatasetError naming `name`."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < minimum or (maximum is not None and value > maximum):
        what = f"an integer >= {minimum}" if maximum is None else f"an integer in {minimum}..{maximum}"
        raise DatasetError(f"datasets param {name} must be {what}{' or null' if allow_none else ''}, got {value!r}")
    return int(value)


def downloaded_file(folder: Path, name: str) -> Path:
    """The path of download `name` in `folder`; a DatasetError naming it when it is not there."""
    path = Path(folder) / name
    if not path.is_file():
        raise DatasetError(f"{path} is missing; rerun to download it again")
    return path


def unpacked_dir(folder: Path, remote: RemoteFile) -> Path:
    """The folder an archive ``remote`` is unpacked into: ``folder / <name without the archive suffix>``."""
    name = remote.name
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if name.endswith(suffix):
            return Path(folder) / name[: -len(suffix)]
    raise DatasetError(f"{name}: not an archive name (.tar, .tar.gz, .tgz or .zip), cannot unpack it")
