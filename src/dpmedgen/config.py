"""Study configuration: validation beyond the JSON schema, and expansion into the run grid.

`schemas/config.schema.yaml` checks structure and types (Snakemake validates it at start-up); `check_config`
then checks what a schema cannot: names against the registries and cross-field rules. Both run before any
job, so a bad config stops the workflow with a message naming the offending key.

What is checked before any job (README: "What is validated"): the config's size (`check_size`, before any
other traversal, so a 10 MB file or a YAML alias bomb is answered at once), that every number is finite,
names that become path components (datasets) and the output folders, every registry name and constructor
parameter (models are built on PyTorch's `meta` device at the working resolution, so an architecture the
model would refuse fails here), the training device against this machine, and the cohort: for the
embedded phantom the exact per-class split is computed from its parameters, so that every split has a
patient of every class, batch sizes and canaries fit the training patients, and `privacy.delta` is below
1/N for the smallest N any formal mode protects. For a downloaded dataset N is unknown until it is
downloaded and split: those checks then use `<results_dir>/<dataset>/splits.parquet` once it exists, and
before that each private mode repeats the δ check when its training job starts (before any training).
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


#: Size bounds of a config (the shipped ones have a few hundred values): `check_size` stops before anything
#: walks a 10 MB file or the exponential tree of a YAML alias bomb.
MAX_CONFIG_VALUES = 50_000
MAX_CONFIG_DEPTH = 24
MAX_STRING_CHARS = 4096
#: Seeds go to numpy's legacy `np.random.seed` and `torch.manual_seed`: 0 <= seed < 2**32.
MAX_SEED = 2**32 - 1
#: Target epsilons outside [1e-3, 1e3] are either no privacy at all or noise no accountant resolves.
EPSILON_RANGE = (1e-3, 1e3)
#: A dataset's name becomes a folder (results/<name>/, resources/<name>/) and must match the `dataset`
#: wildcard of rules/common.smk.
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,63}")


def _dotted(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def check_size(config: Any) -> None:
    """ConfigError if the config has more than MAX_CONFIG_VALUES values, is nested deeper than
    MAX_CONFIG_DEPTH or holds a string longer than MAX_STRING_CHARS. Stops at the first excess, so it is fast
    on any input (a YAML alias bomb is a tree of exponentially many values sharing a few objects)."""
    stack = [(config, ())]
    count = 0
    while stack:
        value, path = stack.pop()
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(f"config key {_dotted(path[:2])}: the config holds more than {MAX_CONFIG_VALUES:,} values "
                              "(a study config has a few hundred); is this the intended file?")
        if len(path) > MAX_CONFIG_DEPTH:
            raise ConfigError(f"config key {_dotted(path[:4])}: nested deeper than {MAX_CONFIG_DEPTH} levels")
        if isinstance(value, dict):
            stack.extend((v, (*path, k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(value))
        elif isinstance(value, str) and len(value) > MAX_STRING_CHARS:
            raise ConfigError(f"config key {_dotted(path)}: a string of {len(value):,} characters; at most {MAX_STRING_CHARS}")


def _check_finite(config: Any) -> None:
    """Every number of the config is finite (YAML spells NaN `.nan` and infinity `.inf`)."""
    stack = [(config, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, dict):
            stack.extend((v, (*path, k)) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, (*path, i)) for i, v in enumerate(value))
        elif isinstance(value, float) and not math.isfinite(value):
            if path[:2] == ("privacy", "epsilons") and math.isinf(value):
                raise ConfigError("config key privacy.epsilons: list finite epsilons; the non-private run is mode 'none'")
            raise ConfigError(f"config key {_dotted(path)}: {value!r} is not a finite number")


_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?|[+-]?(inf|Infinity)")
_LITERALS = {"true": True, "false": False, "null": None}


def coerce_command_line_values(config: Any) -> Any:
    """Undo the stringification of `snakemake --config` values, in place; returns `config`.

    Snakemake parses a value such as `seeds=[0,1,2]` with YAML's BaseLoader, so scalars inside lists and
    mappings arrive as strings (`['0', '1', '2']`) and would fail the schema. Strings that spell an integer,
    a float (`1e-5`, `inf`) or `true` / `false` / `null` become that value; other strings are left alone.

    Only the values given with `--config` are touched when Snakemake's workflow is found (a string in a
    config file, e.g. `steps: '20'`, stays a string and fails the schema). The config's size is checked
    first (`check_size`): this is the first function the Snakefile runs on the config.
    """
    check_size(config)
    overrides = _command_line_config()
    if overrides is not None:
        _coerce_where(config, overrides)
        return config
    return _coerce_all(config)


def _running_workflow() -> Any:
    """Snakemake's Workflow object when called from a Snakefile (it is the `workflow` global there), else None."""
    import sys

    frame = sys._getframe(1)
    while frame is not None:
        workflow = frame.f_globals.get("workflow")
        if getattr(workflow, "config_settings", None) is not None:
            return workflow
        frame = frame.f_back
    return None


