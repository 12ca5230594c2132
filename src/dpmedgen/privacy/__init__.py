"""Privacy modes, registered by the name used in config.yaml (`privacy.modes`)."""

from dpmedgen.privacy.base import PrivacyMode, TrainingData
from dpmedgen.privacy.dpsgd import DPSGD
from dpmedgen.privacy.functional import FunctionalMechanism
from dpmedgen.privacy.ledger import LedgerError, compose_parallel, read_ledger, validate_ledger, write_ledger
from dpmedgen.privacy.none import NonPrivate
from dpmedgen.privacy.perturbation import InputGaussian, InputLaplace, OutputGaussian, OutputLaplace
from dpmedgen.registry import Registry

PRIVACY_MODES: Registry[type[PrivacyMode]] = Registry("privacy mode")
PRIVACY_MODES.register("none")(NonPrivate)
PRIVACY_MODES.register("dpsgd")(DPSGD)
PRIVACY_MODES.register("input_laplace")(InputLaplace)
PRIVACY_MODES.register("input_gaussian")(InputGaussian)
PRIVACY_MODES.register("output_laplace")(OutputLaplace)
PRIVACY_MODES.register("output_gaussian")(OutputGaussian)
PRIVACY_MODES.register("functional")(FunctionalMechanism)

__all__ = [
    "PRIVACY_MODES", "PrivacyMode", "TrainingData", "DPSGD", "NonPrivate",
    "LedgerError", "compose_parallel", "read_ledger", "validate_ledger", "write_ledger",
]
