"""Evaluate one run's samples against real held-out images, and gather every run into the study tables.

`results/metrics.parquet` is long: one row per (dataset, model, privacy, epsilon_target, seed, metric) with
a `value`, and beside it the run's guarantee from its ledger (`guarantee`, `epsilon_spent`, `delta`, `unit`,
`adjacency`, `randomness`, `dp_release`; the names of `dpmedgen.results`). `results/privacy.parquet` has one
row per run with its ledger's fields. `epsilon_target` is a float; `inf` marks the non-private reference.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from typing import Any, Iterable

import numpy as np
import pandas as pd

from dpmedgen.data.canary import canary_patients
from dpmedgen.data.schema import ImageSet, read_image_set
from dpmedgen.data.split import read_splits, select_split
from dpmedgen.generate import FUSED
from dpmedgen.io import load_torch, verify_zip, write_atomic, write_parquet
from dpmedgen.metrics import PatientImages, all_metric_info
from dpmedgen.metrics import evaluate as compute_metrics
from dpmedgen.metrics.downstream import LabelledImages, LabelledSplits, downstream_utility
from dpmedgen.metrics.membership import discriminator_scorer, memorization_threshold
from dpmedgen.metrics.encoder import extract_features
from dpmedgen.privacy import read_ledger
from dpmedgen.results import EPSILON_SPENT, EPSILON_TARGET, GUARANTEE_COLUMNS, METRIC_COLUMNS, NO_GUARANTEE, REAL_DATA, RUN_KEYS
from dpmedgen.runs import RunSpec
from dpmedgen.settings import EvaluateSettings

logger = logging.getLogger(__name__)


def _real_images(images_h5, splits_parquet, split: str, modality: str):
    return select_split(read_image_set(images_h5, modalities=[modality]), read_splits(splits_parquet), split)


def real_features(
    *,
    images_h5: str | os.PathLike,
    splits_parquet: str | os.PathLike,
    modality: str,
    split: str,
    batch_size: int,
    out_path: str | os.PathLike,
    threads: int = 1,
    nonmember_splits: Iterable[str] | None = None,
) -> None:
    """What every run's evaluation shares, computed once: the encoder features of the real images of `split`
    and, with `nonmember_splits`, the memorization threshold of the membership-inference members and
    non-members (`membership.memorization_threshold`), with a digest of the images it was computed on."""
    import torch

    torch.set_num_threads(threads)
    real = _real_images(images_h5, splits_parquet, split, modality)
    features = extract_features(real.modalities[modality], batch_size=batch_size)
    state = {"features": features, "patient_id": real.patient_id.tolist(), "slice": real.slice.tolist()}
    if nonmember_splits is not None:
        everyone = read_image_set(images_h5, modalities=[modality])
        groups = _membership_inputs(everyone, read_splits(splits_parquet), modality, list(nonmember_splits))
        state["memorization"] = {
            "threshold": memorization_threshold(groups["members"].images, groups["nonmembers"].images),
            "digest": _membership_digest(groups),
        }
    write_atomic(out_path, lambda tmp: torch.save(state, tmp))


def _membership_digest(groups: dict[str, Any]) -> str:
    """SHA-256 of the member and non-member images (and their patients): a cached threshold is used only for
    exactly the images it was computed on."""
    h = hashlib.sha256()
    for name in ("members", "nonmembers"):
        group = groups[name]
        h.update(name.encode())
        h.update(np.ascontiguousarray(group.images, dtype=np.float32).tobytes())
        h.update("\0".join(map(str, group.patient_id)).encode())
    return h.hexdigest()


def evaluate_run(
    run: RunSpec,
    *,
    samples_h5: str | os.PathLike,
    images_h5: str | os.PathLike,
    splits_parquet: str | os.PathLike,
    modality: str,
    settings: EvaluateSettings,
    threads: int = 1,
    real_features_file: str | os.PathLike | None = None,
    checkpoint: str | os.PathLike | None = None,
    ledger: str | os.PathLike | None = None,
    out_parquet: str | os.PathLike,
) -> pd.DataFrame:
    """Score one run's released samples with `settings.metrics`; write and return its long metric rows.

    - Fidelity and image quality compare the samples with the real `modality` images of `settings.split`
      (held-out patients). A fusion run's fused images are compared with the real `modality` images there, and
      with their own source pairs (`sources`) by the fusion and source-quality families.
    - Membership inference: members are the training patients' `modality` images (but the canary patients',
      which the canary family audits), non-members the patients of `settings.nonmember_splits`. The white-box
      attack uses the run's discriminator in `checkpoint` (a fusion model's discriminator of `modality`); the
      black-box distance attack needs unconditional samples and is skipped for fusion runs. Bounds come from
      the run's `ledger`.
    - Downstream utility: a classifier trained on the labelled samples (one generator per class), its epoch
      chosen on the real `val` patients, tested on the real patients of `settings.split`.
    - Families whose inputs this run does not have are skipped, and the reason is logged.
    """
    import torch

    torch.set_num_threads(threads)
    real = _real_images(images_h5, splits_parquet, settings.split, modality)
    fake = read_image_set(samples_h5)
    if len(fake.modalities) != 1:
        raise ValueError(f"{samples_h5}: expected one generated modality, found {sorted(fake.modalities)}")
    (fake_modality, fake_pixels), = fake.modalities.items()  # the trained modality, or "fused" for fusion
    features, memorization = _cached_real_features(real_features_file, real)
    inputs: dict[str, Any] = {"ledger": read_ledger(ledger) if ledger is not None else None}
    model, state = _load_checkpoint(checkpoint)
    if fake_modality == FUSED:
        if model is None:
            raise ValueError(f"{samples_h5}: fused samples; give the run's checkpoint (it names the source modalities)")
        inputs["sources"] = _source_images(images_h5, fake, list(state["modalities"]), samples_h5)
    splits = read_splits(splits_parquet)
    everyone = read_image_set(images_h5, modalities=[modality])
    inputs |= _membership_inputs(everyone, splits, modality, settings.nonmember_splits)
    if memorization is not None:
        if memorization["digest"] == _membership_digest(inputs):
            inputs["memorization_threshold"] = memorization["threshold"]
        else:
            logger.warning("%s: its memorization threshold was computed for other members or non-members; "
                           "computing it again", real_features_file)
    if model is not None:
        # a fusion model's discriminator of `modality` judges real `modality` images against fused ones
        network = f"discriminator_{modality}" if fake_modality == FUSED else None
        if network is None or hasattr(model, network):
            inputs["discriminator"] = discriminator_scorer(model, checkpoint=state, network=network)
    if settings.inception_weights is not None:
        inputs["inception_weights"] = os.fspath(settings.inception_weights)
    if fake_modality != FUSED and len(fake.label) and (fake.label >= 0).all():  # one generator per class
        inputs["fake_labels"] = fake.label
    if "downstream" in settings.metrics and (everyone.label >= 0).all():  # no class labels: nothing to classify
        inputs["labelled_real"] = LabelledSplits(
            val=_labelled(select_split(everyone, splits, SELECTION_SPLIT), modality),
            test=_labelled(real, modality),
            epochs=settings.downstream_epochs,
        )
    values = _compute_and_log(run, real.modalities[modality], fake_pixels, settings, features, inputs)
    families = {i.name: i.family for i in all_metric_info(list(inputs.get("sources") or ("mri", "pet")))}
    rows = pd.DataFrame(
        [run.table_keys() | {"metric": name, "value": float(v),
                             "reference": _reference(families.get(name, ""), settings.split),
                             "n_real": len(real), "n_fake": len(fake)}
         for name, v in values.items()]
    )
    write_parquet(rows, out_parquet)
    return rows


def _cached_real_features(real_features_file, real: ImageSet):
    """The real images' encoder features from `real_features_file` and its memorization threshold record, if
    it has one (None, None: both computed by the metrics)."""
    if real_features_file is None:
        return None, None
    cached = load_torch(real_features_file)
    if cached["patient_id"] != real.patient_id.tolist() or cached["slice"] != real.slice.tolist():
        raise ValueError(f"{real_features_file} was computed for other real images; delete it and rerun")
    return cached["features"], cached.get("memorization")


def _load_checkpoint(checkpoint) -> tuple[Any, dict[str, Any] | None]:
    if checkpoint is None:
        return None, None
    from dpmedgen.train.run import load_model

    verify_zip(checkpoint)  # CRC-32s: torch.load does not check them
    return load_model(checkpoint)


def _membership_inputs(everyone: ImageSet, splits: pd.DataFrame, modality: str, nonmember_splits) -> dict[str, Any]:
    """Members (the training patients but the canary carriers), non-members (`nonmember_splits`), and the
    canary carriers' share of the training images."""
    members = select_split(everyone, splits, "train")
    held_out = [select_split(everyone, splits, s) for s in nonmember_splits]
    carriers = pd.Series(members.patient_id.astype(str)).isin(canary_patients(splits)).to_numpy()
    inputs: dict[str, Any] = {"canary": float(carriers.mean())} if carriers.any() else {}
    # The canary patients are audited by the canary family; as members their marked images would separate
    # them from every non-member by the marker alone, so the attacks compare unmarked patients only.
    inputs["members"] = PatientImages(members.modalities[modality][~carriers], members.patient_id[~carriers])
    inputs["nonmembers"] = PatientImages(
        np.concatenate([h.modalities[modality] for h in held_out]),
        np.concatenate([h.patient_id for h in held_out]),
    )
    return inputs


