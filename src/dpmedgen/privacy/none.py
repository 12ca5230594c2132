"""The non-private reference: ordinary training, no guarantee."""

from __future__ import annotations

from typing import Any

from dpmedgen.privacy.base import PrivacyMode
from dpmedgen.privacy.ledger import ADJACENCY


class NonPrivate(PrivacyMode):
    name = "none"

    def ledger(self) -> dict[str, Any]:
        return {
            "mechanism": "none",
            "guarantee": "none",
            "unit": "image",
            "adjacency": ADJACENCY,
            "adjacency_statement": "no guarantee for the training data under any relation",
            "epsilon_spent": float("inf"),
            "epsilon_target": float("inf"),
            "delta": 0.0,
        }
