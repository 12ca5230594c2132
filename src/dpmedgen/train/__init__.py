"""Training engine and run driver."""

from dpmedgen.train.engine import TrainConfig, TrainingDiverged, train_gan
from dpmedgen.train.run import load_generator, load_training_data, train_run

__all__ = ["TrainConfig", "TrainingDiverged", "train_gan", "load_generator", "load_training_data", "train_run"]
