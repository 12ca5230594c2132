"""Training engine and run driver."""

from dpmedgen.train.engine import TrainConfig, TrainingDiverged, train_model
from dpmedgen.train.run import load_model, load_split_images, train_run

__all__ = [
    "TrainConfig", "TrainingDiverged", "train_model", "load_model", "load_split_images", "train_run",
]
