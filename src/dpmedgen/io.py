"""Atomic file writes: a reader (or a rerun after a crash) sees the old file or the new one, never a part.

`write_atomic(path, write)` calls `write(tmp)` on a uniquely named temporary file in the target's own folder
(so the final rename stays on one file system; the name ends in the target's suffix, for writers that infer
the format from it), flushes it to disk, gives it the usual permissions (mkstemp makes 0600 files), renames it
over `path`, and removes the temporary file if anything fails. Every file writer of the pipeline goes through it;
only downloads rename a verified `.part` and an unpacked folder themselves (`dpmedgen.data.download`).

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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_parquet(frame, path: str | os.PathLike) -> None:
    """`frame.to_parquet(path, index=False)`, atomically."""
    write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_text(text: str, path: str | os.PathLike) -> None:
    """`path.write_text(text)`, atomically."""
    write_atomic(path, lambda tmp: tmp.write_text(text))
