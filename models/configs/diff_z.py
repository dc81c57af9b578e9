"""Hyperparameters of :mod:`models.diff_z`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.base import DetectorConfig


@dataclasses.dataclass
class DiffZConfig(DetectorConfig):
    min_scale: float = 1e-3   # floor of the MAD-based scale, normalised units: a flat KPI must not divide by 0

    def validate(self) -> None:
        self._positive("min_scale")
