"""Hyperparameters of :mod:`models.ensemble`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.configs.shared import MembersConfig


@dataclasses.dataclass
class EnsembleConfig(MembersConfig):
    # Cheap unsupervised rules, each strong on a different anomaly shape (steps, excursions from the
    # recent median, from the same time a day/week back, spectral breaks); they run with their defaults.
    members: tuple[str, ...] = ("diff_z", "robust_zscore", "seasonal_residual", "spectral_residual")

    def validate(self) -> None:
        self.validate_members("ensemble")
