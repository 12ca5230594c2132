"""Outputs the pipeline reads back fail on load, naming the file, when truncated or corrupt (issue #22):
checkpoints and features (`torch.save` zip files, whose CRC-32s torch itself does not check), privacy
ledgers (JSON) and image sets (HDF5)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from dpmedgen.data.schema import ImageSet, SchemaError, read_image_set, write_image_set
from dpmedgen.io import CorruptFileError, load_torch, read_json, verify_zip, write_atomic
from dpmedgen.privacy import PRIVACY_MODES, read_ledger, write_ledger

ROOT = Path(__file__).resolve().parents[1]


def _scribble(path: Path, seed: int = 0, n: int = 64) -> None:
    """`n` random bytes written over the middle of the file (a bad sector, a bad copy)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + n] = np.random.default_rng(seed).bytes(n)
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def checkpoint(tmp_path) -> tuple[Path, dict]:
    """A checkpoint-like state: a discriminator's weights (most of the file) and some metadata."""
    state = {"state_dict": {"disc.weight": torch.randn(64, 32, 4, 4), "disc.bias": torch.zeros(64)},
             "run": {"model": "dcgan", "seed": 0}, "format": 3}
    path = tmp_path / "checkpoint.pt"
    write_atomic(path, lambda tmp: torch.save(state, tmp))
    return path, state


def test_an_intact_checkpoint_loads(checkpoint):
    path, state = checkpoint
    loaded = load_torch(path)
    assert torch.equal(loaded["state_dict"]["disc.weight"], state["state_dict"]["disc.weight"]) and loaded["run"] == state["run"]


@pytest.mark.parametrize("seed", range(5))
def test_random_bytes_in_a_checkpoint_are_detected_naming_it(checkpoint, seed):
    path, _ = checkpoint
    _scribble(path, seed)
    with pytest.raises(CorruptFileError, match=rf"^{re.escape(str(path))}: .*(CRC-32|zip).*delete it and rerun"):
        load_torch(path)


@pytest.mark.parametrize("name", ["checkpoint.pt", "real_features.pt"])
def test_a_truncated_torch_file_fails_naming_it(tmp_path, name):
    path = tmp_path / name
    torch.save({"features": torch.randn(200, 64), "patient_id": ["p1"] * 200}, path)
    _truncate(path)
    with pytest.raises(CorruptFileError, match=rf"^{re.escape(str(path))}: "):
        load_torch(path)
    path.write_bytes(b"")
    with pytest.raises(CorruptFileError, match=re.escape(str(path))):
        verify_zip(path)
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "absent.pt"))):
        load_torch(tmp_path / "absent.pt")


def _ledger(tmp_path: Path) -> Path:
    path = tmp_path / "privacy.json"
    write_ledger(path, PRIVACY_MODES.get("none")(target_epsilon=math.inf, delta=1e-5).full_ledger())
    return path


def test_a_truncated_or_garbled_ledger_fails_naming_it(tmp_path):
    path = _ledger(tmp_path)
    assert read_ledger(path)["mechanism"] == "none"
    _truncate(path)
    with pytest.raises(CorruptFileError, match=rf"^{re.escape(str(path))}: not valid JSON"):
        read_ledger(path)
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(CorruptFileError, match=re.escape(str(path))):
        read_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}: a ledger is a JSON object"):
        read_ledger(path)


def _samples(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 64
    images = ImageSet({"mri": rng.random((n, 32, 32), dtype=np.float32)}, patient_id=[""] * n, slice=[-1] * n,
                      label=rng.integers(0, 2, n), dataset="brain_phantom")
    path = tmp_path / "samples.h5"
    write_image_set(path, images)
    return path


def test_a_truncated_or_corrupt_sample_file_fails_naming_it(tmp_path):
    path = _samples(tmp_path)
    good = path.read_bytes()
    assert len(read_image_set(path)) == 64
    _truncate(path)
    with pytest.raises(SchemaError, match=rf"^{re.escape(str(path))}: "):
        read_image_set(path)
    for seed in range(3):  # the images are deflate-compressed: zlib's Adler-32 catches changed bytes
        path.write_bytes(good)
        _scribble(path, seed)
        with pytest.raises(SchemaError, match=rf"^{re.escape(str(path))}: "):
            read_image_set(path)


def test_the_real_features_cache_is_loaded_through_the_verified_loader():
    """evaluate.py reads real_features.pt with load_torch (CRC-checked), not with a bare torch.load."""
    source = (ROOT / "src" / "dpmedgen" / "evaluate.py").read_text()
    assert "load_torch(real_features_file)" in source and "torch.load(" not in source


def test_the_generate_stage_refuses_a_scribbled_checkpoint_naming_it(checkpoint, tmp_path):
    """generate_samples (and evaluate_run) verify the checkpoint's CRC-32s before train.run.load_model reads it."""
    from dpmedgen.generate import generate_samples

    path, _ = checkpoint
    _scribble(path)
    out = tmp_path / "samples.h5"
    with pytest.raises(CorruptFileError, match=rf"^{re.escape(str(path))}: .*CRC-32"):
        generate_samples(path, out, n_samples=8, seed=0)
    assert not out.exists()
    source = (ROOT / "src" / "dpmedgen" / "evaluate.py").read_text()
    assert "verify_zip(checkpoint)" in source.split("load_model(checkpoint)")[0]
