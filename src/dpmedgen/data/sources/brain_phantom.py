"""``brain_phantom``: the embedded cohort, built offline from nilearn's MNI152 templates (nothing to download).

See :mod:`dpmedgen.data.phantom` for the generative model; the parameters are those of
:func:`~dpmedgen.data.phantom.make_brain_phantom` (``progress`` and ``return_region`` aside).
"""

from __future__ import annotations

import inspect
from pathlib import Path

from dpmedgen.data.phantom import make_brain_phantom
from dpmedgen.data.schema import ImageSet
from dpmedgen.data.sources.base import DatasetError, DatasetSource

_PARAMS = set(inspect.signature(make_brain_phantom).parameters) - {"progress", "return_region"}


class BrainPhantom(DatasetSource):
    modalities = ("mri", "pet")
    homepage = "embedded (built from nilearn's MNI152 2009 templates)"
    license = "MIT (this repository); templates: MNI152 2009 licence (free use with attribution)"

    def __init__(self, **params) -> None:
        unknown = sorted(set(params) - _PARAMS)
        if unknown:
            raise DatasetError(f"{unknown[0]!r} is not a parameter of dataset 'brain_phantom'; accepted: {sorted(_PARAMS)}")
        self.params = params

    def read(self, folder: Path) -> ImageSet:
        return make_brain_phantom(**self.params)
