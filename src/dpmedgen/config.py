"""Study configuration: validation beyond the JSON schema, and expansion into the run grid.

`schemas/config.schema.yaml` checks structure and types (Snakemake validates it at start-up); `check_config`
then checks what a schema cannot: names against the registries and cross-field rules. Both run before any
job, so a bad config stops the workflow with a message naming the offending key.
"""

from __future__ import annotations

import inspect
import itertools
import math
import re
from pathlib import Path
from typing import Any

import yaml

from dpmedgen.results import NON_PRIVATE
from dpmedgen.runs import RunSpec

SCHEMA = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The study configuration is invalid; the message names the key."""


_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?|[+-]?(inf|Infinity)")
_LITERALS = {"true": True, "false": False, "null": None}


def coerce_command_line_values(config: Any) -> Any:
    """Undo the stringification of `snakemake --config` values, in place; returns `config`.

    Snakemake parses a value such as `seeds=[0,1,2]` with YAML's BaseLoader, so scalars inside lists and
    mappings arrive as strings (`['0', '1', '2']`) and would fail the schema. Strings that spell an integer,
    a float (`1e-5`, `inf`) or `true` / `false` / `null` become that value; other strings are left alone.
    """
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in list(items):
        if isinstance(value, (dict, list)):
            coerce_command_line_values(value)
        elif isinstance(value, str):
            if _INT.fullmatch(value):
                config[key] = int(value)
            elif _FLOAT.fullmatch(value):
                config[key] = float(value)
            elif value in _LITERALS:
                config[key] = _LITERALS[value]
    return config


def validate_schema(config: dict[str, Any], schema_path: str | Path = SCHEMA) -> None:
    """JSON-schema validation outside Snakemake (Snakemake's `validate` does the same inside it)."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.path) or "(top level)"
        raise ConfigError(f"config key {key}: {err.message}")


def check_config(config: dict[str, Any]) -> None:
    """Check names against the registries and cross-field constraints."""
    from dpmedgen.data import DATASETS
    from dpmedgen.metrics import METRICS
    from dpmedgen.models import MODELS
    from dpmedgen.privacy import PRIVACY_MODES

    from dpmedgen.data.sources import DatasetError, make_source, resolve_remote_files

    for name, entry in config["datasets"].items():
        source = dataset_source(config, name)
        key = f"datasets.{name}" + (".source" if "source" in entry else "")
        if source not in DATASETS:
            raise ConfigError(f"config key {key}: unknown dataset {source!r}; known: {DATASETS.names()}")
        try:
            adapter = make_source(source, entry.get("params"))
        except DatasetError as err:
            raise ConfigError(f"config key datasets.{name}.params: {err}") from None
        try:
            resolve_remote_files(adapter, entry.get("downloads"))
        except DatasetError as err:
            raise ConfigError(f"config key datasets.{name}.{err}") from None
        if entry["modality"] not in adapter.modalities:
            raise ConfigError(f"config key datasets.{name}.modality: dataset {source!r} has no modality {entry['modality']!r}; "
                              f"it has {list(adapter.modalities)}")
    for name in config["models"]:
        if name not in MODELS:
            raise ConfigError(f"config key models.{name}: unknown model; known: {MODELS.names()}")
        accepted = set(inspect.signature(MODELS.get(name).__init__).parameters) - {"self", "image_size"}
        unknown = sorted(set(model_params(config, name)) - accepted)
        if unknown:
            raise ConfigError(f"config key models.{name}.{unknown[0]}: not a parameter of {name}; accepted: {sorted(accepted)} (and `train`)")
        try:
            train_settings(config, name)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config key models.{name}.train: {err}") from None
    for name in config["privacy"]["modes"]:
        if name not in PRIVACY_MODES:
            raise ConfigError(f"config key privacy.modes: unknown privacy mode {name!r}; known: {PRIVACY_MODES.names()}")
    grid = runs(config)
    for name in config["datasets"]:
        lacking = {m: x for (d, m), x in missing_modalities(config).items() if d == name}
        if lacking and not any(r.dataset == name for r in grid):
            raise ConfigError(f"config key datasets.{name}: no model of the study can train on it (the models lack "
                              f"modalities {lacking}; it has {list(dataset_modalities(config, name))})")
    if not grid:
        raise ConfigError("config keys models / privacy.modes: no model supports any listed privacy mode; nothing to run")
    for name, params in config["privacy"].items():
        if name in ("modes", "epsilons", "delta", "randomness"):
            continue
        if name not in PRIVACY_MODES:
            raise ConfigError(f"config key privacy.{name}: unknown privacy mode; known: {PRIVACY_MODES.names()}")
        accepted = set(inspect.signature(PRIVACY_MODES.get(name).__init__).parameters) - {"self", "target_epsilon", "delta", "seed"}
        unknown = sorted(set(params or {}) - accepted)
        if unknown:
            raise ConfigError(f"config key privacy.{name}.{unknown[0]}: not a parameter of {name}; accepted: {sorted(accepted)}")
        try:  # constructing the mode validates the values (training-time checks come later, per run)
            PRIVACY_MODES.get(name)(target_epsilon=1.0, delta=config["privacy"]["delta"], **(params or {}))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config key privacy.{name}: {err}") from None
    audit = config.get("audit") or {}
    for name in audit.get("models", []):
        if name not in config["models"]:
            raise ConfigError(f"config key audit.models: {name!r} is not a model of the study; models: {list(config['models'])}")
    if audit.get("models") and "dpsgd" not in config["privacy"]["modes"]:
        raise ConfigError("config key audit.models: the one-run audit instruments DP-SGD runs, and privacy.modes lists "
                          "no 'dpsgd'; add it or set audit.models: []")
    for name in config["evaluate"]["metrics"]:
        if name not in METRICS:
            raise ConfigError(f"config key evaluate.metrics: unknown metric {name!r}; known: {METRICS.names()}")
    private = [m for m in config["privacy"]["modes"] if m != NON_PRIVATE]
    if private and not config["privacy"]["epsilons"]:
        raise ConfigError(f"config key privacy.epsilons: private modes {private} need at least one epsilon")
    if any(math.isinf(float(e)) for e in config["privacy"]["epsilons"]):
        raise ConfigError("config key privacy.epsilons: list finite epsilons; the non-private run is mode 'none'")
    fractions = config["split"]["fractions"]
    if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-6):
        raise ConfigError(f"config key split.fractions: fractions must sum to 1; got {sum(fractions.values()):g}")
    split = config["evaluate"].get("split", "test")
    if fractions.get(split, 0) <= 0:
        raise ConfigError(f"config key evaluate.split: split {split!r} has no patients (split.fractions.{split} = 0)")
    for held_out in config["evaluate"].get("nonmember_splits", ["val", "test"]):
        if fractions.get(held_out, 0) <= 0:
            raise ConfigError(
                f"config key evaluate.nonmember_splits: split {held_out!r} has no patients (split.fractions.{held_out} = 0)"
            )
    if "downstream" in config["evaluate"]["metrics"]:
        if fractions.get("val", 0) <= 0:
            raise ConfigError("config key split.fractions.val: the downstream metric chooses its classifier on val patients; give val a fraction > 0")
        if split == "val":
            raise ConfigError("config key evaluate.split: the downstream metric selects on val, so it must test on another split (test)")
    weights = config["evaluate"].get("inception_weights")
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(
            f"config key evaluate.inception_weights: no file {weights}; it should be the TF-Inception TorchScript "
            "file inception-2015-12-05.pt (see README), or null to skip fid_inception"
        )
    from dpmedgen.metrics import all_metric_info

    sources = (config["models"].get("ddcgan") or {}).get("modalities", ["mri", "pet"])
    known = {i.name for i in all_metric_info(sources)}
    for key in ("privacy_utility_metrics", "table_metrics"):
        for name in (config.get("plot") or {}).get(key, []):
            if name not in known:
                raise ConfigError(f"config key plot.{key}: unknown metric {name!r}; see README's metric table")
    indices = (config.get("plot") or {}).get("image_indices")
    n_samples = config["generate"]["n_samples"]
    if indices and max(indices) >= n_samples:
        raise ConfigError(f"config key plot.image_indices: {max(indices)} is not a sample position; generate.n_samples "
                          f"is {n_samples} (positions 0-{n_samples - 1})")


