"""Hyperparameters of :mod:`models.isolation_forest`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.base import DetectorConfig

FEATURES = ("value", "diff")  # the per-point window features


@dataclasses.dataclass
class IsolationForestConfig(DetectorConfig):
    window: int = 8
    features: tuple[str, ...] = ("value", "diff")  # per point of a window: the value, its first difference
    n_estimators: int = 100
    max_samples: int = 256
    max_train_windows: int = 50_000   # windows handed to sklearn (a random subset beyond that)
    score_stride: int = 2             # stride of scoring windows (+ one covering each KPI's tail); not causal
    score_batch_size: int = 8192      # windows per vectorised traversal

    def validate(self) -> None:
        self._positive("window", "n_estimators", "max_samples", "max_train_windows", "score_stride", "score_batch_size")
        if self.score_stride > self.window:
            raise ValueError(f"IsolationForestConfig: 'score_stride' ({self.score_stride}) must be <= 'window' "
                             f"({self.window}) so that every point is covered")
        if not self.features or any(f not in FEATURES for f in self.features) or len(set(self.features)) < len(self.features):
            raise ValueError(f"IsolationForestConfig: 'features' must be distinct names among {list(FEATURES)}, "
                             f"got {list(self.features)}")
