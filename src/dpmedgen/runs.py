"""Identity of one training run: (dataset, model, privacy, epsilon, seed), and how it is spelled in paths."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from dpmedgen.results import EPSILON_TARGET, REAL_DATA

__all__ = ["REAL_DATA", "RunSpec", "format_epsilon", "parse_epsilon"]


def format_epsilon(epsilon: float) -> str:
    """1.0 -> "1", 0.5 -> "0.5", inf -> "inf" (the spelling used in paths and wildcards)."""
    epsilon = float(epsilon)
    return "inf" if math.isinf(epsilon) else f"{epsilon:g}"


def parse_epsilon(text: str) -> float:
    value = float(text)
    if math.isnan(value) or value <= 0:
        raise ValueError(f"epsilon must be > 0 or 'inf'; got {text!r}")
    return value


@dataclass(frozen=True)
class RunSpec:
    dataset: str
    model: str
    privacy: str
    epsilon: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.model}/{self.privacy}/eps{format_epsilon(self.epsilon)}/seed{self.seed}"

    def as_dict(self) -> dict:
        return asdict(self)

    def table_keys(self) -> dict:
        """The run's identity as the study tables spell it (`dpmedgen.results.RUN_KEYS`): its epsilon is the
        target (`epsilon_target`), never a spent bound."""
        return {"dataset": self.dataset, "model": self.model, "privacy": self.privacy,
                EPSILON_TARGET: self.epsilon, "seed": self.seed}

    @classmethod
    def from_wildcards(cls, wildcards) -> "RunSpec":
        """From Snakemake wildcards (dataset, model, privacy, epsilon, seed)."""
        return cls(
            dataset=wildcards.dataset,
            model=wildcards.model,
            privacy=wildcards.privacy,
            epsilon=parse_epsilon(wildcards.epsilon),
            seed=int(wildcards.seed),
        )

