"""Dense autoencoder: window -> 14 (tanh) -> 7 (ReLU) -> 7 (tanh) -> window, L1 activity on the code.

Seed design: the classic Keras fraud-detection autoencoder (``Dense(14, tanh,
activity_regularizer=l1)``, ``Dense(7, relu)``, ``Dense(7, tanh)``, ``Dense(n, relu)``), applied to
windows. The output layer is linear instead of ReLU: values are z-normalised, and a ReLU output
could never reconstruct the negative half of them.

The L1 penalty (``activity_l1 * mean over the batch of sum |code|``, as Keras computes it) pushes
the 14-unit code towards sparsity; :class:`models.torch_base.WindowReconstructor` adds it to the
masked reconstruction loss and provides windows and scoring.
"""
from __future__ import annotations

import torch
from torch import nn

from models.configs.dense_autoencoder import DenseAutoencoderConfig
from models.torch_base import WindowReconstructor


class DenseAutoencoderNet(nn.Module):
    def __init__(self, window: int, hidden_sizes: tuple[int, int, int]):
        super().__init__()
        code, inner, outer = hidden_sizes
        self.encoder = nn.Sequential(nn.Linear(window, code), nn.Tanh())
        self.decoder = nn.Sequential(nn.Linear(code, inner), nn.ReLU(), nn.Linear(inner, outer), nn.Tanh(),
                                     nn.Linear(outer, window))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(x)
        return self.decoder(code), code


class DenseAutoencoder(WindowReconstructor):
    name = "dense_autoencoder"
    config_class = DenseAutoencoderConfig
    config: DenseAutoencoderConfig

    def _build_module(self) -> nn.Module:
        return DenseAutoencoderNet(self.config.window, self.config.hidden_sizes)
