"""Conv1D autoencoder: Conv1D(256 filters, kernel 5, same padding, ReLU) -> global max pool -> dense.

Global max pooling keeps, for each filter, only how strongly its pattern occurs somewhere in the
window, not where. The dense decoder must rebuild the window from that bag of pattern strengths,
so ordinary shapes (which the filters learn) reconstruct well and shapes no filter has seen (a
spike, a burst of noise) do not; that gap is the anomaly score.

Windows, masked loss and the per-point score come from :class:`models.torch_base.WindowReconstructor`.
"""
from __future__ import annotations

import torch
from torch import nn

from models.configs.conv1d_autoencoder import Conv1dAutoencoderConfig
from models.torch_base import WindowReconstructor


class Conv1dAutoencoderNet(nn.Module):
    def __init__(self, window: int, filters: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv1d(1, filters, kernel_size, padding="same")
        self.decoder = nn.Linear(filters, window)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = torch.relu(self.conv(x.unsqueeze(1))).amax(dim=-1)  # global max pool over time
        return self.decoder(code), code


class Conv1dAutoencoder(WindowReconstructor):
    name = "conv1d_autoencoder"
    config_class = Conv1dAutoencoderConfig
    config: Conv1dAutoencoderConfig

    def _build_module(self) -> nn.Module:
        return Conv1dAutoencoderNet(self.config.window, self.config.filters, self.config.kernel_size)
