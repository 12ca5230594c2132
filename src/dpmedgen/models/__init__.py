"""Generative models, registered by the name used in config.yaml."""

from dpmedgen.models.base import GANModel, GenerativeModel, Player
from dpmedgen.models.dcgan import DCGAN
from dpmedgen.models.ddcgan import DDcGAN
from dpmedgen.models.ddpm import DDPM
from dpmedgen.models.sngan import SNGAN
from dpmedgen.registry import Registry

MODELS: Registry[type[GenerativeModel]] = Registry("model")
MODELS.register("dcgan")(DCGAN)
MODELS.register("sngan")(SNGAN)
MODELS.register("ddcgan")(DDcGAN)
MODELS.register("ddpm")(DDPM)


def register_opacus_extensions() -> None:
    """Teach Opacus the per-sample gradients of our custom layers (called by DP-SGD before wrapping)."""
    from dpmedgen.models.sngan import register_opacus_grad_samplers

    register_opacus_grad_samplers()

def register_clipping_rules() -> None:
    """Teach the fast per-example clipping (`dpmedgen.privacy.clipping`) our custom layers."""
    from dpmedgen.models.sngan import register_clipping_rule

    register_clipping_rule()


__all__ = ["MODELS", "GenerativeModel", "GANModel", "Player", "DCGAN", "SNGAN", "DDcGAN", "DDPM", "register_opacus_extensions", "register_clipping_rules"]
