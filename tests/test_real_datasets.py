"""Every real-dataset adapter through the Snakemake DAG: fixture files in each publisher's raw layout are
served by a local HTTP server on 127.0.0.1 (no test reaches the internet), downloaded, verified, unpacked,
read, preprocessed and split by patient; three of them, which between them have one and two modalities,
labels and none, grey and colour sources, are also trained on, sampled, evaluated and plotted (past the split,
the pipeline sees only images.h5 and splits.parquet, whose schema every adapter's output is checked against)."""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, run_snakemake
from raw_fixtures.server import serve

from dpmedgen.data import read_image_set, read_splits
from dpmedgen.data.sources import make_source

REAL_DATASETS = ["oasis1", "chestxray14", "mripet", "irvis", "medmnist", "isic", "oai_knee"]
TRAINED = ["mripet", "irvis", "isic"]  # the rest stop at the split (`public: true`: no runs), saving ~24 jobs of CI
MODALITY = {"irvis": "vis"}  # the modality the unconditional model learns (default: the adapter's first)


def _raw_fixtures(root: Path) -> dict[str, dict]:
    """Each dataset's files as its publisher serves them, in root/<dataset>/ (built by tests/raw_fixtures)."""
    out = {}
    for name in REAL_DATASETS:
        folder = root / name
        folder.mkdir(parents=True)
        out[name] = importlib.import_module(f"raw_fixtures.{name}").write_raw(folder) | {"folder": folder}
    return out


def _study_config(raw: dict[str, dict], url, path: Path, datasets=REAL_DATASETS) -> Path:
    """configs/ci.yaml with the real datasets (downloads pointed at the local server), a DP-SGD DCGAN on each of
    TRAINED among them, and the MRI-PET DDcGAN on mripet (the grid leaves it out of the sets without MRI and PET)."""
    config = yaml.safe_load((ROOT / "configs" / "ci.yaml").read_text())
    config["datasets"] = {}
    for name in datasets:
        fixture = raw[name]
        adapter = make_source(name, fixture["params"])
        downloads = {}
        for remote in adapter.remote_files():
            downloads[remote.name] = {"url": url(f"{name}/{remote.name}")}
            if remote.sha256 or remote.md5:  # a published checksum: the fixture's bytes differ from the real file
                downloads[remote.name]["sha256"] = hashlib.sha256((fixture["folder"] / remote.name).read_bytes()).hexdigest()
        config["datasets"][name] = {"modality": MODALITY.get(name, adapter.modalities[0]), "params": fixture["params"],
                                    "downloads": downloads} | ({} if name in TRAINED else {"public": True})
    # DDcGAN only where a dataset has MRI and PET: a model no dataset can feed is a config error (_check_registries)
    config["models"] = {m: config["models"][m] for m in ["dcgan"] + (["ddcgan"] if "mripet" in datasets else [])}
    config["privacy"]["modes"] = ["dpsgd"]  # the non-private path is the CI study's (tests/test_workflow.py)
    config["seeds"] = [0]
    config["split"]["canary_patients"] = 0
    config["evaluate"]["metrics"] = ["fid_effnetlite0", "downstream", "fusion"]  # what depends on the dataset
    config["evaluate"]["downstream_epochs"] = 2
    config["results_dir"], config["resources_dir"] = "results", "resources"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return _raw_fixtures(tmp_path_factory.mktemp("raw"))


def _files(raw):
    return {f"{name}/{f}": fixture["folder"] / f for name, fixture in raw.items() for f in fixture["files"]}