def _command_line_config() -> dict | None:
    """The values of `snakemake --config` of the running workflow, or None outside Snakemake."""
    workflow = _running_workflow()
    if workflow is None:
        return None
    return dict(getattr(workflow.config_settings, "config", None) or {})


def _coerce_where(config: Any, overrides: Any) -> None:
    """Coerce the parts of `config` that `overrides` (the `--config` values) set."""
    if not isinstance(config, dict) or not isinstance(overrides, dict):
        return
    for key, given in overrides.items():
        if key not in config:
            continue
        if isinstance(given, dict):
            _coerce_where(config[key], given)
        else:
            holder = {key: config[key]}
            _coerce_all(holder)
            config[key] = holder[key]


def _coerce_all(config: Any) -> Any:
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else ()
    for key, value in list(items):
        if isinstance(value, (dict, list)):
            _coerce_all(value)
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

    check_size(config)
    schema = yaml.safe_load(Path(schema_path).read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(config), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.path) or "(top level)"
        raise ConfigError(f"config key {key}: {err.message}")


def check_config(config: dict[str, Any]) -> None:
    """Check names against the registries and cross-field constraints.

    Inside a job's own Snakemake (a cluster job, which parses the workflow again to run one job) only the size
    check runs: the main process checked this very config before it submitted the job, and the full check (it
    builds every model) would cost each cluster job ~5 s of CPU."""
    check_size(config)
    if not getattr(_running_workflow(), "is_main_process", True):
        return
    _check_finite(config)
    _check_paths(config)
    _check_value_ranges(config)
    _check_registries(config)
    _check_models_build(config)
    _check_devices(config)
    _check_cohorts(config)
    _check_pretraining(config)
    if _running_workflow() is not None:
        hold_results_lock(config)


def _check_registries(config: dict[str, Any]) -> None:
    """Every name the config uses is registered, with parameters its class accepts; then the settings that
    depend on them."""
    _check_dataset_entries(config)
    _check_model_entries(config)
    grid = _check_grid(config)
    _check_privacy_entries(config)
    _check_audit(config)
    _check_evaluate(config)
    _check_plot(config)
    _check_every_model_runs(config, grid)


def _check_dataset_entries(config: dict[str, Any]) -> None:
    from dpmedgen.data import DATASETS
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


def _check_model_entries(config: dict[str, Any]) -> None:
    from dpmedgen.models import MODELS

    for name in config["models"]:
        if name not in MODELS:
            raise ConfigError(f"config key models.{name}: unknown model; known: {MODELS.names()}")
        accepted = set(inspect.signature(MODELS.get(name).__init__).parameters) - {"self", "image_size"}
        unknown = sorted(set(model_params(config, name)) - accepted)
        if unknown:
            raise ConfigError(f"config key models.{name}.{unknown[0]}: not a parameter of {name}; accepted: {sorted(accepted)} (and `train`, `pretrain`, `dpsgd`)")
        try:
            train_settings(config, name)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config key models.{name}.train: {err}") from None


def _check_grid(config: dict[str, Any]) -> list[RunSpec]:
    """The run grid, checked to train something on every studied dataset."""
    from dpmedgen.privacy import PRIVACY_MODES

    for name in config["privacy"]["modes"]:
        if name not in PRIVACY_MODES:
            raise ConfigError(f"config key privacy.modes: unknown privacy mode {name!r}; known: {PRIVACY_MODES.names()}")
    grid = runs(config)
    for name in studied_datasets(config):
        lacking = {m: x for (d, m), x in missing_modalities(config).items() if d == name}
        if lacking and not any(r.dataset == name for r in grid):
            raise ConfigError(f"config key datasets.{name}: no model of the study can train on it (the models lack "
                              f"modalities {lacking}; it has {list(dataset_modalities(config, name))})")
    if not grid:
        raise ConfigError("config keys models / privacy.modes: no model supports any listed privacy mode; nothing to run")
    return grid


def _check_privacy_entries(config: dict[str, Any]) -> None:
    from dpmedgen.privacy import PRIVACY_MODES

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
    private = [m for m in config["privacy"]["modes"] if m != NON_PRIVATE]
    if private and not config["privacy"]["epsilons"]:
        raise ConfigError(f"config key privacy.epsilons: private modes {private} need at least one epsilon")
    if any(math.isinf(float(e)) for e in config["privacy"]["epsilons"]):
        raise ConfigError("config key privacy.epsilons: list finite epsilons; the non-private run is mode 'none'")


