"""Atomic file writes: a reader (or a rerun after a crash) sees the old file or the new one, never a part.

`write_atomic(path, write)` calls `write(tmp)` on a uniquely named temporary file in the target's own folder
(so the final rename stays on one file system; the name ends in the target's suffix, for writers that infer
the format from it), flushes it to disk, gives it the usual permissions (mkstemp makes 0600 files), renames it
over `path`, and removes the temporary file if anything fails. Every file writer of the pipeline goes through it;
only downloads rename a verified `.part` and an unpacked folder themselves (`dpmedgen.data.download`).

Files read back are verified: `load_torch` checks a `torch.save` file's CRC-32s before loading it (torch does
not), `read_json` names the file of a truncated document; both raise CorruptFileError naming the file.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> write_atomic(folder / "a.txt", lambda tmp: tmp.write_text("done"))
>>> (folder / "a.txt").read_text(), sorted(p.name for p in folder.iterdir())
('done', ['a.txt'])
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, Exception):  # e.g. a full disk: the writer's own error may name only the temporary file
            err.add_note(f"dpmedgen: writing {path} failed; nothing was written there")
        raise


def write_parquet(frame, path: str | os.PathLike) -> None:
    """`frame.to_parquet(path, index=False)`, atomically."""
    write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_text(text: str, path: str | os.PathLike) -> None:
    """`path.write_text(text)`, atomically."""
    write_atomic(path, lambda tmp: tmp.write_text(text))


# ------------------------------------------------------------------------------------------- verified reads


class CorruptFileError(ValueError):
    """A file the pipeline wrote and reads back is truncated or corrupt; the message names the file and says
    what to do (delete it and rerun: Snakemake then rebuilds it)."""


def _corrupt(path: Path, what: str) -> CorruptFileError:
    return CorruptFileError(f"{path}: {what}. The file is truncated or corrupt (a crash, a full disk or a bad "
                            "copy); delete it and rerun to rebuild it.")


def verify_zip(path: str | os.PathLike) -> None:
    """Check every member of a zip file (e.g. a `torch.save` file) against its CRC-32.

    `torch.load` reads a checkpoint's records without checking their CRCs, so bytes changed in the middle
    of a tensor load silently; this reads the whole file once (about a second per GB) and fails naming it.
    """
    import zipfile
    import zlib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError, ValueError) as err:
        raise _corrupt(path, f"not a complete zip / torch file ({err.__class__.__name__}: {err})") from None
    if bad is not None:
        raise _corrupt(path, f"record {bad!r} fails its CRC-32 check")


def load_torch(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)` of a file written by `torch.save`, after `verify_zip`; any
    failure to read it is a CorruptFileError naming the file."""
    import pickle

    import torch

    path = Path(path)
    verify_zip(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, KeyError, OSError) as err:
        raise _corrupt(path, f"torch.load failed ({err.__class__.__name__}: {err})") from None


def read_json(path: str | os.PathLike) -> Any:
    """The JSON document in `path`; a truncated or garbled file is a CorruptFileError naming it."""
    import json

    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    except (UnicodeDecodeError, ValueError) as err:
        raise _corrupt(path, f"not valid JSON ({err})") from None
