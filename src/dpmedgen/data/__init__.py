"""Datasets, the common image schema, preprocessing and patient-level splits.

``DATASETS`` maps a dataset name (as used in the workflow config) to a callable ``(**params) ->
ImageSet`` that builds the raw cohort; ``brain_phantom`` is the embedded default.
"""

from dpmedgen.data.phantom import make_brain_phantom
from dpmedgen.data.preprocess import normalize_images, preprocess
from dpmedgen.data.schema import ImageSet, SchemaError, read_image_set, write_image_set
from dpmedgen.data.split import (
    SPLITS,
    SplitError,
    check_split,
    read_splits,
    select_split,
    split_patients,
    write_splits,
)
from dpmedgen.registry import Registry

DATASETS = Registry("dataset")
DATASETS.register("brain_phantom")(make_brain_phantom)

__all__ = [
    "DATASETS",
    "ImageSet",
    "SPLITS",
    "SchemaError",
    "SplitError",
    "check_split",
    "make_brain_phantom",
    "normalize_images",
    "preprocess",
    "read_image_set",
    "read_splits",
    "select_split",
    "split_patients",
    "write_image_set",
    "write_splits",
]