def _check_audit(config: dict[str, Any]) -> None:
    audit = config.get("audit") or {}
    for name in audit.get("models", []):
        if name not in config["models"]:
            raise ConfigError(f"config key audit.models: {name!r} is not a model of the study; models: {list(config['models'])}")
    if audit.get("models") and "dpsgd" not in config["privacy"]["modes"]:
        raise ConfigError("config key audit.models: the one-run audit instruments DP-SGD runs, and privacy.modes lists "
                          "no 'dpsgd'; add it or set audit.models: []")


def _check_evaluate(config: dict[str, Any]) -> None:
    """`evaluate:` against the metric registry and the split's fractions."""
    from dpmedgen.metrics import METRICS
    from dpmedgen.settings import EvaluateSettings

    settings = EvaluateSettings.from_config(config["evaluate"])
    for name in settings.metrics:
        if name not in METRICS:
            raise ConfigError(f"config key evaluate.metrics: unknown metric {name!r}; known: {METRICS.names()}")
    fractions = config["split"]["fractions"]
    if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-6):
        raise ConfigError(f"config key split.fractions: fractions must sum to 1; got {sum(fractions.values()):g}")
    split = settings.split
    if fractions.get(split, 0) <= 0:
        raise ConfigError(f"config key evaluate.split: split {split!r} has no patients (split.fractions.{split} = 0)")
    for held_out in settings.nonmember_splits:
        if fractions.get(held_out, 0) <= 0:
            raise ConfigError(
                f"config key evaluate.nonmember_splits: split {held_out!r} has no patients (split.fractions.{held_out} = 0)"
            )
    if "downstream" in settings.metrics:
        if fractions.get("val", 0) <= 0:
            raise ConfigError("config key split.fractions.val: the downstream metric chooses its classifier on val patients; give val a fraction > 0")
        if split == "val":
            raise ConfigError("config key evaluate.split: the downstream metric selects on val, so it must test on another split (test)")
    weights = settings.inception_weights
    if weights is not None and not Path(weights).is_file():
        raise ConfigError(
            f"config key evaluate.inception_weights: no file {weights}; it should be the TF-Inception TorchScript "
            "file inception-2015-12-05.pt (see README), or null to skip fid_inception"
        )


def _check_plot(config: dict[str, Any]) -> None:
    """`plot:` metric names (of any dataset's metrics) and grid positions (of the samples)."""
    from dpmedgen.metrics import all_metric_info
    from dpmedgen.settings import GenerateSettings, PlotSettings

    settings = PlotSettings.from_config(config.get("plot"))
    sources = (config["models"].get("ddcgan") or {}).get("modalities", ["mri", "pet"])
    known = {i.name for i in all_metric_info(sources)}
    for key in ("privacy_utility_metrics", "table_metrics"):
        for name in getattr(settings, key):
            if name not in known:
                raise ConfigError(f"config key plot.{key}: unknown metric {name!r}; see README's metric table")
    indices = settings.image_indices
    n_samples = GenerateSettings.from_config(config["generate"]).n_samples
    if indices and max(indices) >= n_samples:
        raise ConfigError(f"config key plot.image_indices: {max(indices)} is not a sample position; generate.n_samples "
                          f"is {n_samples} (positions 0-{n_samples - 1})")


def _check_every_model_runs(config: dict[str, Any], grid: list[RunSpec]) -> None:
    for name in config["models"]:
        if not any(r.model == name for r in grid) and all((d, name) in missing_modalities(config) for d in config["datasets"]):
            need = model_params(config, name).get("modalities") or list(getattr(_model_class(name), "default_modalities", ()))
            have = {d: list(dataset_modalities(config, d)) for d in config["datasets"]}
            raise ConfigError(f"config key models.{name}.modalities: {list(need)} — no dataset of the study has all of "
                              f"them (the datasets have {have}), so {name} would never run")


# ------------------------------------------------------------------------------------- planning-time checks

#: Folders of the checkout that outputs must never be written into.
_SOURCE_FOLDERS = ("src", "rules", "schemas", "configs", "workflow_scripts", "envs", "tests", "report", "slurm",
                   "benchmarks", ".git")


