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
from dpmedgen.data.sources.chestxray14 import ChestXray14
from dpmedgen.data.sources.fusion_pairs import IRVIS, MRIPET
from dpmedgen.data.sources.isic import ISIC
from dpmedgen.data.sources.medmnist import MedMNIST
from dpmedgen.data.sources.oai_knee import OAIKnee
from dpmedgen.data.sources.oasis1 import OASIS1
from dpmedgen.registry import Registry

DATASETS = Registry("dataset")
DATASETS.register("brain_phantom")(BrainPhantom)
DATASETS.register("oai_knee")(OAIKnee)
DATASETS.register("mripet")(MRIPET)
DATASETS.register("irvis")(IRVIS)
DATASETS.register("medmnist")(MedMNIST)
DATASETS.register("chestxray14")(ChestXray14)
DATASETS.register("isic")(ISIC)
DATASETS.register("oasis1")(OASIS1)

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
