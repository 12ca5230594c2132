"""The download machinery against a local HTTP server on 127.0.0.1: checksums, resume, atomicity, Drive, unpacking."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zipfile

import numpy as np
import pytest
from raw_fixtures.server import serve

from dpmedgen.data import DATASETS
from dpmedgen.data.download import DownloadError, fetch, google_drive_confirm_url, unpack
from dpmedgen.data.schema import ImageSet
from dpmedgen.data.sources import DatasetError, DatasetSource, RemoteFile, build_dataset, resolve_remote_files

PAYLOAD = np.random.default_rng(0).bytes(300_000)
SHA = hashlib.sha256(PAYLOAD).hexdigest()
MD5 = hashlib.md5(PAYLOAD).hexdigest()


def leftovers(folder):
    """Files that are neither final downloads nor bookkeeping (partial files, temporary folders)."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part") or ".tmp" in p.name)


def test_fetch_verifies_a_published_sha256_and_md5(tmp_path):
    with serve({"a.bin": PAYLOAD, "b.bin": PAYLOAD}) as srv:
        a = fetch(RemoteFile("a.bin", srv.url("a.bin"), sha256=SHA), tmp_path, progress=False)
        b = fetch(RemoteFile("b.bin", srv.url("b.bin"), md5=MD5.upper()), tmp_path, progress=False)
    assert a.read_bytes() == PAYLOAD and b.read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == [] and not (tmp_path / "checksums.json").exists()  # published: nothing recorded


def test_checksum_mismatch_fails_naming_the_file_and_leaves_nothing(tmp_path):
    wrong = "0" * 64
    with serve({"a.bin": PAYLOAD}) as srv, pytest.raises(DownloadError) as err:
        fetch(RemoteFile("a.bin", srv.url("a.bin"), sha256=wrong), tmp_path, progress=False)
    message = str(err.value)
    assert "a.bin" in message and SHA in message and wrong in message and "Rerun" in message
    assert not (tmp_path / "a.bin").exists() and leftovers(tmp_path) == []


def test_unpublished_checksum_is_recorded_at_first_download_and_enforced_after(tmp_path):
    remote_name = "data.bin"
    with serve({remote_name: PAYLOAD}) as srv:
        remote = RemoteFile(remote_name, srv.url(remote_name))
        fetch(remote, tmp_path, progress=False)
        ledger = json.loads((tmp_path / "checksums.json").read_text())
        assert ledger[remote_name]["sha256"] == SHA and ledger[remote_name]["size"] == len(PAYLOAD)
        assert ledger[remote_name]["url"] == remote.url

        fetch(remote, tmp_path, progress=False)  # present: verified against the record, not downloaded again
        assert len(srv.requests) == 1

        (tmp_path / remote_name).unlink()
        srv.files[remote_name] = PAYLOAD[:-1] + b"X"  # the publisher's file changed
        with pytest.raises(DownloadError, match="recorded at first download"):
            fetch(remote, tmp_path, progress=False)
    assert not (tmp_path / remote_name).exists() and leftovers(tmp_path) == []


def test_a_tampered_file_in_place_is_refused(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"not the data")
    with pytest.raises(DownloadError, match="does not match the published sha256"):
        fetch(RemoteFile("a.bin", "http://127.0.0.1:9/a.bin", sha256=SHA), tmp_path, progress=False)


@pytest.mark.parametrize("server_honours_range", [True, False])
def test_an_interrupted_download_resumes(tmp_path, server_honours_range):
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD[:100_000])
    with serve({"a.bin": PAYLOAD}) as srv:
        if not server_honours_range:
            srv.behaviour["a.bin"] = "ignore_range"
        path = fetch(RemoteFile("a.bin", srv.url("a.bin"), sha256=SHA), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD and leftovers(tmp_path) == []
    assert srv.requests == [("/a.bin", "bytes=100000-")]


def test_a_complete_part_file_is_finished_without_downloading_again(tmp_path):
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD)
    with serve({"a.bin": PAYLOAD}) as srv:
        fetch(RemoteFile("a.bin", srv.url("a.bin"), sha256=SHA), tmp_path, progress=False)  # server answers 416
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD


