"""Hyperparameters of :mod:`models.lstm_autoencoder`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.configs.shared import ReconstructorConfig


@dataclasses.dataclass
class LstmAutoencoderConfig(ReconstructorConfig):
    hidden_size: int = 128   # encoder units = size of the code
    max_train_windows: int | None = 8192

    def validate(self) -> None:
        super().validate()
        self._positive("hidden_size")
