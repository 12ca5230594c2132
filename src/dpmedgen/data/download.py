"""Resumable, checksum-verified, atomic downloads and archive unpacking for the dataset adapters.

Why not a library: ``pooch`` verifies and moves atomically but cannot resume a partial download;
``gdown`` resumes and knows Google Drive, but recognises Drive only by host name (so its confirm step
cannot be tested against a local server) and verifies md5 only. This module does the four things the
pipeline needs, each tested against a local HTTP server:

- **Resumable.** Bytes go to ``<name>.part``; a rerun after an interruption asks the server for the
  rest with an HTTP ``Range`` request (a server that ignores it is answered by starting over).
- **Verified.** A published checksum (sha256 or md5) is checked after every download and on every
  reuse of a file already present. Where none is published, the sha256 of the first complete
  download is recorded in ``checksums.json`` in the download folder (trust on first use) and every
  later download or reuse is verified against it. A mismatch deletes the bad bytes and fails with
  both digests, the URL and what to do.
- **Atomic.** Only a complete, verified file is renamed to its final name; an archive is unpacked into
  a temporary folder renamed into place when complete. An interrupted run leaves only ``.part`` files
  and ``.tmp`` folders, which a rerun resumes or removes.
- **Google Drive.** Large Drive files answer first with an HTML "can't scan this file for viruses"
  page; its form (or, on the older page, the ``confirm=`` link / ``download_warning`` cookie) gives the
  real download URL, which is requested next.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import tarfile
import time
import zipfile
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode, urljoin

import requests
from tqdm.auto import tqdm

from dpmedgen.data.sources.base import DatasetError, RemoteFile, unpacked_dir
from dpmedgen.io import write_text

CHUNK_BYTES = 1 << 20
NETWORK_CHUNK_BYTES = 1 << 16  # small reads: an interrupted transfer keeps all but the last one
LEDGER = "checksums.json"
TIMEOUT_S = 60


class DownloadError(DatasetError):
    """A download failed, was truncated or did not match its checksum; the message says what to do."""


# ----------------------------------------------------------------------------------------------- checksums


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def _read_ledger(folder: Path) -> dict:
    path = folder / LEDGER
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DownloadError(f"{path}: not valid JSON ({err}); fix or delete it (its recorded checksums are then lost)") from None


def _update_ledger(folder: Path, name: str, entry: dict | None) -> None:
    """Set (or with None, drop) the ledger entry of `name`: read-modify-write under the folder's lock, atomic."""
    with _locked(folder / f".{LEDGER}.lock"):
        ledger = _read_ledger(folder)
        if entry is None and ledger.pop(name, None) is None:
            return
        if entry is not None:
            ledger[name] = entry
        write_text(json.dumps(ledger, indent=2, sort_keys=True) + "\n", folder / LEDGER)


def _record(folder: Path, remote: RemoteFile, sha256: str, size: int) -> None:
    _update_ledger(folder, remote.name, {
        "sha256": sha256, "size": size, "url": remote.url,
        "recorded": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })


def forget(folder: Path, name: str) -> None:
    """Drop the recorded first-use checksum of `name` (if any) from the folder's ledger."""
    if (folder / LEDGER).exists():
        _update_ledger(folder, name, None)


def expected_digest(folder: Path, remote: RemoteFile) -> tuple[str, str, str] | None:
    """(algorithm, hex digest, where it comes from) the file must match, or None on first download."""
    if remote.sha256:
        return "sha256", remote.sha256.lower(), "published"
    if remote.md5:
        return "md5", remote.md5.lower(), "published"
    entry = _read_ledger(folder).get(remote.name)
    if entry:
        return "sha256", entry["sha256"], f"recorded at first download on {entry['recorded']} in {folder / LEDGER}"
    return None


def verify(path: Path, remote: RemoteFile, folder: Path) -> None:
    """Check `path` against the published or recorded checksum of `remote`; record one if there is none."""
    expected = expected_digest(folder, remote)
    if expected is None:
        _record(folder, remote, file_digest(path, "sha256"), path.stat().st_size)
        return
    algorithm, digest, origin = expected
    actual = file_digest(path, algorithm)
    if actual != digest:
        raise DownloadError(
            f"{path.name}: {algorithm} {actual} does not match the {origin} {algorithm} {digest} (from {remote.url}). "
            "The file is corrupt or the publisher changed it; it was removed. Rerun to download it again; if the "
            "mismatch persists, check the source and set datasets.<name>.downloads."
            f"{remote.name}.sha256 (or remove the recorded entry) once you trust the new file."
        )


# ------------------------------------------------------------------------------------------------ fetching


