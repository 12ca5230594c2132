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
  both digests, the URL and what to do. Only a transfer whose completeness is established is recorded:
  without a checksum a ``.part`` file is never resumed (a stale or spliced one would be recorded) but
  started over, and a body of unknown length (no ``Content-Length``, not chunked) is refused, as a
  transfer cut short could not be told from a complete one. A body that looks like an HTML page is refused whatever its
  ``Content-Type``; every file has an overall deadline (``DPMEDGEN_DOWNLOAD_DEADLINE_S``, default 6 h)
  besides the per-read timeout.
- **Atomic.** Only a complete, verified file is renamed to its final name; an archive is unpacked into
  a temporary folder renamed into place when complete. An interrupted run leaves only ``.part`` files
  and ``.tmp`` folders, which a rerun resumes or removes. Unpacking is capped
  (``DPMEDGEN_MAX_UNPACKED_BYTES``, default 512 GiB, and ``DPMEDGEN_MAX_UNPACK_RATIO``, default 200 times
  the archive for anything above 64 MiB) against decompression bombs; a full disk while unpacking keeps the verified archive and
  its checksum (only a corrupt archive is removed).
- **Google Drive.** Large Drive files answer first with an HTML "can't scan this file for viruses"
  page; its form (or, on the older page, the ``confirm=`` link / ``download_warning`` cookie) gives the
  real download URL, which is requested next.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tarfile
import time
import zipfile
import zlib
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator
from urllib.parse import urlencode, urljoin

import requests
import urllib3
from tqdm.auto import tqdm

from dpmedgen.data.sources.base import DatasetError, RemoteFile, unpacked_dir
from dpmedgen.io import write_text

CHUNK_BYTES = 1 << 20
NETWORK_CHUNK_BYTES = 1 << 16  # small reads: an interrupted transfer keeps all but the last one
LEDGER = "checksums.json"
TIMEOUT_S = 60  #: per connect / read: a server silent this long is given up
DEADLINE_S = 6 * 3600.0  #: per file, all transfers together (env DPMEDGEN_DOWNLOAD_DEADLINE_S)
MAX_UNPACKED_BYTES = 512 * 2**30  #: per archive (env DPMEDGEN_MAX_UNPACKED_BYTES)
MAX_UNPACK_RATIO = 200.0  #: unpacked bytes per archive byte (env DPMEDGEN_MAX_UNPACK_RATIO) ...
RATIO_FLOOR_BYTES = 64 * 2**20  #: ... for archives that unpack to more than this
MAX_MEMBERS = 5_000_000  #: files per archive
#: OSError numbers that are the machine's fault, not the archive's: the archive is kept.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EMFILE, errno.ENFILE}

log = logging.getLogger(__name__)


def _setting(name: str, default: float) -> float:
    """A limit from the environment (`DPMEDGEN_<name>`), else its default; a bad value is an error naming it."""
    raw = os.environ.get(f"DPMEDGEN_{name}")
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value != value or value == float("inf"):
        raise DownloadError(f"environment variable DPMEDGEN_{name}={raw!r}: give a positive finite number")
    return value


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
        ledger = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DownloadError(f"{path}: not valid JSON ({err}); fix or delete it (its recorded checksums are then lost)") from None
    if not isinstance(ledger, dict):
        raise DownloadError(f"{path}: expected a JSON object file name -> entry, found {type(ledger).__name__}; fix or "
                            "delete it (its recorded checksums are then lost)")
    for name, entry in ledger.items():
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise DownloadError(
                f"{path}: the entry of {name!r} has no valid sha256 (64 lowercase hex digits; found {entry!r}). Fix "
                f"the entry, or delete it to record the file's checksum again at its next download")
    return ledger


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
        return "sha256", entry["sha256"], f"recorded at first download on {entry.get('recorded', '?')} in {folder / LEDGER}"
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
        raise _html_error(remote, url)
    return response


def _html_error(remote: RemoteFile, url: str) -> DownloadError:
    return DownloadError(
        f"{remote.name}: {url} answered with an HTML page instead of the file (a login, error or moved-file "
        "page). Check the URL in a browser; set datasets.<name>.downloads."
        f"{remote.name}.url to a working link, or put the file in the download folder yourself, and rerun."
    )


