"""LSTM autoencoder: an LSTM encoder summarises a window, a dense decoder reconstructs it.

Seed design: the recurrent autoencoder of keras-anomaly-detection (LSTM encoder, 128 units). The
decoder is dense (one hidden layer) rather than a second LSTM: it reconstructs all ``window``
points from the code at once, which halves the recurrent work per window.

Windows, masked loss and the per-point score (mean absolute reconstruction error of the scoring
windows covering a point) come from :class:`models.torch_base.WindowReconstructor`.
"""
from __future__ import annotations

import torch
from torch import nn

from models.configs.lstm_autoencoder import LstmAutoencoderConfig
from models.torch_base import WindowReconstructor


class LstmAutoencoderNet(nn.Module):
    def __init__(self, window: int, hidden_size: int):
        super().__init__()
        self.encoder = nn.LSTM(1, hidden_size, batch_first=True)
        self.decoder = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, window))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, (hidden, _) = self.encoder(x.unsqueeze(-1))
        code = hidden[-1]  # the final state has read the whole window
        return self.decoder(code), code


class LstmAutoencoder(WindowReconstructor):
    name = "lstm_autoencoder"
    config_class = LstmAutoencoderConfig
    config: LstmAutoencoderConfig

    def _build_module(self) -> nn.Module:
        return LstmAutoencoderNet(self.config.window, self.config.hidden_size)