def load_config(path: str | Path) -> dict[str, Any]:
    """Read, schema-validate and check a config file (for use outside Snakemake)."""
    config = yaml.safe_load(Path(path).read_text())
    validate_schema(config)
    check_config(config)
    return config


def runs(config: dict[str, Any]) -> list[RunSpec]:
    """Every run of the grid: datasets x models x (none once; each private mode x each epsilon) x seeds,
    without the (model, mode) pairs the mode does not apply to (`PrivacyMode.supported_kinds`, e.g. the
    functional mechanism only trains unconditional GANs); `skipped_pairs` lists those."""
    from dpmedgen.models import MODELS
    from dpmedgen.privacy import PRIVACY_MODES

    privacy: list[tuple[str, float]] = []
    for mode in config["privacy"]["modes"]:
        if mode == NON_PRIVATE:
            privacy.append((mode, math.inf))
        else:
            privacy.extend((mode, float(eps)) for eps in config["privacy"]["epsilons"])
    missing = set(missing_modalities(config))
    return [
        RunSpec(dataset=d, model=m, privacy=p, epsilon=e, seed=int(s))
        for d, m, (p, e), s in itertools.product(config["datasets"], config["models"], privacy, config["seeds"])
        if MODELS.get(m).kind in PRIVACY_MODES.get(p).supported_kinds and (d, m) not in missing
    ]