def _check_paths(config: dict[str, Any]) -> None:
    """Dataset names are safe path components; results_dir / resources_dir are distinct folders outside the
    source tree, without Snakemake wildcard braces."""
    for name in config["datasets"]:
        if not DATASET_NAME.fullmatch(str(name)):
            shown = repr(name) if len(str(name)) <= 80 else f"{str(name)[:60]!r}... ({len(str(name))} characters)"
            raise ConfigError(f"config key datasets.{str(name)[:80]}: the dataset name {shown} becomes a folder name; use "
                              f"1-64 letters, digits or underscores, starting with a letter or digit ({DATASET_NAME.pattern})")
    root = SCHEMA.parents[1]
    folders = {}
    for key, default in (("results_dir", "results"), ("resources_dir", "resources")):
        value = config.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"config key {key}: {value!r} is not a folder name")
        if "{" in value or "}" in value:
            raise ConfigError(f"config key {key}: {value!r} contains '{{' or '}}', which Snakemake reads as a wildcard; "
                              "choose a folder name without braces")
        if Path(value).name in ("", ".", "..") or value.rstrip("/") in (".", ".."):
            raise ConfigError(f"config key {key}: {value!r} is the working directory or above it; name a folder of "
                              f"its own (e.g. {default})")
        resolved = Path(value).expanduser().resolve()
        if resolved == root or resolved in root.parents:
            raise ConfigError(f"config key {key}: {value!r} is the repository ({root}) or a folder above it; name a "
                              f"folder of its own (e.g. {default})")
        for part in _SOURCE_FOLDERS:
            if resolved == root / part or (root / part) in resolved.parents:
                raise ConfigError(f"config key {key}: {value!r} is inside the source tree ({root / part}); outputs "
                                  f"must go to a folder of their own (e.g. {default})")
        folders[key] = resolved
    results, resources = folders["results_dir"], folders["resources_dir"]
    if results == resources or results in resources.parents or resources in results.parents:
        raise ConfigError(f"config key results_dir: {config.get('results_dir', 'results')!r} and resources_dir "
                          f"{config.get('resources_dir', 'resources')!r} must be two separate folders, neither inside "
                          "the other (a dataset named like an output folder would overwrite it)")


def _check_value_ranges(config: dict[str, Any]) -> None:
    """Bounds a schema cannot state for every path (seeds, epsilons and a few model parameters)."""
    lo, hi = EPSILON_RANGE
    for eps in config["privacy"]["epsilons"]:
        if not lo <= float(eps) <= hi:
            raise ConfigError(f"config key privacy.epsilons: {eps!r} is outside [{lo:g}, {hi:g}]; below it the noise "
                              "swamps every signal (and calibration fails), above it there is no privacy left")
    for key, seeds in (("seeds", config["seeds"]), ("split.seed", [config["split"]["seed"]])):
        for seed in seeds:
            if not (isinstance(seed, int) and 0 <= seed <= MAX_SEED):
                raise ConfigError(f"config key {key}: {seed!r} is not a seed; seeds are integers in [0, 2**32 - 1]")
    n_samples = config["generate"]["n_samples"]
    need = _min_samples(config)
    if n_samples < need[0]:
        raise ConfigError(f"config key generate.n_samples: {n_samples} samples are too few; at least {need[0]} ({need[1]})")


def _min_samples(config: dict[str, Any]) -> tuple[int, str]:
    metrics = set(config["evaluate"]["metrics"])
    if metrics & {"prdc_effnetlite0"}:
        from dpmedgen.metrics.fidelity import PRDC_NEAREST_K

        return PRDC_NEAREST_K + 2, f"prdc_effnetlite0 uses k = {PRDC_NEAREST_K} nearest neighbours among the samples"
    if metrics & {"fid_effnetlite0", "kid_effnetlite0", "fid_inception"}:
        return 2, "FID/KID estimate a covariance"
    return 2, "the metrics compare sets of images"


def _check_models_build(config: dict[str, Any]) -> None:
    """Build every model at the working resolution on PyTorch's `meta` device (no memory, no weights; on the
    CPU for layers that cannot initialise there, under a second even at the paper's size): a parameter the
    model refuses (e.g. DDPM's norm_num_groups not dividing a block's channels) fails here."""
    import torch

    from dpmedgen.models import MODELS

    for name in config["models"]:
        params = model_params(config, name)
        try:
            try:
                with torch.device("meta"):
                    MODELS.get(name)(image_size=config["image_size"], **params)
            except Exception:  # noqa: BLE001 - some layers cannot initialise on `meta` (spectral norm): try the CPU
                MODELS.get(name)(image_size=config["image_size"], **params)
        except (TypeError, ValueError, RuntimeError, AssertionError) as err:
            named = [k for k in params if k in str(err)]
            key = f"models.{name}" + (f".{named[0]}" if len(named) == 1 else "")
            raise ConfigError(f"config key {key}: {err} (models.{name}: {params})") from None


def _check_devices(config: dict[str, Any]) -> None:
    """A `cuda` device must exist on this machine (`auto` picks one when there is one). A study submitted to a
    cluster (`--executor` / `--profile slurm`) is planned on a login node without GPUs: not checked there."""
    import torch

    if _cluster_executor():
        return
    for name in config["models"]:
        device = str(train_settings(config, name).get("device", "auto"))
        if not device.startswith("cuda"):
            continue
        key = f"models.{name}.train.device" if "device" in ((config["models"][name] or {}).get("train") or {}) else "train.device"
        if not torch.cuda.is_available():
            raise ConfigError(f"config key {key}: {device!r}, but this machine has no CUDA device (torch "
                              f"{torch.__version__}, cuda available: False); use 'auto' or 'cpu'")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"config key {key}: {device!r}, but this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s) (cuda:0-cuda:{torch.cuda.device_count() - 1})")