def test_a_truncated_transfer_fails_keeps_the_part_and_resumes_on_rerun(tmp_path):
    remote_file = "a.bin"
    with serve({remote_file: PAYLOAD}) as srv:
        remote = RemoteFile(remote_file, srv.url(remote_file), sha256=SHA)
        srv.behaviour[remote_file] = "truncate"
        with pytest.raises(DownloadError, match=r"a\.bin.*(truncated|broke off).*resumes"):
            fetch(remote, tmp_path, progress=False)
        assert not (tmp_path / remote_file).exists()
        partial = (tmp_path / "a.bin.part").stat().st_size
        assert 0 < partial < len(PAYLOAD)
        del srv.behaviour[remote_file]
        fetch(remote, tmp_path, progress=False)
    assert (tmp_path / remote_file).read_bytes() == PAYLOAD
    assert srv.requests[-1] == ("/a.bin", f"bytes={partial}-")


def test_missing_file_on_the_server_names_it_and_the_override(tmp_path):
    with serve({}) as srv, pytest.raises(DownloadError) as err:
        fetch(RemoteFile("gone.tar.gz", srv.url("gone.tar.gz")), tmp_path, progress=False)
    assert "gone.tar.gz" in str(err.value) and "404" in str(err.value) and "downloads.gone.tar.gz.url" in str(err.value)
    assert list(tmp_path.glob("gone*")) == []


def test_unreachable_host_is_a_clear_error(tmp_path):
    with pytest.raises(DownloadError, match="cannot reach"):
        fetch(RemoteFile("a.bin", "http://127.0.0.1:9/a.bin"), tmp_path, progress=False)


