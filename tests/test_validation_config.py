"""Bad input never reaches a job: every malformed config is refused by the schema or `check_config` before
any job, with a message naming its key (issue #22). One row per case, on the CI config with its output folders
moved to a temporary folder; each row also checks that nothing was written there."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from dpmedgen.config import (
    MAX_CONFIG_VALUES,
    ConfigError,
    check_config,
    check_size,
    coerce_command_line_values,
    planned_cohort,
    validate_schema,
)

ROOT = Path(__file__).resolve().parents[1]
NAN = float("nan")


@pytest.fixture(scope="module")
def ci_config() -> dict:
    return yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())


def _phantom(c: dict) -> dict:
    return c["datasets"]["brain_phantom"]["params"]


def _rename_dataset(c: dict, name: str) -> None:
    entry = c["datasets"].pop("brain_phantom")
    c["datasets"][name] = entry | {"source": "brain_phantom"}


CASES = [
    # privacy
    ("delta 0.2", lambda c: c["privacy"].update(delta=0.2), "privacy.delta"),
    ("delta 0.5", lambda c: c["privacy"].update(delta=0.5), "privacy.delta"),
    ("delta >= 1/N of a class generator",
     lambda c: _phantom(c).update(n_patients=1200) or c["privacy"].update(delta=0.005), "privacy.delta"),
    ("max_grad_norm nan", lambda c: c["privacy"]["dpsgd"].update(max_grad_norm=NAN), "privacy.dpsgd.max_grad_norm"),
    ("max_grad_norm 0", lambda c: c["privacy"]["dpsgd"].update(max_grad_norm=0), "privacy.dpsgd.max_grad_norm"),
    ("max_grad_norm -1", lambda c: c["privacy"]["dpsgd"].update(max_grad_norm=-1), "privacy.dpsgd.max_grad_norm"),
    ("a model's max_grad_norm 0", lambda c: c["models"]["dcgan"].update(dpsgd={"max_grad_norm": 0}),
     "models.dcgan.dpsgd.max_grad_norm"),
    ("a model's dpsgd unit", lambda c: c["models"]["dcgan"].update(dpsgd={"unit": "image"}), "models.dcgan.dpsgd"),
    ("epsilon nan", lambda c: c["privacy"].update(epsilons=[NAN]), "privacy.epsilons"),
    ("epsilon 1e-300", lambda c: c["privacy"].update(epsilons=[1e-300]), "privacy.epsilons"),
    ("epsilon 1e308", lambda c: c["privacy"].update(epsilons=[1e308]), "privacy.epsilons"),
    ("epsilon inf", lambda c: c["privacy"].update(epsilons=[float("inf")]), "privacy.epsilons"),
    # training and models
    ("lr nan", lambda c: c["train"]["lr"].update(generator=NAN), "train.lr.generator"),
    ("batch larger than the cohort", lambda c: c["train"].update(batch_size=100_000), "train.batch_size"),
    ("model batch larger than the cohort",
     lambda c: c["models"]["ddpm"]["train"].update(batch_size=100_000), "models.ddpm.train.batch_size"),
    ("steps as a string", lambda c: c["train"].update(steps="20"), "train.steps"),
    ("norm_num_groups 3", lambda c: c["models"]["ddpm"].update(norm_num_groups=3), "models.ddpm"),
    ("block_out_channels []", lambda c: c["models"]["ddpm"].update(block_out_channels=[]), "models.ddpm.block_out_channels"),
    ("noise_draws 0", lambda c: c["models"]["ddpm"].update(noise_draws=0), "models.ddpm.noise_draws"),
    ("sampling_steps 0", lambda c: c["models"]["ddpm"].update(sampling_steps=0), "models.ddpm.sampling_steps"),
    ("a modality no dataset has", lambda c: c["models"]["ddcgan"].update(modalities=["mri", "pett"]),
     "models.ddcgan.modalities"),
    # data
    *[(f"n_patients {n}", (lambda n: lambda c: _phantom(c).update(n_patients=n))(n),
       "datasets.brain_phantom.params.n_patients") for n in (0, 1, 2, 4)],
    ("slices_per_patient 0", lambda c: _phantom(c).update(slices_per_patient=0),
     "datasets.brain_phantom.params.slices_per_patient"),
    ("size 10", lambda c: _phantom(c).update(size=10), "datasets.brain_phantom.params.size"),
    ("impaired_fraction 0", lambda c: _phantom(c).update(impaired_fraction=0),
     "datasets.brain_phantom.params.impaired_fraction"),
    ("impaired_fraction 1.5", lambda c: _phantom(c).update(impaired_fraction=1.5),
     "datasets.brain_phantom.params.impaired_fraction"),
    ("phantom seed 2**40", lambda c: _phantom(c).update(seed=2**40), "datasets.brain_phantom.params.seed"),
    ("more canaries than train patients", lambda c: c["split"].update(canary_patients=100_000), "split.canary_patients"),
    ("n_samples 3", lambda c: c["generate"].update(n_samples=3), "generate.n_samples"),
    # names and paths
    *[(f"dataset name {name[:20]!r}", (lambda name: lambda c: _rename_dataset(c, name))(name), "datasets")
      for name in ("../evil", "..", "brain/phantom", "brain phantom", "b" * 400)],
    ("results_dir ..", lambda c: c.update(results_dir=".."), "results_dir"),
    ("results_dir .", lambda c: c.update(results_dir="."), "results_dir"),
    ("results_dir src/dpmedgen", lambda c: c.update(results_dir=str(ROOT / "src" / "dpmedgen")), "results_dir"),
    ("results_dir the repository", lambda c: c.update(results_dir=str(ROOT)), "results_dir"),
    ("results_dir = resources_dir", lambda c: c.update(results_dir=c["resources_dir"]), "results_dir"),
    ("results_dir inside resources_dir", lambda c: c.update(results_dir=c["resources_dir"] + "/r"), "results_dir"),
    ("results_dir with {seed}", lambda c: c.update(results_dir=c["results_dir"] + "{seed}"), "results_dir"),
    ("results_dir with }", lambda c: c.update(results_dir=c["results_dir"] + "}"), "results_dir"),
    ("resources_dir with {", lambda c: c.update(resources_dir=c["resources_dir"] + "{"), "resources_dir"),
    ("seed 1e20", lambda c: c.update(seeds=[99999999999999999999]), "seeds"),
    ("seed 2**32", lambda c: c.update(seeds=[2**32]), "seeds"),
    ("split seed 2**32", lambda c: c["split"].update(seed=2**32), "split.seed"),
]


@pytest.mark.parametrize("mutate, key", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_config_is_refused_naming_its_key(ci_config, tmp_path, mutate, key):
    config = copy.deepcopy(ci_config)
    config.update(results_dir=str(tmp_path / "results"), resources_dir=str(tmp_path / "resources"))
    mutate(config)
    with pytest.raises(ConfigError, match=rf"^config key {re.escape(key)}\b") as err:
        validate_schema(config)
        check_config(config)
    assert len(str(err.value)) < 1200
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("where", ["train", "model"])
def test_a_cuda_device_this_machine_lacks_is_refused(ci_config, where):
    config = copy.deepcopy(ci_config)
    (config["train"] if where == "train" else config["models"]["ddpm"]["train"]).update(device="cuda")
    validate_schema(config)
    key = "train.device" if where == "train" else "models.ddpm.train.device"
    with pytest.raises(ConfigError, match=rf"config key {re.escape(key)}: 'cuda', but this machine has no CUDA device"):
        check_config(config)
    config["train"]["device"] = config["models"]["ddpm"]["train"]["device"] = "auto"
    check_config(config)


def test_messages_say_what_is_allowed(ci_config):
    """The value and the allowed range are in the message, not only the key."""
    expected = {
        "n_patients 4": r"4 patients .* The smallest n_patients that works with these fractions is 6",
        "delta >= 1/N of a class generator": r"0\.005 is not below 1/N = 1/300: .*class 0",
        "more canaries than train patients": r"100000 canaries, but dataset brain_phantom has only 6 train patients",
        "n_samples 3": r"3 samples are too few; at least 7",
        "size 10": r"10 is not allowed; an integer from image_size \(32",
        "results_dir src/dpmedgen": r"inside the source tree",
        "epsilon 1e-300": r"1e-300 is less than the minimum of 0\.001",
    }
    cases = {c[0]: c[1] for c in CASES}
    for name, pattern in expected.items():
        config = copy.deepcopy(ci_config)
        cases[name](config)
        with pytest.raises(ConfigError, match=pattern):
            validate_schema(config)
            check_config(config)


def test_the_phantom_cohort_is_computed_as_the_split_makes_it(ci_config):
    """`planned_cohort` matches the split stage's allocation (dpmedgen.data.split) patient for patient."""
    import numpy as np

    from dpmedgen.data.schema import ImageSet
    from dpmedgen.data.split import split_patients

    config = copy.deepcopy(ci_config)
    for n, fraction in ((12, 0.5), (37, 0.3), (6, 0.5), (101, 0.45)):
        _phantom(config).update(n_patients=n, impaired_fraction=fraction)
        cohort = planned_cohort(config, "brain_phantom")
        n_impaired = int(round(fraction * n))
        labels = np.array([1] * n_impaired + [0] * (n - n_impaired))
        images = ImageSet({"mri": np.zeros((n, 4, 4), np.float32)}, patient_id=[f"p{i:03d}" for i in range(n)],
                          slice=[0] * n, label=labels)
        table = split_patients(images, config["split"]["fractions"], seed=0)
        actual = {s: {int(k): int(v) for k, v in g.groupby("label").size().items()} for s, g in table.groupby("split")}
        assert {s: {c: k for c, k in per.items() if k} for s, per in cohort.counts.items()} == actual, (n, fraction)