def _cluster_executor() -> bool:
    """Whether the running Snakemake will submit jobs elsewhere: `--jobs` / a profile's `jobs:` (the executor
    itself is not known while the Snakefile is parsed; rules/common.smk uses the same test)."""
    workflow = _running_workflow()
    if workflow is None:
        return False
    try:
        return workflow.global_resources["_nodes"].value is not None
    except (AttributeError, KeyError, TypeError):
        return False


# --------------------------------------------------------------------------------------------- the cohort


class Cohort:
    """A dataset's patients per split and class as the split stage will make them (`dpmedgen.data.split`), and
    images per patient; `origin` says where the numbers come from (for messages)."""

    def __init__(self, counts: dict[str, dict[int, int]], images: dict[str, dict[int, int]], origin: str) -> None:
        self.counts, self.images, self.origin = counts, images, origin

    def train(self, label: int | None = None, unit: str = "patient") -> int:
        table = self.counts if unit == "patient" else self.images
        per_label = table.get("train", {})
        return sum(per_label.values()) if label is None else per_label.get(label, 0)

    def labels(self) -> list[int]:
        return sorted({c for per in self.counts.values() for c, n in per.items() if n > 0})


def _phantom_params(config: dict[str, Any], dataset: str) -> dict[str, Any]:
    from dpmedgen.data.phantom import make_brain_phantom

    defaults = {k: p.default for k, p in inspect.signature(make_brain_phantom).parameters.items()}
    return defaults | dict(config["datasets"][dataset].get("params") or {})


def _phantom_counts(n_patients: int, impaired_fraction: float, fractions: dict[str, float]) -> dict[str, dict[int, int]]:
    """Patients per split and label, exactly as make_brain_phantom labels them and split_patients cuts them."""
    from dpmedgen.data.split import _allocate, _check_fractions

    n_impaired = int(round(impaired_fraction * n_patients))
    per_label = {0: n_patients - n_impaired, 1: n_impaired}
    fracs = _check_fractions(fractions)
    counts: dict[str, dict[int, int]] = {s: {} for s in fracs}
    for label, n in per_label.items():
        if n:
            for split, k in _allocate(n, fracs).items():
                counts[split][label] = k
    return counts


