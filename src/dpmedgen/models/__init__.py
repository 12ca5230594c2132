"""Generative models, registered by the name used in config.yaml."""

from dpmedgen.models.base import GANModel
from dpmedgen.models.dcgan import DCGAN
from dpmedgen.registry import Registry

MODELS: Registry[type[GANModel]] = Registry("model")
MODELS.register("dcgan")(DCGAN)

__all__ = ["MODELS", "GANModel", "DCGAN"]