def _compute_and_log(run: RunSpec, real_pixels, fake_pixels, settings: EvaluateSettings, features, inputs) -> dict:
    """Every requested family's values (undefined ones left out), with skipped families, timings and the
    left-out metrics logged."""
    skipped: dict[str, str] = {}
    timings: dict[str, float] = {}
    values = compute_metrics(
        real_pixels, fake_pixels, list(settings.metrics), batch_size=settings.batch_size, seed=run.seed,
        real_features=features, skipped=skipped, timings=timings, **inputs,
    )
    for family, reason in skipped.items():
        logger.info("%s: metric family %s skipped: %s", run.name, family, reason)
    for family, seconds in timings.items():
        logger.info("%s: metric family %s took %.2f s", run.name, family, seconds)
    undefined = [name for name, v in values.items() if math.isnan(v)]
    if undefined:  # e.g. VIF of images under 41x41: no row rather than a NaN that plots and tables must special-case
        logger.warning("%s: metrics undefined for these images, left out: %s", run.name, ", ".join(undefined))
        values = {name: v for name, v in values.items() if name not in undefined}
    return values


def _labelled(images: ImageSet, modality: str) -> LabelledImages:
    return LabelledImages(images.modalities[modality], images.label.astype(np.int64), images.patient_id)


#: `model` of the downstream reference rows: the classifier trained on the real training images.
#: The split the downstream classifier's epoch is chosen on (config check: never the evaluation split).
SELECTION_SPLIT = "val"


