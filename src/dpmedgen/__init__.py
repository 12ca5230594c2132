"""dpmedgen: privacy versus utility in generative models of medical images."""

__version__ = "0.1.0"
