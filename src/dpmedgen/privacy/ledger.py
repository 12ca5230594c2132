"""The privacy ledger (`privacy.json`) written next to every checkpoint.

Required keys for every mode: mechanism, guarantee ("formal" or "none"), unit ("image" or "patient"),
adjacency (`ADJACENCY`), epsilon_spent (a sound upper bound for `unit` and `adjacency` at `delta`; Infinity
when there is no guarantee), epsilon_target (what the run was configured for) and delta (the names of
`dpmedgen.results`). DP-SGD adds noise_multiplier, sample_rate, steps, max_grad_norm and accountant, enough
for an independent accountant to recompute epsilon_spent. The trainer adds the run's identity (dataset,
model, privacy, seed), `randomness` and `dp_release` (`PrivacyMode.full_ledger`).
A run of one generator per class has the ledger of `compose_parallel`: the per-class ledgers under
`class_ledgers` and, at the top, their parallel composition.
JSON has no infinity; like Python's json module we write the literal `Infinity`.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from dpmedgen.io import read_json, write_text

REQUIRED = ("mechanism", "guarantee", "unit", "adjacency", "epsilon_spent", "epsilon_target", "delta")

#: The study's one neighbouring relation, stated in every ledger (`adjacency`): two training sets are
#: neighbours when one unit (a patient with all of their images, or an image) is replaced by any other.
#: Under it the number of units N is public, every formal mode is calibrated for it (input perturbation has
#: no add/remove guarantee: it releases one noisy record per unit), and the privacy-utility figure's
#: epsilon axis means the same for every mode.
ADJACENCY = "replace_one"
#: A run of one generator per class (`compose_parallel`): a patient is replaced by another of the same class,
#: so the class sizes, from which each class's sampling rate is computed, are public (as the labels' counts).
ADJACENCY_WITHIN_CLASS = "replace_one_within_class"


def adjacency_statement(unit: str, within_class: bool = False) -> str:
    """The ledger's `adjacency_statement`: the relation in words, for `unit`."""
    who = "one patient (with all of their images)" if unit == "patient" else "one image"
    by = "another patient of the same class label" if within_class else f"any other {unit}"
    public = "the number of training patients of each class is" if within_class else f"the number of training {unit}s is"
    return f"replace {who} by {by}; {public} public"


def vacuous(epsilon: float, delta: float, n_units: int) -> tuple[float, float]:
    """(epsilon, delta) as stated, or (inf, delta) when delta >= 1/N: such a delta permits releasing a whole
    record of N, so the statement is no guarantee whatever its epsilon."""
    if delta >= 1.0 / max(int(n_units), 1):
        return math.inf, delta
    return epsilon, delta
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
    eps = float(ledger["epsilon_spent"])
    if ledger["guarantee"] == "formal" and not (math.isfinite(eps) and eps >= 0 and 0 <= ledger["delta"] < 1):
        raise LedgerError(f"{source}: a formal guarantee needs finite epsilon_spent >= 0 and 0 <= delta < 1")
    if ledger["guarantee"] == "none" and math.isfinite(eps):
        raise LedgerError(f"{source}: no guarantee must be stated as epsilon_spent = Infinity, got {eps}")


#: Bounds a ledger may state per unit (`epsilon_spent` / `delta` are those of its `unit`); a missing delta_per_* is
#: the ledger's `delta`.
BOUND_KEYS = ("epsilon_spent", "delta", "epsilon_per_image", "delta_per_image", "epsilon_per_patient", "delta_per_patient")


def compose_parallel(ledgers: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The ledger of a release made of one mechanism per class, each run on the patients of its class only.

    Parallel composition (McSherry 2009, "Privacy integrated queries", Thm 2): the classes partition the
    patients (a label is an attribute of the patient; the split refuses a patient with two labels), so
    replacing one patient by another of the same class, or changing one of their images, changes the input
    of exactly one class's mechanism, and the release of all of them is (max_c epsilon_c, max_c delta_c)-DP
    for that unit. The run's `adjacency` is therefore `ADJACENCY_WITHIN_CLASS`: the class sizes are public.
    Each bound of `BOUND_KEYS` is composed that way (every class is (eps_c, delta_c)-DP, hence (max eps_c,
    max delta_c)-DP); a bound is kept only when every class states it. The other fields are those of the
    class with the largest `epsilon_spent` (for DP-SGD: its noise multiplier, sample rate and steps, from which an
    accountant recomputes the top-level epsilon); every class's own ledger is kept under `class_ledgers`. If
    any class has no guarantee, neither has the run.
    """
    if not ledgers:
        raise LedgerError("compose_parallel: no per-class ledgers")
    for label, ledger in ledgers.items():
        validate_ledger(ledger, f"ledger of class {label}")
    units = {ledger["unit"] for ledger in ledgers.values()}
    if len(units) != 1:
        raise LedgerError(f"compose_parallel: classes state different units {sorted(units)}")
    worst = max(ledgers, key=lambda c: float(ledgers[c]["epsilon_spent"]))
    record = dict(ledgers[worst])
    for key in BOUND_KEYS:
        if all(key in lg for lg in ledgers.values()):
            record[key] = max(float(lg[key]) for lg in ledgers.values())
        else:  # a bound some class does not state is not stated for the run either
            record.pop(key, None)
    if any(lg["guarantee"] == "none" for lg in ledgers.values()):
        record["guarantee"], record["epsilon_spent"] = "none", math.inf
    elif record.get("adjacency") == ADJACENCY:
        # Each class's mechanism protects a replacement within its own patients; a patient replaced by one of
        # another class would change two classes' inputs and sizes. The run's relation is therefore
        # replacement within a class, and the class sizes (each class's N) are public.
        record["adjacency"] = ADJACENCY_WITHIN_CLASS
        record["adjacency_statement"] = adjacency_statement(record["unit"], within_class=True)
    record["composition"] = (
        "parallel over classes (McSherry 2009): one generator per class label, each trained only on that class's "
        "patients; a patient belongs to one class, so epsilon and delta per unit are the maxima over the classes"
    )
    record["class_ledgers"] = {str(label): ledgers[label] for label in sorted(ledgers)}
    return record


def write_ledger(path: str | os.PathLike, ledger: dict[str, Any]) -> None:
    validate_ledger(ledger, str(path))
    write_text(json.dumps(ledger, indent=2, sort_keys=True) + "\n", path)


def read_ledger(path: str | os.PathLike) -> dict[str, Any]:
    ledger = read_json(path)  # a truncated file fails naming it
    if not isinstance(ledger, dict):
        raise LedgerError(f"{path}: a ledger is a JSON object, found {type(ledger).__name__}; delete it and rerun")
    validate_ledger(ledger, str(path))
    return ledger