def downstream_reference(
    *,
    dataset: str,
    images_h5: str | os.PathLike,
    splits_parquet: str | os.PathLike,
    modality: str,
    seed: int,
    split: str,
    epochs: int,
    threads: int = 1,
    out_parquet: str | os.PathLike,
) -> pd.DataFrame:
    """The downstream family's reference rows: the same classifier, selection (val) and test (`split`) as
    every run's, trained on the real training images (as stored: no canary marker). Written as metric rows
    with model `REAL_DATA`, privacy "none" and epsilon_target inf."""
    import torch

    torch.set_num_threads(threads)
    everyone = read_image_set(images_h5, modalities=[modality])
    splits = read_splits(splits_parquet)
    if (everyone.label < 0).all():  # e.g. the fusion pair sets: nothing to classify
        logger.info("%s: no class labels (all -1); the downstream family has no reference and is skipped", dataset)
        values, n_test, n_train = {}, 0, 0
    else:
        train, val, test = (_labelled(select_split(everyone, splits, s), modality) for s in ("train", SELECTION_SPLIT, split))
        values, n_test, n_train = downstream_utility(train, val, test, seed=seed, epochs=epochs), len(test.labels), len(train.labels)
    run = {"dataset": dataset, "model": REAL_DATA, "privacy": "none", EPSILON_TARGET: math.inf, "seed": int(seed)}
    rows = pd.DataFrame(
        [run | {"metric": name, "value": float(v), "reference": _reference("downstream", split) + " (trained on real train patients)",
                "n_real": n_test, "n_fake": n_train}
         for name, v in values.items()],
        columns=[*run, "metric", "value", "reference", "n_real", "n_fake"],
    )
    write_parquet(rows, out_parquet)
    return rows


def _reference(family: str, split: str) -> str:
    """What a metric of `family` compares the samples with (the `reference` column of metrics.parquet)."""
    if family == "downstream":
        return f"classifier trained on the samples, epoch chosen on val patients, tested on the {split} split"
    if family == "canary":
        return "canary marker of the training patients flagged in splits.parquet"
    if family.startswith("mia"):
        return "train patients (members) vs held-out patients (non-members)"
    if family in ("fusion", "iqa_sources"):
        return "source pair of each fused image"
    return f"{split} split"


def _source_images(images_h5, fused: ImageSet, names: list[str], samples_h5) -> dict[str, np.ndarray]:
    """The source images each fused sample was made from, matched on (patient_id, slice)."""
    sources = read_image_set(images_h5, modalities=names)
    row = {(p, int(s)): i for i, (p, s) in enumerate(zip(sources.patient_id, sources.slice))}
    keys = list(zip(fused.patient_id, fused.slice))
    missing = [k for k in keys if (k[0], int(k[1])) not in row]
    if missing:
        raise ValueError(f"{samples_h5}: fused samples of {missing[:3]} have no source pair in {images_h5}")
    index = np.array([row[(p, int(s))] for p, s in keys])
    return {m: sources.modalities[m][index] for m in names}