def _check_phantom_params(config: dict[str, Any], dataset: str) -> None:
    params = _phantom_params(config, dataset)
    key = f"datasets.{dataset}.params"

    def need(name: str, ok: bool, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"config key {key}.{name}: {params[name]!r} is not allowed; {allowed}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    need("n_patients", is_int(params["n_patients"]) and 1 <= params["n_patients"] <= 10**6, "an integer in [1, 10**6]")
    need("slices_per_patient", is_int(params["slices_per_patient"]) and 1 <= params["slices_per_patient"] <= 181,
         "an integer in [1, 181] (axial slices of the 1 mm template)")
    size = params["size"]
    need("size", is_int(size) and config["image_size"] <= size <= 1024,
         f"an integer from image_size ({config['image_size']}: generating below the working resolution only "
         "upsamples blur) to 1024")
    need("impaired_fraction", is_num(params["impaired_fraction"]) and 0 <= params["impaired_fraction"] <= 1, "a number in [0, 1]")
    need("seed", is_int(params["seed"]) and 0 <= params["seed"] <= MAX_SEED, "an integer in [0, 2**32 - 1]")
    for name in ("noise_level", "pet_noise_level", "deformation_mm", "scale_range", "rotation_deg", "pet_fwhm_mm",
                 "atrophy_strength", "hypometabolism_strength"):
        need(name, is_num(params[name]) and params[name] >= 0, "a finite number >= 0")
    need("z_jitter", is_int(params["z_jitter"]) and params["z_jitter"] >= 0, "an integer >= 0")
    z = params["z_range"]
    need("z_range", isinstance(z, (list, tuple)) and len(z) == 2 and all(is_int(v) for v in z) and 0 <= z[0] <= z[1] <= 181,
         "two increasing integers in [0, 181]")


def planned_cohort(config: dict[str, Any], dataset: str) -> Cohort | None:
    """The dataset's split as the pipeline will make it, when that is known before any job: computed for the
    embedded phantom; read from `<results_dir>/<dataset>/splits.parquet` for a dataset split before; else None
    (a downloaded dataset's size is unknown until it is downloaded)."""
    fractions = config["split"]["fractions"]
    if dataset_source(config, dataset) == "brain_phantom":
        params = _phantom_params(config, dataset)
        counts = _phantom_counts(params["n_patients"], params["impaired_fraction"], fractions)
        slices = params["slices_per_patient"]
        images = {s: {c: n * slices for c, n in per.items()} for s, per in counts.items()}
        origin = (f"datasets.{dataset}.params: n_patients {params['n_patients']}, impaired_fraction "
                  f"{params['impaired_fraction']}, split.fractions {dict(fractions)}")
        return Cohort(counts, images, origin)
    path = Path(config.get("results_dir", "results")) / dataset / "splits.parquet"
    if not path.is_file():
        return None
    import pandas as pd

    try:
        table = pd.read_parquet(path, columns=["split", "label", "n_images"])
    except Exception:  # noqa: BLE001 - a damaged table is the split job's to redo, not the planner's
        return None
    counts: dict[str, dict[int, int]] = {}
    images: dict[str, dict[int, int]] = {}
    for (split, label), group in table.groupby(["split", "label"]):
        counts.setdefault(str(split), {})[int(label)] = len(group)
        images.setdefault(str(split), {})[int(label)] = int(group["n_images"].sum())
    return Cohort(counts, images, f"the existing split table {path}")


def _class_generators(config: dict[str, Any], model: str) -> bool:
    from dpmedgen.models import MODELS

    return bool(train_settings(config, model).get("class_generators")) and MODELS.get(model).kind != "fusion"


def _delta_modes(config: dict[str, Any]) -> dict[str, str]:
    """Private modes of the study that state a formal (epsilon, delta) guarantee with delta > 0 for the
    training data -> their unit (DP-SGD; Gaussian input perturbation and functional mechanism)."""
    from dpmedgen.privacy import PRIVACY_MODES

    out = {}
    for mode in config["privacy"]["modes"]:
        if mode == NON_PRIVATE:
            continue
        cls = PRIVACY_MODES.get(mode)
        params = privacy_params(config, mode)
        noise = params.get("noise", getattr(cls, "noise", None) or _default(cls, "noise"))
        if cls.reuses_nonprivate_training:  # output perturbation: no guarantee for the training data
            continue
        if mode == "dpsgd" or noise == "gaussian":
            out[mode] = params.get("unit", _default(cls, "unit") or "patient")
    return out


def _default(cls, name: str) -> Any:
    parameter = inspect.signature(cls.__init__).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def _check_cohorts(config: dict[str, Any]) -> None:
    """Split, batch sizes, canaries and delta against the training patients (see `planned_cohort`)."""
    fractions = config["split"]["fractions"]
    positive = [s for s in ("train", "val", "test") if fractions.get(s, 0) > 0]
    grid = runs(config)
    delta = float(config["privacy"]["delta"])
    delta_modes = _delta_modes(config)
    for dataset in config["datasets"]:
        phantom = dataset_source(config, dataset) == "brain_phantom"
        if phantom:
            _check_phantom_params(config, dataset)
        cohort = planned_cohort(config, dataset)
        if cohort is None:
            continue
        models = [m for m in config["models"] if any(r.dataset == dataset and r.model == m for r in grid)]
        two_classes = "downstream" in config["evaluate"]["metrics"] or any(_class_generators(config, m) for m in models)
        key = f"datasets.{dataset}.params"
        if phantom:
            params = _phantom_params(config, dataset)
            if two_classes and len(cohort.labels()) < 2 and 0 < params["impaired_fraction"] < 1:
                raise ConfigError(
                    f"config key {key}.n_patients: {params['n_patients']} patients with impaired_fraction "
                    f"{params['impaired_fraction']} make a cohort of one class; train.class_generators and the "
                    "downstream metric need both classes in every split. The smallest n_patients that works with "
                    f"these fractions is {_smallest_phantom(params['impaired_fraction'], fractions)}")
            if two_classes and len(cohort.labels()) < 2:
                raise ConfigError(
                    f"config key {key}.impaired_fraction: {params['impaired_fraction']!r} gives a cohort of one class "
                    f"({params['n_patients']} patients); train.class_generators and the downstream metric need both "
                    "classes: choose a fraction strictly between 0 and 1")
            for label in cohort.labels():
                empty = [s for s in positive if cohort.counts.get(s, {}).get(label, 0) == 0]
                if empty:
                    smallest = _smallest_phantom(params["impaired_fraction"], fractions)
                    raise ConfigError(
                        f"config key {key}.n_patients: {params['n_patients']} patients (impaired_fraction "
                        f"{params['impaired_fraction']}) leave split {empty[0]!r} without a patient of class {label}; "
                        f"every split with a positive fraction ({', '.join(positive)}) needs a patient of every class. "
                        f"The smallest n_patients that works with these fractions is {smallest}")
        n_train = cohort.train()
        canaries = int(config["split"].get("canary_patients", 0) or 0)
        if canaries > n_train:
            raise ConfigError(f"config key split.canary_patients: {canaries} canaries, but dataset {dataset} has only "
                              f"{n_train} train patients ({cohort.origin}); choose at most {n_train}")
        for model in models:
            override = ((config["models"][model] or {}).get("train") or {})
            bkey = f"models.{model}.train.batch_size" if "batch_size" in override else "train.batch_size"
            batch = int(train_settings(config, model)["batch_size"])
            if batch > n_train:
                raise ConfigError(f"config key {bkey}: {batch} is larger than the {n_train} training patients of dataset "
                                  f"{dataset} ({cohort.origin}); choose at most {n_train}")
        protected = []  # (N, mode, unit, model, class label or None): every formal guarantee of this dataset
        for mode, unit in delta_modes.items():
            for model in models:
                if not any(r.dataset == dataset and r.model == model and r.privacy == mode for r in grid):
                    continue
                per_class = _class_generators(config, model) and len(cohort.labels()) >= 2
                labels = cohort.labels() if per_class else [None]
                protected += [(cohort.train(label, unit), mode, unit, model, label) for label in labels]
        if protected:
            n, mode, unit, model, label = min(protected, key=lambda t: t[0])
            if n < 1 or delta >= 1.0 / n:
                who = f"the generator of class {label} (train.class_generators)" if label is not None else "the model"
                raise ConfigError(
                    f"config key privacy.delta: {delta:g} is not below 1/N = 1/{n}: mode {mode} protects N = {n} "
                    f"training {unit}s of {who} for {model} on dataset {dataset} ({cohort.origin}); a delta that "
                    f"large permits releasing a whole record. Choose delta < {1.0 / max(n, 1):.3g} (1/N), usually "
                    "much smaller (e.g. 1e-5)")


def _smallest_phantom(impaired_fraction: float, fractions: dict[str, float]) -> int | str:
    positive = [s for s in ("train", "val", "test") if fractions.get(s, 0) > 0]
    for n in range(1, 100_000):
        counts = _phantom_counts(n, impaired_fraction, fractions)
        labels = {c for per in counts.values() for c, k in per.items() if k > 0}
        if len(labels) == (2 if 0 < impaired_fraction < 1 else 1) and all(
            counts.get(s, {}).get(c, 0) > 0 for s in positive for c in labels
        ):
            return n
    return "above 100,000"



# ------------------------------------------------------------------------------------ one study per results_dir

#: Open lock files of this process (results folder -> handle): the lock lives as long as the process.
_RESULTS_LOCKS: dict[Path, Any] = {}
LOCK_NAME = ".dpmedgen.lock"
#: Snakemake options that run no job: they neither take nor wait for the results lock.
_READ_ONLY_OPTIONS = (
    "--lint", "--unlock", "--summary", "--detailed-summary", "--list-rules", "--list-target-rules", "--list-changes",
    "--list-input-changes", "--list-params-changes", "--list-code-changes", "--list-untracked", "--report", "--dag",
    "--rulegraph", "--filegraph", "--d3dag", "--containerize", "--export-cwl", "--print-compilation",
    "--generate-unit-tests", "--archive", "--conda-create-envs-only", "--create-envs-only", "--cleanup-shadow",
    "--help", "--version",
)


def _runs_jobs(workflow: Any, argv: list[str]) -> bool:
    """Whether this Snakemake invocation may run jobs: the main process, not a dry run nor a read-only option."""
    if not getattr(workflow, "is_main_process", True):
        return False  # a job's own Snakemake (cluster / subprocess): its main process holds the lock
    if getattr(getattr(workflow, "output_settings", None), "dryrun", False):
        return False
    for arg in argv[1:]:
        if arg in ("-S", "-D", "-l", "-n") or any(arg == o or arg.startswith(o + "=") for o in _READ_ONLY_OPTIONS):
            return False
    return True


def hold_results_lock(config: dict[str, Any], *, force: bool = False) -> Path | None:
    """Lock `<results_dir>/.dpmedgen.lock` (fcntl.flock) for the life of this process, or raise ConfigError
    naming the process that holds it. Snakemake's own lock does not keep two studies apart: when any run
    ends, its cleanup removes the whole `.snakemake/locks` folder, so a second invocation on the same results
    starts writing into them. Called by `check_config` inside Snakemake for every invocation that may run
    jobs (`force` skips that test); dry runs, `--lint`, `--summary` etc. neither take nor wait for it."""
    import fcntl
    import os
    import socket
    import sys
    import time

    if not force and not _runs_jobs(_running_workflow(), sys.argv):
        return None
    folder = Path(config.get("results_dir", "results")).resolve()
    if folder in _RESULTS_LOCKS:
        return folder / LOCK_NAME
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(
            f"config key results_dir: {config.get('results_dir', 'results')!r} is in use by another Snakemake run "
            f"({holder}); two runs writing one study would corrupt it. Wait for that run to end, or give this "
            "study another results_dir."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                 f"{' '.join(sys.argv)[:500]}\n")
    handle.flush()
    _RESULTS_LOCKS[folder] = handle
    return path

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
        for d, m, (p, e), s in itertools.product(studied_datasets(config), config["models"], privacy, config["seeds"])
        if MODELS.get(m).kind in PRIVACY_MODES.get(p).supported_kinds and (d, m) not in missing
    ]


