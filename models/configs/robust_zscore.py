"""Hyperparameters of :mod:`models.robust_zscore`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.base import DetectorConfig


@dataclasses.dataclass
class RobustZScoreConfig(DetectorConfig):
    window: int = 48          # trailing points of the reference (4 h at 5-minute sampling)
    min_scale: float = 1e-3   # floor of the scale, in normalised units: a flat stretch must not divide by 0

    def validate(self) -> None:
        self._positive("window", "min_scale")
