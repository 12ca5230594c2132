"""One settings object per stage: what the `generate:`, `evaluate:` and `plot:` sections of the config say.

Training has :class:`dpmedgen.train.engine.TrainConfig`; these are the same for sampling, scoring and the
figures and tables. Each is built from its config section by ``from_config``, which fills every key the
section leaves out with the schema's ``default:`` (`schemas/config.schema.yaml`, where each key also has its
``description:``). The schema is the one place a default is written: the rules pass the section as it is (after
Snakemake's validation, which fills the same defaults), the workflow scripts build the object, and the library
takes it whole instead of one keyword per key.

>>> EvaluateSettings.from_config({"metrics": ["fid_effnetlite0"]}).split
'test'
>>> PlotSettings.from_config(None).n_columns
8
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar, Mapping

import yaml

from dpmedgen.config import SCHEMA, ConfigError


@lru_cache(maxsize=None)
def _schema_properties(section: str) -> dict[str, Any]:
    return yaml.safe_load(SCHEMA.read_text())["properties"][section]["properties"]


def schema_defaults(section: str) -> dict[str, Any]:
    """The ``default:`` of every key of config section `section` that has one in the schema."""
    return {k: p["default"] for k, p in _schema_properties(section).items() if "default" in p}


class _Section:
    """A config section's settings: `from_config` fills the keys it leaves out from the schema."""

    section: ClassVar[str]

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None):
        return _from_section(cls, cls.section, values)


def _from_section(cls, section: str, values: Mapping[str, Any] | None) -> Any:
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{section}: unknown key(s) {unknown}; known: {sorted(fields)}")
    merged = schema_defaults(section) | values
    missing = sorted(fields - set(merged))
    if missing:
        raise ConfigError(f"{section}: missing key(s) {missing} (no default in {SCHEMA.name})")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()})


@dataclass(frozen=True)
class GenerateSettings(_Section):
    """`generate:`: sampling from every trained run (the schema describes each key)."""

    section: ClassVar[str] = "generate"

    n_samples: int


@dataclass(frozen=True)
class EvaluateSettings(_Section):
    """`evaluate:`: scoring every run's samples (the schema describes each key)."""

    section: ClassVar[str] = "evaluate"

    metrics: tuple[str, ...]
    split: str
    batch_size: int
    nonmember_splits: tuple[str, ...]
    inception_weights: str | None
    downstream_epochs: int


@dataclass(frozen=True)
class PlotSettings(_Section):
    """`plot:`: figures and tables (the schema describes each key)."""

    section: ClassVar[str] = "plot"

    n_columns: int
    privacy_utility_metrics: tuple[str, ...]
    table_metrics: tuple[str, ...]
    image_indices: tuple[int, ...] | None


__all__ = ["EvaluateSettings", "GenerateSettings", "PlotSettings", "schema_defaults"]
