"""Stage settings (`dpmedgen.settings`): one object per config section, its defaults the schema's."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from dpmedgen.config import SCHEMA, ConfigError
from dpmedgen.settings import EvaluateSettings, GenerateSettings, PlotSettings, schema_defaults

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"generate": GenerateSettings, "evaluate": EvaluateSettings, "plot": PlotSettings}


@pytest.mark.parametrize("section", sorted(SETTINGS))
def test_each_settings_object_has_exactly_the_keys_of_its_schema_section(section):
    properties = yaml.safe_load(SCHEMA.read_text())["properties"][section]["properties"]
    assert {f.name for f in dataclasses.fields(SETTINGS[section])} == set(properties)


@pytest.mark.parametrize("section", sorted(SETTINGS))
def test_config_yaml_gives_the_same_settings_as_the_schema_defaults(section):
    default_study = yaml.safe_load((ROOT / "config.yaml").read_text())[section]
    built = SETTINGS[section].from_config(default_study)
    assert built == SETTINGS[section].from_config(schema_defaults(section))
    for key, value in default_study.items():
        assert getattr(built, key) == (tuple(value) if isinstance(value, list) else value), key


def test_missing_keys_take_the_schema_default_and_given_ones_win():
    settings = EvaluateSettings.from_config({"metrics": ["ssim_nn"], "downstream_epochs": 3})
    assert settings.metrics == ("ssim_nn",) and settings.downstream_epochs == 3
    assert settings.split == schema_defaults("evaluate")["split"] == "test"
    assert settings.nonmember_splits == ("val", "test") and settings.inception_weights is None
    assert PlotSettings.from_config(None).image_indices is None
    assert PlotSettings.from_config({"image_indices": [3, 1]}).image_indices == (3, 1)
    assert GenerateSettings.from_config({"n_samples": 7}).n_samples == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.split = "val"


def test_an_unknown_key_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"evaluate: unknown key\(s\) \['splitt'\]"):
        EvaluateSettings.from_config({"metrics": ["ssim_nn"], "splitt": "val"})


def test_no_rule_repeats_a_default_of_the_config():
    """Rules read validated config values (Snakemake fills the schema's defaults): `config[...].get(key, d)`
    would write a second default that can drift from the schema's. A dataset's optional `params` / `downloads`
    are the adapter's own (the schema has no defaults inside `datasets`), so `{}` there is not a config default."""
    offenders = [
        f"{path.name}: {line.strip()}"
        for path in sorted((ROOT / "rules").glob("*.smk")) + [ROOT / "Snakefile"]
        for line in path.read_text().splitlines()
        if re.search(r"config(\[[^\]]+\])*\.get\([^,()]+,", line) and 'config["datasets"]' not in line
    ]
    assert offenders == []