class _FormParser(HTMLParser):
    """The download form (action + hidden inputs) and any confirm link of a Google Drive warning page."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form" and self.action is None and a.get("action"):
            self.action = a["action"]
        elif tag == "input" and a.get("name") and a.get("type", "hidden") == "hidden":
            self.fields[a["name"]] = a.get("value") or ""
        elif tag == "a" and a.get("href") and "confirm=" in a["href"]:
            self.links.append(a["href"])


def google_drive_confirm_url(page: str, page_url: str, cookies: dict[str, str]) -> str | None:
    """The real download URL behind a Google Drive "can't scan for viruses" page, or None if it has none."""
    parser = _FormParser()
    parser.feed(page)
    if parser.action and parser.fields:
        return urljoin(page_url, parser.action) + "?" + urlencode(parser.fields)
    if parser.links:
        return urljoin(page_url, parser.links[0].replace("&amp;", "&"))
    token = next((v for k, v in cookies.items() if k.startswith("download_warning")), None)
    if token is None:
        match = re.search(r"confirm=([0-9A-Za-z_-]+)", page)
        token = match.group(1) if match else None
    if token:
        return page_url + ("&" if "?" in page_url else "?") + f"confirm={token}"
    return None


def _is_html(response: requests.Response) -> bool:
    return "text/html" in response.headers.get("Content-Type", "")


def _open(session: requests.Session, url: str, remote: RemoteFile, offset: int, confirm_step: bool = True) -> requests.Response:
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = session.get(url, stream=True, timeout=TIMEOUT_S, headers=headers, allow_redirects=True)
    except requests.RequestException as err:
        raise DownloadError(
            f"{remote.name}: cannot reach {url} ({err.__class__.__name__}: {err}). Check the network and rerun "
            f"(the download resumes), or put the file in the download folder yourself."
        ) from None
    if remote.google_drive and response.ok and _is_html(response):
        page = response.text
        confirm = google_drive_confirm_url(page, response.url, session.cookies.get_dict()) if confirm_step else None
        if confirm is None:
            raise DownloadError(
                f"{remote.name}: Google Drive answered {url} with a page that has no download link (quota exceeded, "
                "file removed or not shared). Download it in a browser into the download folder and rerun."
            )
        return _open(session, confirm, remote, offset, confirm_step=False)
    if response.ok and _is_html(response) and not remote.name.endswith((".html", ".htm")):
        response.close()
        raise DownloadError(
            f"{remote.name}: {url} answered with an HTML page instead of the file (a login, error or moved-file "
            "page). Check the URL in a browser; set datasets.<name>.downloads."
            f"{remote.name}.url to a working link, or put the file in the download folder yourself, and rerun."
        )
    return response


def fetch(remote: RemoteFile, folder: str | os.PathLike, *, progress: bool = True) -> Path:
    """Download `remote` into `folder` (resuming a ``.part`` file), verify it and rename it into place.

    A file already present under its final name is verified instead of downloaded. Returns its path.
    Concurrent calls for the same file (two jobs) are serialised by a lock file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / remote.name
    with _locked(folder / f".{remote.name}.lock"):
        if final.exists():
            try:
                verify(final, remote, folder)
            except DownloadError:
                final.unlink()
                raise
            return final
        part = folder / f"{remote.name}.part"
        _download(remote, part, progress)
        try:
            verify(part, remote, folder)
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, final)
    return final


def _download(remote: RemoteFile, part: Path, progress: bool) -> None:
    offset = part.stat().st_size if part.exists() else 0
    with requests.Session() as session:
        response = _open(session, remote.url, remote, offset)
        with response:
            if response.status_code == 416 and offset:  # the .part file is already complete
                return
            if response.status_code >= 400:
                raise DownloadError(
                    f"{remote.name}: {remote.url} answered HTTP {response.status_code} {response.reason}. The publisher "
                    f"may have moved the file: set datasets.<name>.downloads.{remote.name}.url to a mirror, or put the "
                    "file in the download folder yourself, and rerun."
                )
            if offset and response.status_code != 206:
                offset = 0  # the server ignored the Range request: start over
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None and "Content-Encoding" not in response.headers else None
            received = offset
            bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=remote.name, disable=not progress,
                       mininterval=5)
            try:
                with open(part, "ab" if offset else "wb") as out:
                    for block in response.iter_content(NETWORK_CHUNK_BYTES):
                        out.write(block)
                        received += len(block)
                        bar.update(len(block))
            except requests.RequestException as err:
                raise DownloadError(
                    f"{remote.name}: the download from {remote.url} broke off after {received} bytes ({err}). "
                    "Rerun: it resumes from there."
                ) from None
            finally:
                bar.close()
    if total is not None and received < total:
        raise DownloadError(
            f"{remote.name}: truncated download from {remote.url}: {received} of {total} bytes. Rerun: it resumes from there."
        )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------- unpacking


def unpack(archive: str | os.PathLike, remote: RemoteFile | None = None) -> Path:
    """Extract a .tar(.gz)/.tgz/.zip archive next to itself into ``unpacked_dir`` (atomically); return that folder.

    An existing complete folder (it holds the marker ``.unpacked``) is reused. Members that would land
    outside the folder (absolute paths, ``..``, links out of it) are refused (tarfile's ``data`` filter).
    """
    archive = Path(archive)
    remote = remote or RemoteFile(archive.name, "")
    dest = unpacked_dir(archive.parent, remote)
    if (dest / ".unpacked").exists():
        return dest
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                bad = z.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"member {bad} fails its CRC check")
                for member in z.namelist():
                    if Path(member).is_absolute() or ".." in Path(member).parts:
                        raise DownloadError(f"{archive}: member {member!r} would be written outside {dest}; refusing it")
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                t.extractall(tmp, filter="data")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, tarfile.FilterError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        archive.unlink(missing_ok=True)
        forget(archive.parent, archive.name)  # a checksum recorded at first use was that of the corrupt file
        raise DownloadError(
            f"{archive}: truncated or corrupt archive ({err.__class__.__name__}: {err}). It was removed; rerun "
            "to download it again."
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / ".unpacked").write_text(f"{archive.name} unpacked {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    shutil.rmtree(dest, ignore_errors=True)  # a folder without the marker is a leftover of an older layout
    os.replace(tmp, dest)
    return dest
