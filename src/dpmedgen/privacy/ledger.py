"""The privacy ledger (`privacy.json`) written next to every checkpoint.

Required keys for every mode: mechanism, guarantee ("formal" or "none"), unit ("image" or "patient"),
epsilon (a sound upper bound for `unit` at `delta`; Infinity when there is no guarantee), delta.
DP-SGD adds noise_multiplier, sample_rate, steps, max_grad_norm and accountant, enough for an independent
accountant to recompute epsilon. The run's identity (dataset, model, privacy, seed) is added by the trainer.
JSON has no infinity; like Python's json module we write the literal `Infinity`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

REQUIRED = ("mechanism", "guarantee", "unit", "epsilon", "delta")
REQUIRED_BY_MECHANISM = {"dpsgd": ("noise_multiplier", "sample_rate", "steps", "max_grad_norm", "accountant")}


class LedgerError(ValueError):
    """A privacy ledger is incomplete or inconsistent."""


def validate_ledger(ledger: dict[str, Any], source: str = "ledger") -> None:
    missing = [k for k in REQUIRED + REQUIRED_BY_MECHANISM.get(ledger.get("mechanism", ""), ()) if k not in ledger]
    if missing:
        raise LedgerError(f"{source}: missing keys {missing}")
    if ledger["guarantee"] not in ("formal", "none"):
        raise LedgerError(f"{source}: guarantee must be 'formal' or 'none', got {ledger['guarantee']!r}")
    if ledger["unit"] not in ("image", "patient"):
        raise LedgerError(f"{source}: unit must be 'image' or 'patient', got {ledger['unit']!r}")
    eps = float(ledger["epsilon"])
    if ledger["guarantee"] == "formal" and not (math.isfinite(eps) and eps >= 0 and 0 <= ledger["delta"] < 1):
        raise LedgerError(f"{source}: a formal guarantee needs finite epsilon >= 0 and 0 <= delta < 1")
    if ledger["guarantee"] == "none" and math.isfinite(eps):
        raise LedgerError(f"{source}: no guarantee must be stated as epsilon = Infinity, got {eps}")


def write_ledger(path: str | os.PathLike, ledger: dict[str, Any]) -> None:
    validate_ledger(ledger, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(ledger, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def read_ledger(path: str | os.PathLike) -> dict[str, Any]:
    ledger = json.loads(Path(path).read_text())
    validate_ledger(ledger, str(path))
    return ledger
