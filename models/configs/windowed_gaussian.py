"""Hyperparameters of :mod:`models.windowed_gaussian`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.base import DetectorConfig


@dataclasses.dataclass
class WindowedGaussianConfig(DetectorConfig):
    window: int = 6400        # trailing values of the reference (NAB's windowSize)
    min_std: float = 1e-6     # floor of the standard deviation (NAB's), normalised units

    def validate(self) -> None:
        self._positive("window", "min_std")
