"""Hyperparameters of :mod:`models.vae_lstm`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.configs.shared import TorchConfig


@dataclasses.dataclass
class VaeLstmConfig(TorchConfig):
    l_win: int = 48
    l_seq: int = 12
    code_size: int = 6
    vae_hidden: int = 128     # width of the VAE's first (and last) hidden layer; the next one is half
    lstm_layers: int = 3
    lstm_units: int = 64
    kl_weight: float = 0.02   # = 2 sigma^2: a Gaussian likelihood with fixed sigma = 0.1, per point
    train_stride: int = 1     # offset between training windows (VAE) and training sequences (LSTM)
    score_stride: int = 24    # offset between scoring sequences (causal scoring ignores it)
    max_train_windows: int | None = 8192

    def validate(self) -> None:
        super().validate()
        self._positive("l_win", "code_size", "vae_hidden", "lstm_layers", "lstm_units", "train_stride", "score_stride")
        if self.l_seq < 2:
            raise ValueError(f"VaeLstmConfig: 'l_seq' must be >= 2 (one window of history), got {self.l_seq}")
        if self.score_stride > self.l_win:
            raise ValueError(f"VaeLstmConfig: 'score_stride' ({self.score_stride}) must be <= 'l_win' ({self.l_win})")
        if self.kl_weight < 0:
            raise ValueError(f"VaeLstmConfig: 'kl_weight' must be >= 0, got {self.kl_weight}")

    @property
    def span(self) -> int:
        return self.l_win * self.l_seq