def studied_datasets(config: dict[str, Any]) -> list[str]:
    """The datasets the grid runs on: every `datasets` entry but the `public` ones (pretraining data only)."""
    return [d for d, entry in config["datasets"].items() if not entry.get("public", False)]


def pretrain_source(config: dict[str, Any], dataset: str) -> str | None:
    """The public dataset whose pretrained weights every run on `dataset` starts from (`pretrain_on`), or None."""
    return config["datasets"][dataset].get("pretrain_on")


#: The training settings a pretraining uses (its steps and seed are `pretrain`'s): changing the others, e.g.
#: `train.steps`, does not pretrain again.
PRETRAIN_TRAIN_KEYS = ("batch_size", "lr", "beta1", "beta2", "amp", "device")


def pretrain_settings(config: dict[str, Any], model: str) -> dict[str, Any]:
    """`pretrain` with its defaults and the model's overrides (`models.<model>.pretrain`), and under `train` the
    model's training settings that pretraining uses (`PRETRAIN_TRAIN_KEYS`); the override's `lr` (per role)
    replaces the training learning rates for pretraining only."""
    override = dict((config["models"].get(model) or {}).get("pretrain") or {})
    lr = override.pop("lr", None) or {}  # per role, over the training rates: a fine-tuning rate may be lower
    settings = {"steps": 1000, "seed": 0} | dict(config.get("pretrain") or {}) | override
    train = train_settings(config, model)
    picked = {k: train[k] for k in PRETRAIN_TRAIN_KEYS if k in train}
    if lr:
        picked["lr"] = dict(picked.get("lr") or {}) | dict(lr)
    return settings | {"train": picked}


