"""LSTM forecaster: predict each point from the points before it; score = normalised |error|.

Seed design: Keras LSTM -> Dense(sigmoid), Adam, MSE, predicting the next point from the previous
``time_steps = 48``. Two changes:

- the head is linear, not sigmoid (see :class:`LstmForecasterNet`);
- instead of one 48-step window per point (48 LSTM steps for every scored point, far too slow at
  a million points), each KPI is cut into chunks of ``time_steps + chunk_length`` points. The LSTM
  runs once over a chunk and reads out a prediction at every step after a ``time_steps`` warm-up,
  so every prediction has at least ``time_steps`` points of context, and the prediction for row t
  uses only rows of the same KPI *before* t. Training uses the same chunks (a seq2seq loss on every
  step after the warm-up), so train and score see the same context lengths.

Chunks of a KPI with ``n`` points start every ``chunk_length`` rows, plus one chunk ending at the
KPI's last row (:func:`models.windowing.covering_starts`); each row takes its prediction from the
first chunk that predicts it. The first ``time_steps`` rows of a KPI have no prediction (filled by
:meth:`models.base.Detector.score`).

Causal scoring (``causal=True``). Every prediction already reads only earlier rows of its KPI, but
the tail chunk's start depends on how many rows the KPI has, so appending rows would move the context
of the last predictions. Causal scoring keeps chunks on the fixed grid (starts ``0, chunk_length,
2 chunk_length, ...``) and cuts the last one short at the KPI's last row instead: chunk ``k`` predicts
rows ``k * chunk_length + time_steps .. (k + 1) * chunk_length + time_steps - 1``, so row ``t`` reads
rows ``(t - time_steps) // chunk_length * chunk_length .. t - 1`` whatever follows it. Rows before the
tail chunk are read from the same chunks in both modes.

Score: ``(|error| - median) / (1.4826 * MAD)`` of the absolute errors on the validation frame (on
the train frame when there is none), so scores read roughly as robust z-scores.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from models.base import values_of
from models.checks import number
from models.configs.lstm_forecaster import LstmForecasterConfig
from models.frame import MAD_TO_STD, VALUE, kpi_slices
from models.torch_base import Tensors, TorchDetector, masked_mse, masked_windows
from models.windowing import covering_starts, window_starts, windows_at

MIN_SCALE = 1e-6  # errors that never vary (a constant series) must not divide by zero


class LstmForecasterNet(nn.Module):
    def __init__(self, hidden_size: int, num_layers: int):
        super().__init__()
        self.lstm = nn.LSTM(1, hidden_size, num_layers, batch_first=True)
        # Linear, not the seed's sigmoid: values are z-normalised, so half of them are negative and
        # some exceed 1; a sigmoid output lives in (0, 1) and could not represent the targets at all.
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T) -> (B, T)``; output ``t`` is the prediction of ``x[:, t + 1]``."""
        hidden, _ = self.lstm(x.unsqueeze(-1))
        return self.head(hidden).squeeze(-1)


class LstmForecaster(TorchDetector):
    name = "lstm_forecaster"
    config_class = LstmForecasterConfig
    config: LstmForecasterConfig

    def __init__(self, config=None, train_config=None):
        super().__init__(config, train_config)
        self.error_median = 0.0
        self.error_scale = 1.0

    def _build_module(self) -> nn.Module:
        return LstmForecasterNet(self.config.hidden_size, self.config.num_layers)

    def _train_tensors(self, frame: pd.DataFrame) -> Tensors:
        return masked_windows(frame, self.config.span, self.config.train_stride)

    def _loss(self, module: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        x, observed = batch
        warm = self.config.time_steps
        # Outputs warm-1 .. T-2 predict points warm .. T-1: each has at least `warm` points of context.
        return masked_mse(module(x)[:, warm - 1:-1], x[:, warm:], observed[:, warm:])

    def _fit_core(self, train: pd.DataFrame, val: pd.DataFrame | None) -> None:
        super()._fit_core(train, val)
        reference = val if val is not None and self._has_predictions(val) else train
        errors = np.abs(self.predict(reference) - reference[VALUE].to_numpy())
        errors = errors[np.isfinite(errors)]
        if len(errors):
            self.error_median = float(np.median(errors))
            self.error_scale = max(MAD_TO_STD * float(np.median(np.abs(errors - self.error_median))), MIN_SCALE)

    def _has_predictions(self, frame: pd.DataFrame) -> bool:
        return any(sl.stop - sl.start > self.config.time_steps for _, sl in kpi_slices(frame))

    def _chunk_predictions(self, values: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
        """``(len(starts), length - time_steps)``: chunk ``i``'s predictions of rows
        ``starts[i] + time_steps .. starts[i] + length - 1`` of ``values`` (one KPI)."""
        warm = self.config.time_steps
        return self._infer(lambda x: self.module(x)[:, warm - 1:-1], windows_at(values, starts, length))

    def predict(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        """One-step-ahead prediction for every row (normalised units); NaN for each KPI's first
        ``time_steps`` rows. ``causal``: chunks on the fixed grid only (see the module docstring)."""
        warm, span, step = self.config.time_steps, self.config.span, self.config.chunk_length
        values = values_of(frame)
        out = np.full(len(frame), np.nan)
        for _, sl in kpi_slices(frame):
            n = sl.stop - sl.start
            if n <= warm:
                continue
            if causal:
                starts = window_starts(n, span, step)  # whole chunks; each predicts `step` new rows
                if len(starts):
                    rows = starts[:, None] + np.arange(warm, span)[None, :]
                    out[sl.start + rows] = self._chunk_predictions(values[sl], starts, span)
                rest = len(starts) * step  # the next chunk on the grid, cut short at the KPI's end
                if rest + warm < n:
                    out[sl.start + rest + warm: sl.stop] = self._chunk_predictions(values[sl], np.array([rest]),
                                                                                   n - rest)[0]
                continue
            length = min(span, n)  # a KPI shorter than one chunk is a single, shorter chunk
            starts = covering_starts(n, length, min(step, length))
            rows = starts[:, None] + np.arange(warm, length)[None, :]  # rows each chunk predicts
            # A row is read from the first chunk predicting it; only the tail chunk overlaps another.
            first_new = np.concatenate([[warm], starts[:-1] + length])
            keep = rows >= first_new[:, None]
            preds = self._chunk_predictions(values[sl], starts, length)
            out[sl.start + rows[keep]] = preds[keep]
        return out

    def _score_core(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        errors = np.abs(self.predict(frame, causal) - frame[VALUE].to_numpy())
        return (errors - self.error_median) / self.error_scale

    def _fitted_scalars(self) -> dict[str, float]:
        return {"error_median": self.error_median, "error_scale": self.error_scale}

    def _load_fitted_scalars(self, scalars: dict[str, float]) -> None:
        self.error_median = number(scalars.get("error_median"), "error_median")
        self.error_scale = number(scalars.get("error_scale"), "error_scale", positive=True)  # every score divides by it
