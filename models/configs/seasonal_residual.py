"""Hyperparameters of :mod:`models.seasonal_residual`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.base import DetectorConfig
from models.configs.shared import positive_durations


@dataclasses.dataclass
class SeasonalResidualConfig(DetectorConfig):
    scale_window: int = 1440     # past residuals in the rolling scale (a day at 1 minute, 5 days at 5 minutes)
    day: str = "1D"              # the periods, in time (pandas Timedelta strings)
    week: str = "7D"
    days: int = 3                # day candidates 1 .. days days back (plus the week)
    neighbours: int = 2          # k: candidates at t - period - k .. t - period + k
    fallback_window: int = 12    # past values whose median is the baseline before a day of history
    min_history: int = 12        # residuals needed before the first score
    min_scale: float = 0.01      # floor of the scale, normalised units: a flat KPI must not divide by 0
    mean_scale: float = 1.0      # the scale is at least this times the mean past |residual| (0: the MAD alone)

    def validate(self) -> None:
        self._positive("scale_window", "fallback_window", "min_history", "min_scale", "days")
        for key in ("neighbours", "mean_scale"):
            if getattr(self, key) < 0:
                raise ValueError(f"SeasonalResidualConfig: '{key}' must be >= 0, got {getattr(self, key)}")
        positive_durations(self, "day", "week")
