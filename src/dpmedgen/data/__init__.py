"""Datasets, the common image schema, preprocessing and patient-level splits.

``DATASETS`` maps a dataset adapter's name (``datasets.<name>`` in the workflow config, or its ``source``
key) to a :class:`~dpmedgen.data.sources.DatasetSource` subclass (:mod:`dpmedgen.data.sources`): what to
download and how to read it into the common schema. ``brain_phantom`` is the embedded default.
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
from dpmedgen.data.sources.brain_phantom import BrainPhantom
from dpmedgen.registry import Registry

DATASETS = Registry("dataset")
DATASETS.register("brain_phantom")(BrainPhantom)

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
