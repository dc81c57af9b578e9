"""Supervised 1-D CNN: 2 x (Conv1d kernel 6 -> ReLU -> MaxPool kernel 6 stride 2) -> 3 dense layers -> 2 classes.

A window's label is the label of its last point, and its score is P(anomaly) for that point.
Class-balanced sampling, noise augmentation, the masked loss and scoring come from
:class:`models.torch_base.WindowClassifier`. Raises :class:`models.base.SkipDetector` when the
train split has no labels.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from models.torch_base import ClassifierConfig, WindowClassifier


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


class CnnClassifierNet(nn.Module):
    def __init__(self, cfg: CnnClassifierConfig):
        super().__init__()
        blocks, channels = [], 1
        for out in cfg.channels:
            # ceil_mode: with floor pooling the last convolution step, the only one that sees the window's
            # last point (the point being scored), would be dropped.
            blocks += [nn.Conv1d(channels, out, cfg.kernel_size), nn.ReLU(),
                       nn.MaxPool1d(cfg.pool_size, cfg.pool_stride, ceil_mode=True)]
            channels = out
        self.features = nn.Sequential(*blocks, nn.Flatten())
        hidden1, hidden2 = cfg.dense_sizes
        self.classifier = nn.Sequential(
            nn.Linear(channels * cfg.feature_length(), hidden1), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(hidden1, hidden2), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(hidden2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.unsqueeze(1)))


class CnnClassifier(WindowClassifier):
    name = "cnn_classifier"
    config_class = CnnClassifierConfig
    config: CnnClassifierConfig

    def _build_module(self) -> nn.Module:
        return CnnClassifierNet(self.config)