#: Snakemake benchmark columns -> metric suffix and unit conversion
_COST_COLUMNS = {"s": ("wall_s", 1.0), "cpu_time": ("cpu_s", 1.0), "max_rss": ("max_rss_mb", 1.0)}


def cost_rows(run: dict[str, Any], stage: str, benchmark_tsv: str | os.PathLike) -> list[dict[str, Any]]:
    """Metric rows ``cost_<stage>_{wall_s,cpu_s,max_rss_mb}`` of one run from its Snakemake `benchmark:` file.

    Snakemake writes one row per repeat (we take the mean) and "-" or NaN where it could not measure
    (e.g. memory of a job shorter than its sampling interval); those are left out rather than guessed."""
    table = pd.read_csv(benchmark_tsv, sep="\t")
    rows = []
    for column, (suffix, scale) in _COST_COLUMNS.items():
        if column not in table:
            continue
        value = pd.to_numeric(table[column], errors="coerce").mean()
        if pd.notna(value):
            rows.append(run | {"metric": f"cost_{stage}_{suffix}", "value": float(value) * scale,
                               "reference": f"Snakemake benchmark of the {stage} job"})
    return rows


def aggregate(
    metric_files: Iterable[str | os.PathLike],
    ledger_files: Iterable[str | os.PathLike],
    out_metrics: str | os.PathLike,
    out_privacy: str | os.PathLike,
    *,
    runs: list[dict[str, Any]] | None = None,
    benchmarks: dict[str, list[str | os.PathLike]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Concatenate per-run metric tables and privacy ledgers into the two study tables.

    With `runs` (run identities) and `benchmarks` ({stage: one benchmark file per run, same order}), the
    cost of each job is added as metric rows (see `cost_rows`)."""
    metric_files, ledger_files = list(metric_files), list(ledger_files)
    if not metric_files or not ledger_files:
        raise ValueError("nothing to aggregate: no per-run metric tables or ledgers were given")
    tables = [pd.read_parquet(f) for f in metric_files]
    for stage, files in (benchmarks or {}).items():
        files = list(files)
        if runs is None or len(files) != len(runs):
            raise ValueError(f"benchmarks of {stage}: {len(files)} files for {0 if runs is None else len(runs)} runs")
        tables.append(pd.DataFrame([row for run, f in zip(runs, files) for row in cost_rows(run, stage, f)]))
    metrics = pd.concat([t for t in tables if len(t)], ignore_index=True)
    metrics = metrics.sort_values(list(METRIC_COLUMNS[:-1]), kind="stable").reset_index(drop=True)

    records: list[dict[str, Any]] = []
    for f in ledger_files:
        ledger = read_ledger(f)
        # Nested / list fields are stored as JSON text so the table stays flat.
        records.append({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in ledger.items()} | {"ledger_path": os.fspath(f)})
    privacy = pd.DataFrame(records)
    privacy[EPSILON_TARGET] = privacy[EPSILON_TARGET].astype(float)
    privacy = privacy.sort_values(list(RUN_KEYS), kind="stable").reset_index(drop=True)
    metrics = _with_guarantees(metrics, privacy)
    write_parquet(metrics, out_metrics)
    write_parquet(privacy, out_privacy)
    return metrics, privacy


def _with_guarantees(metrics: pd.DataFrame, privacy: pd.DataFrame) -> pd.DataFrame:
    """Every metric row with its run's guarantee (`GUARANTEE_COLUMNS`, from the ledger); the reference rows,
    which no privacy mode produced, state none (`NO_GUARANTEE`)."""
    columns = [c for c in GUARANTEE_COLUMNS if c in privacy.columns]
    ledgers = privacy[list(RUN_KEYS) + columns]
    out = metrics.merge(ledgers, on=list(RUN_KEYS), how="left", validate="many_to_one", indicator=True)
    reference = out["_merge"] == "left_only"
    stray = out.loc[reference & (out["model"] != REAL_DATA), list(RUN_KEYS)].drop_duplicates()
    if len(stray):
        raise ValueError(f"metric rows of runs without a ledger: {stray.to_dict('records')[:3]}")
    for column, value in NO_GUARANTEE.items():
        if column not in out.columns:
            out[column] = None
        out.loc[reference, column] = value
    out[EPSILON_SPENT] = out[EPSILON_SPENT].astype(float)
    out["dp_release"] = out["dp_release"].astype(bool)
    return out.drop(columns="_merge")