def dataset_source(config: dict[str, Any], dataset: str) -> str:
    """The adapter of `datasets.<dataset>`: its `source` key, else the entry's own name."""
    return config["datasets"][dataset].get("source", dataset)


def dataset_modalities(config: dict[str, Any], dataset: str) -> tuple[str, ...]:
    """The modalities the dataset's adapter writes (its class attribute `modalities`)."""
    from dpmedgen.data import DATASETS

    return tuple(DATASETS.get(dataset_source(config, dataset)).modalities)


def missing_modalities(config: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """(dataset, model) -> the modalities a multi-modality (fusion) model needs that the dataset lacks.

    `runs` leaves those pairs out of the grid (e.g. DDcGAN's MRI-PET fusion on a chest X-ray set), so one
    study can hold single- and multi-modality datasets."""
    out = {}
    for d in config["datasets"]:
        have = set(dataset_modalities(config, d))
        for m in config["models"]:
            need = model_params(config, m).get("modalities") or getattr(_model_class(m), "default_modalities", ())
            lacking = [x for x in need if x not in have]
            if lacking:
                out[(d, m)] = lacking
    return out


def _model_class(name: str):
    from dpmedgen.models import MODELS

    return MODELS.get(name)


def skipped_pairs(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(model, privacy mode) pairs of the config that `runs` leaves out because the mode does not apply."""
    from dpmedgen.models import MODELS
    from dpmedgen.privacy import PRIVACY_MODES

    return [
        (m, p) for m in config["models"] for p in config["privacy"]["modes"]
        if MODELS.get(m).kind not in PRIVACY_MODES.get(p).supported_kinds
    ]


def model_params(config: dict[str, Any], model: str) -> dict[str, Any]:
    """Constructor parameters of `model` (`models.<model>` in config, without its `train` overrides)."""
    params = dict(config["models"].get(model) or {})
    params.pop("train", None)
    return params


def train_settings(config: dict[str, Any], model: str) -> dict[str, Any]:
    """`train` with the model's overrides (`models.<model>.train`) applied; `lr` is merged per role.
    Validated by constructing a TrainConfig."""
    from dpmedgen.train.engine import TrainConfig

    base = dict(config.get("train") or {})
    override = dict((config["models"].get(model) or {}).get("train") or {})
    merged = base | override
    merged["lr"] = dict(base.get("lr") or {}) | dict(override.get("lr") or {})
    TrainConfig(**merged)
    return merged


def privacy_params(config: dict[str, Any], mode: str) -> dict[str, Any]:
    """Mode-specific parameters (`privacy.<mode>` in config)."""
    return dict(config["privacy"].get(mode) or {})


def resources(config: dict[str, Any], rule: str) -> dict[str, Any]:
    """threads / mem_mb / runtime / gpu for a rule, falling back to resources.default."""
    base = {"threads": 1, "mem_mb": 2000, "runtime": 20, "gpu": 0}
    table = config.get("resources") or {}
    return base | dict(table.get("default") or {}) | dict(table.get(rule) or {})
