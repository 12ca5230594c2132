"""The results vocabulary: the names the study's tables, ledgers and logs share, defined once.

One word for one thing:

- ``epsilon_target``: the epsilon a run was configured for (its path's ``eps<ε>``; ``inf`` for the
  non-private reference). It identifies a run; it is not a guarantee.
- ``epsilon_spent``: the sound upper bound that the run's accountant states for the ledger's ``unit``,
  ``adjacency`` and ``delta``; ``inf`` when the run has no guarantee (``guarantee: none``). Written by the
  privacy ledger (``privacy.json``), the training log (spent so far) and, per run, ``metrics.parquet``.
- ``guarantee``: ``formal`` or ``none``; ``adjacency``: the neighbouring relation
  (`dpmedgen.privacy.ledger.ADJACENCY`); ``randomness``: ``secret`` or ``deterministic``; ``dp_release``:
  true only for a formal guarantee whose noise was secret (`dpmedgen.privacy.randomness`).

No table has a bare ``epsilon`` column, so no join can pair a target with a bound.
"""

from __future__ import annotations

#: The privacy mode of the non-private reference runs (`privacy.modes` in config.yaml).
NON_PRIVATE = "none"
#: `model` of the downstream classifier's reference rows (trained on the real training patients; not a model).
REAL_DATA = "real_data"

EPSILON_TARGET = "epsilon_target"
EPSILON_SPENT = "epsilon_spent"
#: What identifies one run in every study table.
RUN_KEYS = ("dataset", "model", "privacy", EPSILON_TARGET, "seed")
#: The long metric table (`results/metrics.parquet`): one row per run and metric ...
METRIC_COLUMNS = (*RUN_KEYS, "metric", "value")
#: ... with the run's guarantee beside every row, from its ledger.
GUARANTEE_COLUMNS = ("guarantee", EPSILON_SPENT, "delta", "unit", "adjacency", "randomness", "dp_release")
#: The privacy table (`results/privacy.parquet`, one row per run) has at least these ledger fields.
PRIVACY_COLUMNS = (*RUN_KEYS, "guarantee", EPSILON_SPENT)
#: What the reference rows (no trained model, no ledger) state.
NO_GUARANTEE = {"guarantee": "none", EPSILON_SPENT: float("inf"), "delta": 0.0, "unit": None, "adjacency": None,
                "randomness": None, "dp_release": False}
#: What tables and figures say of a study whose formal runs drew their noise from the public seed.
NOT_A_DP_RELEASE = ("not a DP release: the noise was drawn from the public seed (privacy.randomness: deterministic); "
                    "the epsilons are what the mechanisms give with secret noise")

NOT_A_DP_RELEASE_SHORT = "deterministic randomness (public seed): not a DP release"


def deterministic_formal_runs(privacy) -> bool:
    """True when a formal run of the privacy table (`privacy.parquet`, a DataFrame) drew its noise from the
    public seed: such a study is not a DP release, and its tables and figures must say so."""
    if "randomness" not in privacy.columns:
        return False
    return bool(((privacy["guarantee"] == "formal") & (privacy["randomness"] == "deterministic")).any())