def fetch(remote: RemoteFile, folder: str | os.PathLike, *, progress: bool = True, deadline_s: float | None = None) -> Path:
    """Download `remote` into `folder` (resuming a ``.part`` file), verify it and rename it into place.

    A file already present under its final name is verified instead of downloaded. Returns its path.
    Concurrent calls for the same file (two jobs) are serialised by a lock file. `deadline_s` (default
    ``DPMEDGEN_DOWNLOAD_DEADLINE_S`` or DEADLINE_S) bounds the whole download of the file.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / remote.name
    deadline = time.monotonic() + (deadline_s if deadline_s is not None else _setting("DOWNLOAD_DEADLINE_S", DEADLINE_S))
    with _locked(folder / f".{remote.name}.lock"):
        if final.exists():
            try:
                verify(final, remote, folder)
            except DownloadError:
                final.unlink()
                raise
            return final
        part = folder / f"{remote.name}.part"
        checked = expected_digest(folder, remote) is not None
        if not checked and part.exists():
            # Nothing to verify a resumed file against: a stale or spliced .part would be recorded as the truth.
            log.info("%s: discarding %s (no checksum to verify a resumed download against): starting over", remote.name, part)
            part.unlink()
        complete = _download(remote, part, progress, deadline, resume=checked)
        if not checked and not complete:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{remote.name}: {remote.url} sent the file without a length (no Content-Length, not chunked), so a "
                "transfer cut short cannot be told from a complete one, and no checksum is published to check it. "
                f"Nothing was recorded. Set datasets.<name>.downloads.{remote.name}.sha256 to the publisher's checksum "
                "(or put the verified file in the download folder yourself) and rerun."
            )
        try:
            verify(part, remote, folder)
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, final)
    return final


def _looks_like_html(block: bytes) -> bool:
    head = block[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or (
        head.startswith((b"<!--", b"<?xml")) and b"<html" in head
    )


def _content_range(response: requests.Response) -> tuple[int | None, int | None]:
    """(first byte, total size) of a Content-Range header (`bytes 10-99/100`, `bytes */100`); None when absent."""
    match = re.fullmatch(r"bytes (?:(\d+)-\d+|\*)/(\d+|\*)", response.headers.get("Content-Range", "").strip())
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _download(remote: RemoteFile, part: Path, progress: bool, deadline: float, resume: bool = True) -> bool:
    """Fetch `remote` into `part`, resuming it when `resume`; returns whether the transfer is known to be
    complete (its length was announced and met, or it was chunked, or an already complete .part was confirmed)."""
    if not resume:
        part.unlink(missing_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    with requests.Session() as session:
        response = _open(session, remote.url, remote, offset)
        with response:
            if response.status_code == 416 and offset:
                start, total = _content_range(response)
                if total == offset:  # the .part file is already complete
                    return True
                log.info("%s: %s (%d bytes) does not match the server's file (%s bytes): starting over",
                         remote.name, part, offset, total)
                part.unlink()
                response.close()
                return _download(remote, part, progress, deadline, resume=False)
            if response.status_code >= 400:
                raise DownloadError(
                    f"{remote.name}: {remote.url} answered HTTP {response.status_code} {response.reason}. The publisher "
                    f"may have moved the file: set datasets.<name>.downloads.{remote.name}.url to a mirror, or put the "
                    "file in the download folder yourself, and rerun."
                )
            if offset and response.status_code == 206 and _content_range(response)[0] != offset:
                part.unlink()
                raise DownloadError(f"{remote.name}: {remote.url} answered a request for the bytes from {offset} with "
                                    f"Content-Range {response.headers.get('Content-Range')!r}; the .part was removed, rerun")
            if offset and response.status_code != 206:
                offset = 0  # the server ignored the Range request: start over
            length = response.headers.get("Content-Length")
            encoded = "Content-Encoding" in response.headers
            chunked = "chunked" in response.headers.get("Transfer-Encoding", "").lower()
            total = offset + int(length) if length is not None and not encoded else None
            received = offset
            bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=remote.name, disable=not progress,
                       mininterval=5)
            try:
                with open(part, "ab" if offset else "wb") as out:
                    first = offset == 0
                    while True:
                        if time.monotonic() > deadline:
                            raise DownloadError(
                                f"{remote.name}: the download from {remote.url} did not finish within its deadline "
                                f"({received} bytes received). Rerun to resume it, or raise DPMEDGEN_DOWNLOAD_DEADLINE_S "
                                "(seconds per file) for a slow server."
                            )
                        block = response.raw.read1(NETWORK_CHUNK_BYTES, decode_content=True)
                        if not block:
                            break
                        if first and _looks_like_html(block) and not remote.name.endswith((".html", ".htm")):
                            raise _html_error(remote, remote.url)
                        first = False
                        out.write(block)
                        received += len(block)
                        bar.update(len(block))
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
                raise DownloadError(
                    f"{remote.name}: the download from {remote.url} broke off after {received} bytes ({err}). "
                    "Rerun: it resumes from there."
                ) from None
            except DownloadError:
                if received == offset:  # nothing of this transfer is worth keeping (an HTML page, a deadline at once)
                    if offset == 0:
                        part.unlink(missing_ok=True)
                raise
            finally:
                bar.close()
    if total is not None and received < total:
        raise DownloadError(
            f"{remote.name}: truncated download from {remote.url}: {received} of {total} bytes. Rerun: it resumes from there."
        )
    if total is not None and received > total:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{remote.name}: {remote.url} sent {received} bytes, more than the {total} it announced; "
                            "the .part was removed, rerun")
    return length is not None or chunked


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------------------------- unpacking


def unpack(
    archive: str | os.PathLike,
    remote: RemoteFile | None = None,
    *,
    max_bytes: int | None = None,
    max_ratio: float | None = None,
) -> Path:
    """Extract a .tar(.gz)/.tgz/.zip archive next to itself into ``unpacked_dir`` (atomically); return that folder.

    An existing complete folder (it holds the marker ``.unpacked``) is reused. Members that would land
    outside the folder (absolute paths, ``..``, links out of it) are refused (tarfile's ``data`` filter).
    The unpacked size is capped at `max_bytes` (default ``DPMEDGEN_MAX_UNPACKED_BYTES`` or
    MAX_UNPACKED_BYTES) and at `max_ratio` times the archive's size (``DPMEDGEN_MAX_UNPACK_RATIO``), and must
    fit the free disk space. A corrupt archive is removed with its first-use checksum; a full disk (or another
    fault of the machine) keeps both and fails naming the archive.
    """
    archive = Path(archive)
    remote = remote or RemoteFile(archive.name, "")
    dest = unpacked_dir(archive.parent, remote)
    if (dest / ".unpacked").exists():
        return dest
    limit = int(max_bytes if max_bytes is not None else _setting("MAX_UNPACKED_BYTES", MAX_UNPACKED_BYTES))
    ratio = float(max_ratio if max_ratio is not None else _setting("MAX_UNPACK_RATIO", MAX_UNPACK_RATIO))
    limit = min(limit, max(int(ratio * archive.stat().st_size), RATIO_FLOOR_BYTES))
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as z:
                infos = z.infolist()
                _check_unpacked_size(archive, tmp, sum(i.file_size for i in infos), len(infos), limit, ratio)
                bad = z.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"member {bad} fails its CRC check")
                for member in z.namelist():
                    if Path(member).is_absolute() or ".." in Path(member).parts:
                        raise DownloadError(f"{archive}: member {member!r} would be written outside {dest}; refusing it")
                z.extractall(tmp)
        else:
            with tarfile.open(archive) as t:
                t.extractall(tmp, members=_capped_members(t, archive, tmp, limit, ratio), filter="data")
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if err.errno in _ENVIRONMENT_ERRNOS:
            raise DownloadError(
                f"{archive}: unpacking failed for a reason of this machine, not of the archive ({err}); the verified "
                f"archive and its checksum are kept. Free disk space (or fix the permissions) in {archive.parent} "
                "and rerun."
            ) from err
        _discard_corrupt(archive, err)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, tarfile.FilterError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        _discard_corrupt(archive, err)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    (tmp / ".unpacked").write_text(f"{archive.name} unpacked {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    shutil.rmtree(dest, ignore_errors=True)  # a folder without the marker is a leftover of an older layout
    os.replace(tmp, dest)
    return dest


def _discard_corrupt(archive: Path, err: BaseException) -> None:
    archive.unlink(missing_ok=True)
    forget(archive.parent, archive.name)  # a checksum recorded at first use was that of the corrupt file
    raise DownloadError(
        f"{archive}: truncated or corrupt archive ({err.__class__.__name__}: {err}). It was removed; rerun "
        "to download it again."
    ) from None


def _check_unpacked_size(archive: Path, tmp: Path, size: int, members: int, limit: int, ratio: float) -> None:
    """Refuse an archive whose members add up to more than `limit` bytes (or MAX_MEMBERS files), or more than
    the free space; the archive is kept (it may be fine, the limit is a guard against decompression bombs)."""
    if members > MAX_MEMBERS or size > limit:
        raise DownloadError(
            f"{archive}: would unpack to more than {limit:,} bytes ({members:,} members so far, {size:,} bytes), the cap "
            f"of min(DPMEDGEN_MAX_UNPACKED_BYTES, DPMEDGEN_MAX_UNPACK_RATIO = {ratio:g} x the archive's "
            f"{archive.stat().st_size:,} bytes, at least {RATIO_FLOOR_BYTES:,}), or more than {MAX_MEMBERS:,} files: a decompression bomb or a wrong "
            "file. Nothing was unpacked; raise the limits if the archive is genuine."
        )
    free = shutil.disk_usage(tmp).free
    if size > free:
        raise OSError(errno.ENOSPC, f"{size:,} bytes to unpack, {free:,} bytes free", str(tmp))


def _capped_members(t: tarfile.TarFile, archive: Path, tmp: Path, limit: int, ratio: float):
    """The members of `t`, read as the extraction goes (one pass over a compressed stream), stopping with a
    DownloadError once their sizes exceed `limit`."""
    size = members = 0
    free = shutil.disk_usage(tmp).free
    for member in t:
        size += member.size
        members += 1
        if members > MAX_MEMBERS or size > limit:
            _check_unpacked_size(archive, tmp, size, members, limit, ratio)
        if size > free:
            raise OSError(errno.ENOSPC, f"{size:,} bytes to unpack, {free:,} bytes free", str(tmp))
        yield member
