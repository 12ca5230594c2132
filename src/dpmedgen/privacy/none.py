"""The non-private reference: ordinary training, no guarantee."""

from __future__ import annotations

from typing import Any

from dpmedgen.privacy.base import PrivacyMode


class NonPrivate(PrivacyMode):
    name = "none"

    def ledger(self) -> dict[str, Any]:
        return {
            "mechanism": "none",
            "guarantee": "none",
            "unit": "image",
            "epsilon": float("inf"),
            "epsilon_target": float("inf"),
            "delta": 0.0,
        }
