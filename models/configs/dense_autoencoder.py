"""Hyperparameters of :mod:`models.dense_autoencoder`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.configs.shared import ReconstructorConfig


@dataclasses.dataclass
class DenseAutoencoderConfig(ReconstructorConfig):
    hidden_sizes: tuple[int, ...] = (14, 7, 7)  # code, then the two inner layers
    activity_l1: float = 1e-4                   # the seed's l1(10e-5)

    def validate(self) -> None:
        super().validate()
        if len(self.hidden_sizes) != 3 or min(self.hidden_sizes) <= 0:
            raise ValueError(f"DenseAutoencoderConfig: 'hidden_sizes' must be 3 positive sizes, got {list(self.hidden_sizes)}")
        if self.activity_l1 < 0:
            raise ValueError(f"DenseAutoencoderConfig: 'activity_l1' must be >= 0, got {self.activity_l1}")
