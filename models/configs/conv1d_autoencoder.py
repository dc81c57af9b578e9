"""Hyperparameters of :mod:`models.conv1d_autoencoder`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.configs.shared import ReconstructorConfig


@dataclasses.dataclass
class Conv1dAutoencoderConfig(ReconstructorConfig):
    filters: int = 256
    kernel_size: int = 5
    max_train_windows: int | None = 8192

    def validate(self) -> None:
        super().validate()
        self._positive("filters", "kernel_size")
