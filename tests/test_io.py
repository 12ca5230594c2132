"""The one atomic writer: old or new file, never a part, and no temporary file left behind."""

from __future__ import annotations

import os
import stat

import pytest

from dpmedgen.io import write_atomic, write_text


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "ledger.json"
    write_text("old", target)

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_then_fail)
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


def test_temporary_names_are_unique_in_the_targets_folder_and_permissions_usual(tmp_path):
    seen = []
    write_atomic(tmp_path / "sub" / "a.parquet", lambda tmp: (seen.append(tmp), tmp.write_text("x")))
    write_atomic(tmp_path / "sub" / "a.parquet", lambda tmp: (seen.append(tmp), tmp.write_text("y")))
    assert seen[0] != seen[1] and all(p.parent == tmp_path / "sub" and p.suffix == ".parquet" for p in seen)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "sub" / "a.parquet").stat().st_mode) == 0o666 & ~mask