@pytest.mark.parametrize("flow", ["gdrive", "gdrive_cookie"])
def test_google_drive_confirm_step(tmp_path, flow):
    with serve({"big.h5": PAYLOAD}) as srv:
        srv.behaviour["big.h5"] = flow
        remote = RemoteFile("big.h5", srv.url("big.h5") + "?export=download", sha256=SHA, google_drive=True)
        path = fetch(remote, tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert len(srv.requests) == 2  # the warning page, then the file


def test_an_html_page_instead_of_the_file_is_refused_and_nothing_is_recorded(tmp_path):
    with serve({"table.csv": b"x"}) as srv:
        srv.behaviour["table.csv"] = "gdrive"  # answers with an HTML page, but the URL is not a Drive link
        with pytest.raises(DownloadError, match="HTML page instead of the file"):
            fetch(RemoteFile("table.csv", srv.url("table.csv")), tmp_path, progress=False)
    assert not (tmp_path / "checksums.json").exists() and not (tmp_path / "table.csv").exists()


def test_a_second_drive_warning_page_fails_instead_of_being_saved(tmp_path):
    with serve({"big.h5": PAYLOAD}) as srv:
        srv.behaviour["big.h5"] = "gdrive_loop"
        remote = RemoteFile("big.h5", srv.url("big.h5") + "?export=download", google_drive=True)
        with pytest.raises(DownloadError, match="no download link"):
            fetch(remote, tmp_path, progress=False)
    assert not (tmp_path / "big.h5").exists() and not (tmp_path / "checksums.json").exists()


def test_google_drive_urls_are_recognised_and_a_page_without_link_fails():
    assert RemoteFile("x.h5", "https://drive.google.com/uc?export=download&id=abc").google_drive
    assert not RemoteFile("x.h5", "https://example.org/x.h5").google_drive
    assert google_drive_confirm_url("<html>Quota exceeded</html>", "https://drive.google.com/uc?id=a", {}) is None
    page = '<a href="/uc?export=download&amp;confirm=AbC_1&amp;id=a">Download anyway</a>'
    assert google_drive_confirm_url(page, "https://drive.google.com/uc?id=a", {}) == \
        "https://drive.google.com/uc?export=download&confirm=AbC_1&id=a"


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("name,make", [("set.tar.gz", _tar_gz), ("set.zip", _zip)])
def test_unpack_extracts_atomically_and_reuses_a_complete_folder(tmp_path, name, make):
    archive = tmp_path / name
    archive.write_bytes(make({"set/a.txt": b"A", "set/sub/b.txt": b"B"}))
    dest = unpack(archive)
    assert dest == tmp_path / "set" and (dest / "set" / "sub" / "b.txt").read_bytes() == b"B"
    (dest / "set" / "a.txt").write_bytes(b"kept")
    assert unpack(archive) == dest and (dest / "set" / "a.txt").read_bytes() == b"kept"  # not unpacked twice


@pytest.mark.parametrize("name,make", [("set.tar.gz", _tar_gz), ("set.zip", _zip)])
def test_a_truncated_archive_fails_naming_it_and_leaves_no_folder(tmp_path, name, make):
    data = make({f"set/{i}.bin": np.random.default_rng(i).bytes(20_000) for i in range(5)})
    archive = tmp_path / name
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(DownloadError) as err:
        unpack(archive)
    assert str(archive) in str(err.value) and "truncated or corrupt" in str(err.value) and "rerun" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # neither the corrupt archive nor a partial folder


def test_a_corrupt_archive_loses_its_first_use_checksum_so_a_good_download_is_accepted(tmp_path):
    good = _tar_gz({"set/a.txt": b"A" * 50_000})
    with serve({"set.tar.gz": good[: len(good) // 2]}) as srv:
        remote = RemoteFile("set.tar.gz", srv.url("set.tar.gz"), unpack=True)
        with pytest.raises(DownloadError, match="It was removed"):
            unpack(fetch(remote, tmp_path, progress=False), remote)
        assert "set.tar.gz" not in json.loads((tmp_path / "checksums.json").read_text())
        srv.files["set.tar.gz"] = good
        assert (unpack(fetch(remote, tmp_path, progress=False), remote) / "set" / "a.txt").read_bytes() == b"A" * 50_000


def test_members_outside_the_folder_are_refused(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    archive.write_bytes(_tar_gz({"../escape.txt": b"x"}))
    with pytest.raises(DownloadError):
        unpack(archive)
    assert not (tmp_path.parent / "escape.txt").exists() and list(tmp_path.iterdir()) == []


class _ToySource(DatasetSource):
    """A dataset of one archive holding .npy images, to test build_dataset end to end."""

    modalities = ("img",)

    def __init__(self, n: int = 4) -> None:
        self.n = n

    def remote_files(self):
        return [RemoteFile("toy.tar.gz", "https://example.invalid/toy.tar.gz", unpack=True)]

    def read(self, folder):
        stack = np.stack([np.load(folder / "toy" / f"{i}.npy") for i in range(self.n)])
        return ImageSet({"img": stack}, patient_id=[f"p{i}" for i in range(self.n)], slice=[0] * self.n,
                        label=[i % 2 for i in range(self.n)])


@pytest.fixture
def toy_dataset(monkeypatch):
    monkeypatch.setitem(DATASETS._items, "toy", _ToySource)
    members = {}
    for i in range(4):
        buffer = io.BytesIO()
        np.save(buffer, np.full((8, 8), i / 4, dtype=np.float32))
        members[f"{i}.npy"] = buffer.getvalue()
    return _tar_gz(members)


def test_build_dataset_downloads_unpacks_reads_and_records_provenance(tmp_path, toy_dataset):
    with serve({"toy.tar.gz": toy_dataset}) as srv:
        images = build_dataset("toy", {"n": 4}, tmp_path, {"toy.tar.gz": {"url": srv.url("toy.tar.gz")}}, progress=False)
    assert len(images) == 4 and images.modalities["img"][3].max() == pytest.approx(0.75)
    sha = hashlib.sha256(toy_dataset).hexdigest()
    assert images.provenance["files"]["toy.tar.gz"] == {"url": srv.url("toy.tar.gz"), "sha256": sha, "bytes": len(toy_dataset)}
    assert (tmp_path / "toy" / ".unpacked").exists() and leftovers(tmp_path) == []


def test_download_overrides_are_checked(toy_dataset):
    source = _ToySource()
    with pytest.raises(DatasetError, match="no file 'other.zip'"):
        resolve_remote_files(source, {"other.zip": {"url": "http://127.0.0.1/x"}})
    with pytest.raises(DatasetError, match="toy.tar.gz.size"):
        resolve_remote_files(source, {"toy.tar.gz": {"size": 3}})
    (mirror,) = resolve_remote_files(source, {"toy.tar.gz": {"sha256": "a" * 64}})
    assert mirror.sha256 == "a" * 64 and mirror.url == "https://example.invalid/toy.tar.gz"


# ------------------------------------------------------------------ transfers that cannot be trusted (issue #22)


@pytest.mark.parametrize("behaviour", ["no_length", "no_length_truncate"])
def test_a_body_of_unknown_length_is_never_recorded(tmp_path, behaviour):
    """Without Content-Length a transfer cut short looks complete: with no published checksum nothing is
    recorded (and nothing kept); with one, the checksum decides."""
    with serve({"a.bin": PAYLOAD}) as srv:
        srv.behaviour["a.bin"] = behaviour
        with pytest.raises(DownloadError, match=r"a\.bin: .* without a length .*Nothing was recorded.*sha256"):
            fetch(RemoteFile("a.bin", srv.url("a.bin")), tmp_path, progress=False)
        assert not (tmp_path / "checksums.json").exists() and not (tmp_path / "a.bin").exists()
        assert leftovers(tmp_path) == []
        if behaviour == "no_length":
            assert fetch(RemoteFile("a.bin", srv.url("a.bin"), sha256=SHA), tmp_path, progress=False).read_bytes() == PAYLOAD
        else:
            with pytest.raises(DownloadError, match="does not match the published sha256"):
                fetch(RemoteFile("a.bin", srv.url("a.bin"), sha256=SHA), tmp_path, progress=False)


def test_a_chunked_body_establishes_its_own_end_and_is_recorded(tmp_path):
    with serve({"a.bin": PAYLOAD}) as srv:
        srv.behaviour["a.bin"] = "chunked"
        fetch(RemoteFile("a.bin", srv.url("a.bin")), tmp_path, progress=False)
    assert json.loads((tmp_path / "checksums.json").read_text())["a.bin"]["sha256"] == SHA


@pytest.mark.parametrize("stale", ["longer", "spliced"])
def test_a_part_file_without_a_checksum_is_never_resumed(tmp_path, stale):
    """A stale .part larger than the file, or one left by an older version of a changed file, would be
    completed (or taken as complete) and recorded as the trusted checksum: it is discarded instead."""
    old = np.random.default_rng(1).bytes(len(PAYLOAD))
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD + b"extra" if stale == "longer" else old[:100_000])
    with serve({"a.bin": PAYLOAD}) as srv:
        path = fetch(RemoteFile("a.bin", srv.url("a.bin")), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD and srv.requests == [("/a.bin", None)]  # from zero, no Range
    assert json.loads((tmp_path / "checksums.json").read_text())["a.bin"]["sha256"] == SHA


def test_a_stale_part_larger_than_a_checked_file_starts_over(tmp_path):
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD + b"extra")
    with serve({"a.bin": PAYLOAD}) as srv:
        path = fetch(RemoteFile("a.bin", srv.url("a.bin"), sha256=SHA), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD and srv.requests == [("/a.bin", f"bytes={len(PAYLOAD) + 5}-"), ("/a.bin", None)]


@pytest.mark.parametrize("body", [b"<!DOCTYPE html><html><body>Sign in</body></html>",
                                  b"\n  <html><head><title>404</title></head></html>",
                                  b"<!-- error --><html>Quota exceeded</html>"])
def test_an_html_body_is_refused_whatever_its_content_type(tmp_path, body):
    with serve({"a.zip": body}) as srv:  # served as application/octet-stream
        with pytest.raises(DownloadError, match=r"a\.zip: .*HTML page instead of the file"):
            fetch(RemoteFile("a.zip", srv.url("a.zip")), tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == []  # nothing kept or recorded


def test_a_trickling_server_meets_the_overall_deadline(tmp_path, monkeypatch):
    import time

    with serve({"a.bin": PAYLOAD[:10_000]}) as srv:
        srv.behaviour["a.bin"] = "trickle"  # one byte every 20 ms: 200 s for the file, each read well within timeout
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"a\.bin: .* did not finish within its deadline .*DPMEDGEN_DOWNLOAD_DEADLINE_S"):
            fetch(RemoteFile("a.bin", srv.url("a.bin"), sha256=SHA), tmp_path, progress=False, deadline_s=1.0)
        assert time.monotonic() - start < 10
        monkeypatch.setenv("DPMEDGEN_DOWNLOAD_DEADLINE_S", "0.5")  # the same limit from the environment
        with pytest.raises(DownloadError, match="deadline"):
            fetch(RemoteFile("a.bin", srv.url("a.bin"), sha256=SHA), tmp_path, progress=False)
        monkeypatch.setenv("DPMEDGEN_DOWNLOAD_DEADLINE_S", "soon")
        with pytest.raises(DownloadError, match="DPMEDGEN_DOWNLOAD_DEADLINE_S='soon'"):
            fetch(RemoteFile("a.bin", srv.url("a.bin"), sha256=SHA), tmp_path, progress=False)


@pytest.mark.parametrize("ledger", ['{"a.bin": {"size": 3}}', '{"a.bin": {"sha256": "xyz"}}', '{"a.bin": "abc"}', "[1, 2]"])
def test_a_malformed_checksum_ledger_is_a_clear_error_naming_it(tmp_path, ledger):
    (tmp_path / "checksums.json").write_text(ledger)
    with serve({"a.bin": PAYLOAD}) as srv, pytest.raises(DownloadError) as err:
        fetch(RemoteFile("a.bin", srv.url("a.bin")), tmp_path, progress=False)
    assert str(tmp_path / "checksums.json") in str(err.value) and ("sha256" in str(err.value) or "object" in str(err.value))
    assert not (tmp_path / "a.bin").exists()


def test_a_full_disk_while_unpacking_keeps_the_verified_archive_and_its_checksum(tmp_path, monkeypatch):
    import errno

    good = _tar_gz({"set/a.txt": b"A" * 50_000})
    with serve({"set.tar.gz": good}) as srv:
        remote = RemoteFile("set.tar.gz", srv.url("set.tar.gz"), unpack=True)
        archive = fetch(remote, tmp_path, progress=False)

        def full(self, tarinfo, targetpath):
            raise OSError(errno.ENOSPC, "No space left on device", targetpath)

        with monkeypatch.context() as patch:
            patch.setattr(tarfile.TarFile, "makefile", full)
            with pytest.raises(DownloadError, match=r"set\.tar\.gz: unpacking failed for a reason of this machine.*kept"):
                unpack(archive, remote)
        assert archive.read_bytes() == good and "set.tar.gz" in json.loads((tmp_path / "checksums.json").read_text())
        assert leftovers(tmp_path) == [] and not (tmp_path / "set").exists()
        assert (unpack(fetch(remote, tmp_path, progress=False), remote) / "set" / "a.txt").read_bytes() == b"A" * 50_000
        assert len(srv.requests) == 1  # the kept archive was reused, not downloaded again


@pytest.mark.parametrize("name,make", [("bomb.tar.gz", _tar_gz), ("bomb.zip", _zip)])
def test_unpacking_is_capped_against_decompression_bombs(tmp_path, monkeypatch, name, make):
    archive = tmp_path / name
    archive.write_bytes(make({"bomb/zeros.bin": bytes(20_000_000)}))  # ~20 kB that unpack to 20 MB
    with pytest.raises(DownloadError, match=rf"{re.escape(name)}: would unpack to more than 1,000,000 bytes"):
        unpack(archive, max_bytes=1_000_000)
    assert archive.exists() and leftovers(tmp_path) == [] and not (tmp_path / "bomb").exists()
    monkeypatch.setenv("DPMEDGEN_MAX_UNPACKED_BYTES", "1e6")
    with pytest.raises(DownloadError, match="would unpack to more than"):
        unpack(archive)
    monkeypatch.delenv("DPMEDGEN_MAX_UNPACKED_BYTES")
    assert (unpack(archive) / "bomb" / "zeros.bin").stat().st_size == 20_000_000  # under the default caps
