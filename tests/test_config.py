"""Config schema, registry checks and grid expansion."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import yaml

from dpmedgen.config import ConfigError, check_config, load_config, runs, skipped_pairs, validate_schema
from dpmedgen.runs import RunSpec, format_epsilon, parse_epsilon

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def config() -> dict:
    return yaml.safe_load((ROOT / "config.yaml").read_text())


@pytest.mark.parametrize("path", ["config.yaml", "configs/ci.yaml", "configs/paper.yaml"])
def test_shipped_configs_are_valid(path):
    load_config(ROOT / path)


def test_default_grid(config):
    grid = runs(config)
    assert RunSpec("brain_phantom", "dcgan", "none", math.inf, 0) in grid
    assert RunSpec("brain_phantom", "dcgan", "dpsgd", 1.0, 1) in grid
    private = [m for m in config["privacy"]["modes"] if m != "none"]
    per_model = len(config["seeds"]) * (1 + len(private) * len(config["privacy"]["epsilons"]))
    skipped = skipped_pairs(config)
    assert skipped == [("ddcgan", "functional"), ("ddpm", "functional")]
    n_eps, n_seeds = len(config["privacy"]["epsilons"]), len(config["seeds"])
    assert len(grid) == len(config["models"]) * per_model - len(skipped) * n_eps * n_seeds
    assert {r.privacy for r in grid} == set(config["privacy"]["modes"])
    for model in ("dcgan", "sngan", "ddcgan", "ddpm"):
        assert {"none", "dpsgd"} <= {r.privacy for r in grid if r.model == model}, model
    assert len(config["seeds"]) >= 2 and {1, 10} <= set(config["privacy"]["epsilons"])


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda c: c.update(image_size=48), "image_size"),
        (lambda c: c["train"].update(steps="many"), "train.steps"),
        (lambda c: c["models"]["ddcgan"]["train"].update(steps=0), "models.ddcgan.train.steps"),
        (lambda c: c["models"]["ddpm"]["train"].update(lr={"critic": 1e-3}), "models.ddpm.train.lr"),
        (lambda c: c.update(unknown_key=1), "(top level)"),
        (lambda c: c["privacy"].update(delta=2), "privacy.delta"),
        (lambda c: c["audit"].update(n_canary_patients=1), "audit.n_canary_patients"),
    ],
)
def test_schema_errors_name_the_key(config, mutate, key):
    mutate(config)
    with pytest.raises(ConfigError, match=re.escape(f"config key {key}")):
        validate_schema(config)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c["models"].update(stylegan={}), "models.stylegan: unknown model"),
        (lambda c: c["privacy"].update(modes=["none", "dp_sgd"]), "unknown privacy mode 'dp_sgd'"),
        (lambda c: c["evaluate"].update(metrics=["inception_fid"]), "unknown metric 'inception_fid'"),
        (lambda c: c["split"]["fractions"].update(train=0.9), "fractions must sum to 1"),
        (lambda c: c["privacy"].update(epsilons=[]), "need at least one epsilon"),
        (lambda c: c["privacy"]["dpsgd"].update(unit="slice"), "privacy.dpsgd: .*unit must be one of"),
        (lambda c: c["privacy"]["dpsgd"].update(clip=1.0), "privacy.dpsgd.clip: not a parameter of dpsgd"),
        (lambda c: c["privacy"].update(dp_sgd={}), "privacy.dp_sgd: unknown privacy mode"),
        (lambda c: c["models"]["ddpm"].update(channel_mult=[1, 2]), "models.ddpm.channel_mult: not a parameter of ddpm"),
        (lambda c: c.update(models={"ddpm": {}}) or c["privacy"].update(modes=["functional"]),
         "no model supports any listed privacy mode"),
        (lambda c: c["evaluate"].update(nonmember_splits=["val"]) or c["split"].update(fractions={"train": 0.7, "val": 0.0, "test": 0.3}),
         "evaluate.nonmember_splits: split 'val' has no patients"),
        (lambda c: c["evaluate"].update(inception_weights="/nonexistent/inception.pt"),
         "evaluate.inception_weights: no file /nonexistent/inception.pt"),
        (lambda c: c["plot"].update(privacy_utility_metrics=["fid"]), "plot.privacy_utility_metrics: unknown metric 'fid'"),
        (lambda c: c["datasets"]["brain_phantom"]["params"].update(n_subjects=3),
         "datasets.brain_phantom.params: 'n_subjects' is not a parameter of dataset 'brain_phantom'"),
        (lambda c: c["datasets"].update(mine={"modality": "mri", "source": "oasis_3"}), "datasets.mine.source: unknown dataset 'oasis_3'"),
        (lambda c: c["datasets"].update(nih={"modality": "xray"}), "datasets.nih: unknown dataset 'nih'"),
        (lambda c: c["datasets"]["brain_phantom"].update(modality="ct"),
         r"datasets.brain_phantom.modality: dataset 'brain_phantom' has no modality 'ct'; it has \['mri', 'pet'\]"),
        (lambda c: c["datasets"]["brain_phantom"].update(downloads={"x.zip": {"url": "http://127.0.0.1/x.zip"}}),
         "datasets.brain_phantom.downloads.x.zip: the dataset has no file 'x.zip'"),
        (lambda c: c.update(models={"ddcgan": {"modalities": ["mri", "ct"]}}),
         r"datasets.brain_phantom: no model of the study can train on it \(the models lack modalities {'ddcgan': \['ct'\]}"),
    ],
)
def test_semantic_errors_name_the_key(config, mutate, message):
    mutate(config)
    validate_schema(config)
    with pytest.raises(ConfigError, match=message):
        check_config(config)


def test_epsilon_spelling_round_trips():
    """The value in the path is the configured float, to the last digit (a run trains at the path's value)."""
    import re

    pattern = re.compile(r"inf|[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?")  # the epsilon wildcard of rules/common.smk
    for eps in (0.1, 0.5, 1.0, 10.0, math.inf, 2.7182818, 1234567.0, 1e-5, 0.1 + 0.2, 3.0e-7, 1e300, 123456789.125):
        text = format_epsilon(eps)
        assert parse_epsilon(text) == eps and pattern.fullmatch(text), (eps, text)
    assert format_epsilon(1.0) == "1" and format_epsilon(math.inf) == "inf" and format_epsilon(1234567) == "1234567"
    with pytest.raises(ValueError):
        parse_epsilon("-1")


def test_command_line_overrides_are_typed_again(config):
    """`snakemake --config seeds=[0,1,2]` (README) gives strings inside lists; they must validate as numbers."""
    from snakemake.cli import parse_config
    from snakemake.utils import update_config

    from dpmedgen.config import coerce_command_line_values

    update_config(config, parse_config(["seeds=[0,1,2]", "privacy={epsilons: [0.5, 1e1], delta: 1e-5}"]))
    assert config["seeds"] == ["0", "1", "2"]  # what Snakemake hands over
    coerce_command_line_values(config)
    assert config["seeds"] == [0, 1, 2] and config["privacy"]["epsilons"] == [0.5, 10.0]
    assert config["privacy"]["delta"] == 1e-5 and config["privacy"]["modes"][0] == "none"
    assert config["evaluate"]["inception_weights"] is None and config["datasets"]["brain_phantom"]["modality"] == "mri"
    validate_schema(config)
    check_config(config)


@pytest.mark.parametrize("name", ["ci.yaml", "paper.yaml"])
def test_shipped_configs_set_every_key_of_the_default(name):
    """Snakemake merges `--configfile` over config.yaml key by key: a key the file leaves out would silently
    keep the default study's value (e.g. a model's `train.steps`)."""
    from snakemake.utils import update_config

    override = yaml.safe_load((ROOT / "configs" / name).read_text())
    merged = yaml.safe_load((ROOT / "config.yaml").read_text())
    update_config(merged, override)
    assert merged == override


def test_paper_grid():
    config = load_config(ROOT / "configs" / "paper.yaml")
    grid = runs(config)
    assert config["image_size"] == 128 and config["seeds"] == [0, 1, 2, 3, 4]
    assert sorted(config["privacy"]["epsilons"]) == [0.1, 0.5, 1, 2, 5, 10]
    per_seed = {}
    for r in grid:
        per_seed.setdefault(r.model, set()).add((r.privacy, r.epsilon))
    # functional applies to the unconditional GANs only: 1 + 6 x 6 runs for them, 1 + 5 x 6 for the others
    assert {m: len(v) for m, v in per_seed.items()} == {"dcgan": 37, "sngan": 37, "ddcgan": 31, "ddpm": 31}
    assert len(grid) == 5 * (37 + 37 + 31 + 31)


def test_conda_env_has_every_library_dependency():
    """envs/dpmedgen.yaml (jobs under `--sdm conda`) lists what pyproject.toml installs, except what only the
    Snakemake process itself needs."""
    import tomllib

    def name(requirement: str) -> str:
        return re.split(r"[<>=!\[ ;]", requirement.strip(), maxsplit=1)[0].lower()

    project = {name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    env = yaml.safe_load((ROOT / "envs" / "dpmedgen.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {name(r) for r in pip if not r.startswith("--")}
    assert project - {"snakemake", "snakemake-executor-plugin-slurm", "jsonschema"} <= listed


def test_the_schema_accepts_every_resource_key_the_rules_read(config):
    import re
    from pathlib import Path

    rules = "".join(p.read_text() for p in (Path(__file__).resolve().parents[1] / "rules").glob("*.smk"))
    read = set(re.findall(r'resources\(config, "(\w+)"\)', rules))
    assert {"download", "preprocess", "split", "train"} <= read
    validate_schema(config | {"resources": {name: {"threads": 1} for name in read | {"default"}}})


def test_readme_never_puts_a_target_after_configfile():
    """`--configfile` takes several files: a target after it is read as a config file (FileNotFoundError)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert not re.search(r"--configfile \S+ (paper|all)\b", readme)


# maps whose keys the user names (a dataset, a model) or whose value objects double as partial overrides (the
# `train` definition is also the shape of `models.<m>.train`), so their entries carry no schema default
_NO_DEFAULTS = {"datasets", "models", "train", "resources"}


def _schema_properties(schema: dict, node: dict, path: str = ""):
    """(dotted key, its schema, whether it sits at a fixed path) for every property, definitions resolved."""
    if "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[-1]] | {k: v for k, v in node.items() if k != "$ref"}
    for key, sub in node.get("properties", {}).items():
        dotted = f"{path}.{key}" if path else key
        yield dotted, sub
        yield from _schema_properties(schema, sub, dotted)
    for key in ("additionalProperties", "items"):
        if isinstance(node.get(key), dict):
            yield from _schema_properties(schema, node[key], f"{path}.*")


def test_the_schema_describes_every_key_and_its_defaults_are_config_yaml():
    """Every key of the schema has a `description:`; every key config.yaml sets at a fixed path has a `default:`
    equal to config.yaml's value (config.yaml is the default study; the schema documents it and cannot drift)."""
    schema = yaml.safe_load((ROOT / "schemas" / "config.schema.yaml").read_text())
    default_config = yaml.safe_load((ROOT / "config.yaml").read_text())
    properties = dict(_schema_properties(schema, schema))
    assert len(properties) > 80
    assert [key for key, sub in properties.items() if "description" not in sub] == []

    def leaves(value, path=""):
        if isinstance(value, dict) and path.split(".")[0] not in _NO_DEFAULTS:
            for key, sub in value.items():
                yield from leaves(sub, f"{path}.{key}" if path else key)
        elif path.split(".")[0] not in _NO_DEFAULTS:
            yield path, value

    checked = 0
    for key, value in leaves(default_config):
        sub = properties.get(key) or properties.get(".".join(key.split(".")[:-1] + ["*"]))
        assert sub is not None and "default" in sub, f"{key}: no schema default"
        assert sub["default"] == value, f"{key}: schema default {sub['default']!r}, config.yaml {value!r}"
        checked += 1
    assert checked > 25
