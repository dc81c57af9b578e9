"""Hyperparameters of :mod:`models.cnn_classifier`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.configs.shared import ClassifierConfig


@dataclasses.dataclass
class CnnClassifierConfig(ClassifierConfig):
    channels: tuple[int, ...] = (16, 32)    # filters of the two convolution blocks
    kernel_size: int = 6
    pool_size: int = 6
    pool_stride: int = 2
    dense_sizes: tuple[int, ...] = (64, 32)  # the two hidden dense layers; a third maps to 2 classes
    dropout: float = 0.3
    max_train_windows: int | None = 8192

    def validate(self) -> None:
        super().validate()
        self._positive("kernel_size", "pool_size", "pool_stride")
        if len(self.channels) != 2 or len(self.dense_sizes) != 2 or min(*self.channels, *self.dense_sizes) <= 0:
            raise ValueError("CnnClassifierConfig: 'channels' and 'dense_sizes' must each be 2 positive sizes")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"CnnClassifierConfig: 'dropout' must be in [0, 1), got {self.dropout}")
        if self.feature_length() < 1:
            raise ValueError(f"CnnClassifierConfig: 'window' {self.window} is too short for two blocks of "
                             f"kernel {self.kernel_size} and pool {self.pool_size}")

    def feature_length(self) -> int:
        """Time steps left after the convolution blocks (no padding; pooling in ceil mode)."""
        length = self.window
        for _ in self.channels:
            length = -(-(length - self.kernel_size + 1 - self.pool_size) // self.pool_stride) + 1
        return length
