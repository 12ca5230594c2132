"""Per-rule log files: everything a job prints (progress bars, warnings, tracebacks) goes to its `log:`."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def setup_rule_log(path: str | os.PathLike) -> None:
    """Send stdout, stderr, `logging` and warnings of this process to `path` (line-buffered)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "w", buffering=1)
    sys.stdout = sys.stderr = stream
    logging.basicConfig(stream=stream, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    logging.captureWarnings(True)
