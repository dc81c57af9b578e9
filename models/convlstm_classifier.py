"""Supervised Conv-LSTM: 3 x (Conv1d -> ReLU -> MaxPool 2) -> LSTM -> softmax over the window label.

The convolutions turn the window into a short sequence of local features (1/8 of its length), and
the LSTM reads that sequence in order, so the classifier sees both local shape and its position
relative to the window's end. A window's label is its last point's; the score is P(anomaly) for
that point. Sampling, augmentation, masked loss and scoring come from
:class:`models.torch_base.WindowClassifier`.
"""
from __future__ import annotations

import torch
from torch import nn

from models.configs.convlstm_classifier import ConvLstmClassifierConfig
from models.torch_base import WindowClassifier


class ConvLstmClassifierNet(nn.Module):
    def __init__(self, cfg: ConvLstmClassifierConfig):
        super().__init__()
        blocks, channels = [], 1
        for out in cfg.channels:
            blocks += [nn.Conv1d(channels, out, cfg.kernel_size, padding="same"), nn.ReLU(), nn.MaxPool1d(cfg.pool_size)]
            channels = out
        self.features = nn.Sequential(*blocks)
        self.lstm = nn.LSTM(channels, cfg.lstm_units, batch_first=True)
        self.head = nn.Linear(cfg.lstm_units, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = self.features(x.unsqueeze(1)).transpose(1, 2)  # (B, channels, T') -> (B, T', channels)
        _, (hidden, _) = self.lstm(steps)
        return self.head(hidden[-1])  # logits; the softmax is in the loss and in scoring


class ConvLstmClassifier(WindowClassifier):
    name = "convlstm_classifier"
    config_class = ConvLstmClassifierConfig
    config: ConvLstmClassifierConfig

    def _build_module(self) -> nn.Module:
        return ConvLstmClassifierNet(self.config)
