"""Dataset adapters (one module each) and :func:`build_dataset`, which the ``download`` rule calls.

See :mod:`dpmedgen.data.sources.base` for the adapter interface and :mod:`dpmedgen.data.download` for
the download machinery. The registry of adapters is ``dpmedgen.data.DATASETS``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from dpmedgen.data.schema import ImageSet
from dpmedgen.data.sources.base import DatasetError, DatasetSource, RemoteFile, unpacked_dir

log = logging.getLogger(__name__)

__all__ = ["DatasetError", "DatasetSource", "RemoteFile", "build_dataset", "make_source", "resolve_remote_files", "unpacked_dir"]

OVERRIDABLE = ("url", "sha256", "md5")


def make_source(source: str, params: dict[str, Any] | None) -> DatasetSource:
    """Construct adapter `source` with `params`; a bad parameter raises DatasetError naming it."""
    import inspect

    from dpmedgen.data import DATASETS

    cls = DATASETS.get(source)
    params = dict(params or {})
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(params) - accepted)
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()):
        raise DatasetError(f"{unknown[0]!r} is not a parameter of dataset {source!r}; accepted: {sorted(accepted)}")
    try:
        return cls(**params)
    except TypeError as err:
        raise DatasetError(f"dataset {source!r}: {err}") from None


def resolve_remote_files(source: DatasetSource, downloads: dict[str, dict[str, str]] | None) -> list[RemoteFile]:
    """The adapter's remote files with the config's per-file overrides (``datasets.<name>.downloads``) applied.

    An override of ``url`` alone keeps the published checksum (a mirror must serve the same bytes);
    overriding ``sha256`` or ``md5`` replaces the published checksum.
    """
    files = source.remote_files()
    downloads = dict(downloads or {})
    names = {f.name for f in files}
    for name, fields in downloads.items():
        if name not in names:
            raise DatasetError(f"downloads.{name}: the dataset has no file {name!r}; its files: {sorted(names) or 'none'}")
        bad = sorted(set(fields) - set(OVERRIDABLE))
        if bad:
            raise DatasetError(f"downloads.{name}.{bad[0]}: cannot be overridden; allowed: {', '.join(OVERRIDABLE)}")
    out = []
    for remote in files:
        fields = downloads.get(remote.name, {})
        if "sha256" in fields or "md5" in fields:
            remote = replace(remote, sha256=None, md5=None)
        out.append(replace(remote, **fields) if fields else remote)
    return out


def build_dataset(
    source: str,
    params: dict[str, Any] | None,
    download_dir: str | os.PathLike,
    downloads: dict[str, dict[str, str]] | None = None,
    progress: bool = True,
) -> ImageSet:
    """Fetch (resumably, verified) and unpack the files of adapter `source`, then read the cohort from them."""
    from dpmedgen.data.download import fetch, file_digest, unpack

    adapter = make_source(source, params)
    folder = Path(download_dir)
    remotes = resolve_remote_files(adapter, downloads)
    fetched = {}
    for remote in remotes:
        log.info("fetching %s from %s", remote.name, remote.url)
        path = fetch(remote, folder, progress=progress)
        fetched[remote.name] = {"url": remote.url, "sha256": file_digest(path), "bytes": path.stat().st_size}
        if remote.unpack:
            log.info("unpacking %s", remote.name)
            unpack(path, remote)
    log.info("reading %s from %s", source, folder)
    images = adapter.read(folder)
    images.dataset = images.dataset or source
    images.provenance = {**images.provenance, "source": source, "params": dict(params or {}), "files": fetched}
    log.info("%s: %d images of %d patients, modalities %s, shape %s", source, len(images),
             len(set(images.patient_id)), list(images.modalities), images.shape)
    return images