def _check_pretraining(config: dict[str, Any]) -> None:
    datasets = config["datasets"]
    if not studied_datasets(config):
        raise ConfigError("config key datasets: every dataset is `public: true`; the study needs one to run on")
    for name, entry in datasets.items():
        source = entry.get("pretrain_on")
        if source is None:
            continue
        key = f"datasets.{name}.pretrain_on"
        if entry.get("public", False):
            raise ConfigError(f"config key {key}: a public dataset is not studied, so it is not pretrained on another")
        if source not in datasets or not datasets[source].get("public", False):
            public = [d for d, e in datasets.items() if e.get("public", False)]
            raise ConfigError(f"config key {key}: {source!r} is not a dataset with `public: true`; public datasets: {public}")
        if datasets[source]["modality"] != entry["modality"]:
            raise ConfigError(
                f"config key {key}: {source!r} has modality {datasets[source]['modality']!r}, "
                f"{name!r} trains on {entry['modality']!r}; pretrain on the same modality"
            )
        missing = missing_modalities(config)
        for model in sorted({r.model for r in runs(config) if r.dataset == name}):
            if (source, model) in missing:
                raise ConfigError(f"config key {key}: model {model!r} needs modalities {missing[(source, model)]} "
                                  f"that the public dataset {source!r} does not have")


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


#: Keys of a `models.<model>` entry that are overrides of other sections, not constructor parameters.
MODEL_OVERRIDE_KEYS = ("train", "pretrain", "dpsgd")


def model_params(config: dict[str, Any], model: str) -> dict[str, Any]:
    """Constructor parameters of `model` (`models.<model>` in config, without its overrides of other sections)."""
    params = dict(config["models"].get(model) or {})
    for key in MODEL_OVERRIDE_KEYS:
        params.pop(key, None)
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


def privacy_params(config: dict[str, Any], mode: str, model: str | None = None) -> dict[str, Any]:
    """Mode-specific parameters (`privacy.<mode>` in config); for DP-SGD with the `model`'s overrides
    (`models.<model>.dpsgd`, e.g. its clipping norm: per-example gradient norms differ by model)."""
    params = dict(config["privacy"].get(mode) or {})
    if mode == "dpsgd" and model is not None:
        params |= dict((config["models"].get(model) or {}).get("dpsgd") or {})
    return params


def resources(config: dict[str, Any], rule: str) -> dict[str, Any]:
    """threads / mem_mb / runtime / gpu for a rule, falling back to resources.default."""
    base = {"threads": 1, "mem_mb": 2000, "runtime": 20, "gpu": 0}
    table = config.get("resources") or {}
    return base | dict(table.get("default") or {}) | dict(table.get(rule) or {})
