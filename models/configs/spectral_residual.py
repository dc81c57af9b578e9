"""Hyperparameters of :mod:`models.spectral_residual`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.base import DetectorConfig


@dataclasses.dataclass
class SpectralResidualConfig(DetectorConfig):
    window: int = 128            # points per window (the last is the point scored)
    extend: int = 5              # m: estimated points appended to each window
    amplitude_window: int = 3    # q: trailing average of the log amplitude over frequencies
    score_window: int = 21       # z: saliency values before the point in its local average
    batch_windows: int = 2048    # windows per vectorised block: its (windows, 2K) arrays stay in the CPU cache

    def validate(self) -> None:
        self._positive("window", "extend", "amplitude_window", "score_window", "batch_windows")
        if self.window <= max(self.score_window, self.extend):
            raise ValueError(f"SpectralResidualConfig: 'window' ({self.window}) must exceed 'score_window' "
                             f"({self.score_window}) and 'extend' ({self.extend})")
