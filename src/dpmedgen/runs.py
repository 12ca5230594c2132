"""Identity of one training run: (dataset, model, privacy, epsilon, seed), and how it is spelled in paths."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from dpmedgen.results import EPSILON_TARGET, REAL_DATA

__all__ = ["REAL_DATA", "RunSpec", "format_epsilon", "parse_epsilon"]


def format_epsilon(epsilon: float) -> str:
    """The spelling of epsilon in paths and wildcards, which `parse_epsilon` turns back into exactly the same
    float: an integral value without decimals, any other the shortest round-tripping `repr`.

    >>> [format_epsilon(e) for e in (1.0, 0.5, 2.7182818, 1234567.0, 1e-05, float("inf"))]
    ['1', '0.5', '2.7182818', '1234567', '1e-05', 'inf']
    """
    epsilon = float(epsilon)
    if math.isinf(epsilon):
        return "inf"
    if epsilon.is_integer() and abs(epsilon) < 1e16:
        return str(int(epsilon))
    return repr(epsilon)


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

