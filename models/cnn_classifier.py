"""Supervised 1-D CNN: 2 x (Conv1d kernel 6 -> ReLU -> MaxPool kernel 6 stride 2) -> 3 dense layers -> 2 classes.

A window's label is the label of its last point, and its score is P(anomaly) for that point.
Class-balanced sampling, noise augmentation, the masked loss and scoring come from
:class:`models.torch_base.WindowClassifier`. Raises :class:`models.base.SkipDetector` when the
train split has no labels.
"""
from __future__ import annotations

import torch
from torch import nn

from models.configs.cnn_classifier import CnnClassifierConfig
from models.torch_base import WindowClassifier


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