@pytest.mark.integration
def test_every_real_dataset_flows_through_the_dag(raw, tmp_path):
    with serve(_files(raw)) as server:
        config = _study_config(raw, server.url, tmp_path / "study.yaml")
        targets = ["results/metrics.parquet", "results/privacy.parquet"] + [f"results/{d}/splits.parquet" for d in REAL_DATASETS]
        targets += [f"results/figures/{d}/comparison_dcgan.png" for d in TRAINED] + ["results/figures/mripet/comparison_ddcgan.png"]
        proc = run_snakemake(tmp_path, "--cores", "2", *targets, config=config)
        assert proc.returncode == 0, proc.stderr[-6000:]
    assert not any(path.startswith("/oai_knee") for path, _ in server.requests)  # the manual dataset downloads nothing

    metrics = pd.read_parquet(tmp_path / "results" / "metrics.parquet")
    privacy = pd.read_parquet(tmp_path / "results" / "privacy.parquet")
    trained = metrics[metrics.model != "real_data"]
    assert set(trained.dataset) == set(TRAINED)
    assert set(trained.loc[trained.model == "ddcgan", "dataset"]) == {"mripet"}  # irvis has no MRI/PET
    assert trained.loc[trained.metric == "fid_effnetlite0", "value"].gt(0).all()
    assert {"fusion_qabf"} <= set(trained.loc[trained.model == "ddcgan", "metric"])

    labelled = {}
    for name in REAL_DATASETS:
        raw_set = read_image_set(tmp_path / "resources" / name / "raw.h5")
        adapter = make_source(name, raw[name]["params"])
        assert raw_set.dataset == name and set(raw_set.modalities) == set(adapter.modalities)
        assert raw_set.provenance["source"] == name and set(raw_set.provenance["files"]) == set(raw[name]["files"])
        images = read_image_set(tmp_path / "results" / name / "images.h5")
        assert images.shape == (32, 32) and len(images) == len(raw_set)
        splits = read_splits(tmp_path / "results" / name / "splits.parquet")
        assert set(splits.patient_id) == set(raw_set.patient_id)  # every patient in exactly one split
        if name in TRAINED:
            dpsgd = privacy[(privacy.dataset == name) & (privacy.model == "dcgan") & (privacy.privacy == "dpsgd")].iloc[0]
            assert dpsgd.n_train_patients == (splits.split == "train").sum() and dpsgd.epsilon_spent <= 1.0
            labelled[name] = bool((raw_set.label >= 0).all())
            downstream = trained[(trained.dataset == name) & trained.metric.str.startswith("downstream")]
            assert downstream.empty != labelled[name], name  # only labelled sets are classified
            assert (tmp_path / "results" / "figures" / name / "comparison_dcgan.png").stat().st_size > 5000

        downloads = tmp_path / "resources" / "downloads" / name
        if raw[name]["files"]:
            leftovers = [p.name for p in downloads.rglob("*") if p.name.endswith(".part") or ".tmp" in p.name]
            assert leftovers == [], name
            published = {r.name for r in adapter.remote_files() if r.sha256 or r.md5}
            recorded = json.loads((downloads / "checksums.json").read_text()) if (downloads / "checksums.json").exists() else {}
            assert set(recorded) == set(raw[name]["files"]) - published, name  # first-use checksums recorded
        else:
            assert not downloads.exists()
    assert set(labelled.values()) == {True, False}  # the trained subset covers both kinds of set


@pytest.mark.integration
def test_a_corrupt_download_fails_the_job_naming_the_file_and_leaves_nothing(raw, tmp_path):
    """A truncated archive: the download job fails, its log names the archive and what to do, no raw.h5 exists."""
    name = "isic"
    archive = next(f for f in raw[name]["files"] if f.endswith((".zip", ".tar.gz")))
    files = _files(raw)
    data = files[f"{name}/{archive}"].read_bytes()
    files[f"{name}/{archive}"] = data[: len(data) // 2]
    with serve(files) as server:
        config = _study_config(raw, server.url, tmp_path / "study.yaml", datasets=[name])
        proc = run_snakemake(tmp_path, "--cores", "2", f"resources/{name}/raw.h5", config=config)
    assert proc.returncode != 0
    log = (tmp_path / "results" / "logs" / "download" / f"{name}.log").read_text()
    assert archive in log and "truncated or corrupt archive" in log and "rerun" in log
    assert not (tmp_path / "resources" / name / "raw.h5").exists()
    folder = tmp_path / "resources" / "downloads" / name
    assert not any(".tmp" in p.name for p in folder.iterdir())
    assert not (folder / archive).exists() and archive not in json.loads((folder / "checksums.json").read_text())
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == []  # nothing unpacked
