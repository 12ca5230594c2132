"""A full disk while writing an output: the error names the file, and nothing half-written is left behind."""

from __future__ import annotations

import gc
import os
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from dpmedgen.io import write_atomic, write_parquet


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (skipped where it cannot be mounted: needs root, as CI runs)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (not root?)")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], check=False)  # lazy: detached even if a handle is still open


def _big_frame() -> pd.DataFrame:
    return pd.DataFrame(np.random.default_rng(0).random((300_000, 2)), columns=["a", "b"])  # ~4.8 MB


@pytest.mark.parametrize("writer", ["parquet", "checkpoint"])
def test_a_full_disk_fails_naming_the_file_and_leaves_nothing(small_disk, writer):
    target = small_disk / "results" / ("metrics.parquet" if writer == "parquet" else "checkpoint.pt")
    with pytest.raises(Exception) as err:
        if writer == "parquet":
            write_parquet(_big_frame(), target)
        else:
            write_atomic(target, lambda tmp: torch.save({"w": torch.rand(1_000_000)}, tmp))
    assert any(str(target) in note for note in getattr(err.value, "__notes__", [])), err.value
    assert not target.exists() and list(target.parent.iterdir()) == []  # no partial output, no temporary file
    del err  # its traceback holds torch's open writer, whose unlinked temporary file keeps its space until closed
    gc.collect()
    write_parquet(pd.DataFrame({"a": [1.0]}), target.with_suffix(".small.parquet"))  # the space was given back
    assert pd.read_parquet(target.with_suffix(".small.parquet")).a.tolist() == [1.0]