def test_a_huge_config_and_an_alias_bomb_are_refused_fast(ci_config):
    config = copy.deepcopy(ci_config)
    config["datasets"]["brain_phantom"]["downloads"] = {f"f{i}.zip": {"url": f"http://127.0.0.1/{i}"} for i in range(100_000)}
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"config key datasets\.brain_phantom: .*more than {MAX_CONFIG_VALUES:,}"):
        coerce_command_line_values(config)
    with pytest.raises(ConfigError, match="more than"):
        validate_schema(config)
    with pytest.raises(ConfigError, match="more than"):
        check_config(config)
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9**10 values when expanded
    bomb = ci_config | yaml.safe_load("\n".join(lines))
    with pytest.raises(ConfigError, match="more than"):
        coerce_command_line_values(bomb)
    deep = {"x": None}
    for _ in range(100):
        deep = {"x": deep}
    with pytest.raises(ConfigError, match="nested deeper"):
        check_size(ci_config | {"deep": deep})
    with pytest.raises(ConfigError, match="characters"):
        check_size(ci_config | {"results_dir": "r" * 10_000})
    assert time.perf_counter() - start < 5


def _snakemake_dry_run(workdir: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--configfile", str(ROOT / "configs" / "ci.yaml"), str(config), "-n", "--quiet", "rules", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)


def test_snakemake_refuses_bad_configs_at_planning_time(tmp_path, ci_config):
    """The planning-time path: Snakemake's own schema validation and `check_config`, through `snakemake -n`.
    A string in a config file stays a string (only `--config` values are re-typed), and those are re-typed."""
    work = tmp_path / "work"
    work.mkdir()
    steps = tmp_path / "steps.yaml"
    steps.write_text("train: {steps: '20'}\n")
    proc = _snakemake_dry_run(work, steps)
    assert proc.returncode != 0 and "'20' is not of type 'integer'" in proc.stderr + proc.stdout, proc.stderr[-2000:]
    cohort = tmp_path / "cohort.yaml"
    cohort.write_text("datasets: {brain_phantom: {params: {n_patients: 4}}}\n")
    proc = _snakemake_dry_run(work, cohort)
    assert proc.returncode != 0
    assert "config key datasets.brain_phantom.params.n_patients: 4 patients" in proc.stderr + proc.stdout, proc.stdout[-2000:]
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    proc = _snakemake_dry_run(work, empty, "--config", "seeds=[0,1]", "privacy={epsilons: [0.5, 1e1], delta: 1e-5}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in work.iterdir() if p.name != ".snakemake") == []
