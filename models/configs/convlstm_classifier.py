"""Hyperparameters of :mod:`models.convlstm_classifier`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.configs.shared import ClassifierConfig


@dataclasses.dataclass
class ConvLstmClassifierConfig(ClassifierConfig):
    channels: tuple[int, ...] = (8, 16, 16)  # filters of the three convolution blocks
    kernel_size: int = 3
    pool_size: int = 2
    lstm_units: int = 32
    max_train_windows: int | None = 8192

    def validate(self) -> None:
        super().validate()
        self._positive("kernel_size", "pool_size", "lstm_units")
        if len(self.channels) != 3 or min(self.channels) <= 0:
            raise ValueError(f"ConvLstmClassifierConfig: 'channels' must be 3 positive sizes, got {list(self.channels)}")
        if self.window < self.pool_size ** 3:
            raise ValueError(f"ConvLstmClassifierConfig: 'window' must be at least pool_size**3 = "
                             f"{self.pool_size ** 3}, got {self.window}")
