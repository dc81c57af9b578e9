"""Hyperparameters of :mod:`models.lstm_forecaster`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.configs.shared import TorchConfig


@dataclasses.dataclass
class LstmForecasterConfig(TorchConfig):
    time_steps: int = 48        # minimum context before a prediction (the seed's look-back)
    chunk_length: int = 256     # predictions read out per LSTM pass, after the warm-up
    hidden_size: int = 64
    num_layers: int = 1
    train_stride: int = 8       # offset between training chunks (they overlap)
    # Chunks drawn per epoch: a chunk is ~6x a 48-point window, so 1,024 is about the 8,192 windows the
    # other networks draw. The default data has ~2,300 chunks; a bigger source no longer grows an epoch.
    max_train_windows: int | None = 1024
    score_batch_size: int = 512  # chunks per inference batch

    def validate(self) -> None:
        super().validate()
        self._positive("time_steps", "chunk_length", "hidden_size", "num_layers", "train_stride")

    @property
    def span(self) -> int:
        return self.time_steps + self.chunk_length
