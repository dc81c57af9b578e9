"""VAE-LSTM (Lin, Clark, Birke, Schönborn, Trigoni, Roberts: "Anomaly detection for time series
using VAE-LSTM hybrid model", ICASSP 2020).

- A VAE embeds windows of ``l_win`` points into ``code_size`` latent means (local shape).
- An LSTM (``lstm_layers`` x ``lstm_units``, 3 x 64 as in the original) reads a sequence of the
  embeddings of ``l_seq`` back-to-back windows and predicts each next embedding (long-term order).
- The VAE decoder turns the predicted embeddings back into windows; the score of a point is its
  absolute reconstruction error. A window that is odd in itself, or odd given what came before it,
  reconstructs badly.

Training has two phases, both through :meth:`TorchDetector._train_module`: first the VAE on windows,
then (VAE frozen) the LSTM on sequences of VAE means. The predictor is a real ``nn.LSTM``.

Sequences. A sequence starting at row ``s`` of a KPI is the ``l_seq`` windows starting at
``s, s + l_win, ..., s + (l_seq - 1) * l_win`` (it spans ``l_win * l_seq`` points). Training uses
sequences at every ``train_stride`` offset, not only the original's non-overlapping ones, which
gives ``l_win`` times more sequences from the same data.

Scoring: sequences start every ``score_stride`` rows (plus one ending at the KPI's last row). The
LSTM predicts windows 1..l_seq-1 of each sequence (window 0 has no history); every point gets the
mean absolute error over all predicted windows covering it (``spread_to_points``). The first
``l_win`` rows of a KPI are never predicted (filled by :meth:`models.base.Detector.score`), and a
KPI shorter than one sequence gets no score of its own.

Causal scoring (``causal=True``): row ``t`` is scored from the sequence of ``l_seq`` windows that
ends at ``t`` (rows ``t - l_win * l_seq + 1 .. t``). The LSTM reads the codes of its first
``l_seq - 1`` windows, the decoder turns the last prediction into the window ending at ``t``, and the
score is the absolute error at that window's last position, row ``t``. The VAE encodes every
stride-1 window once; the sequences are strided views over those codes, and the LSTM runs once per
row, batched. The first ``l_win * l_seq - 1`` rows of a KPI have no full sequence (filled).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from models.base import observed_of, values_of
from models.configs.vae_lstm import VaeLstmConfig
from models.frame import kpi_slices
from models.torch_base import Tensors, TorchDetector, masked_mse, to_tensor
from models.windowing import (covering_starts, last_position, scores_at_window_ends, sequence_window_starts,
                              spread_to_points, window_starts, windows_at, windows_by_kpi)


class Vae(nn.Module):
    def __init__(self, l_win: int, hidden: int, code_size: int):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(l_win, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden // 2), nn.LeakyReLU())
        self.mean = nn.Linear(hidden // 2, code_size)
        self.log_var = nn.Linear(hidden // 2, code_size)
        self.decoder = nn.Sequential(nn.Linear(code_size, hidden // 2), nn.LeakyReLU(), nn.Linear(hidden // 2, hidden),
                                     nn.LeakyReLU(), nn.Linear(hidden, l_win))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mean(h), self.log_var(h).clamp(-10.0, 10.0)  # clamped: exp() must not overflow early on

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mean, log_var = self.encode(x)
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp() if self.training else mean
        return self.decoder(z), mean, log_var


class EmbeddingPredictor(nn.Module):
    def __init__(self, code_size: int, units: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(code_size, units, layers, batch_first=True)
        self.head = nn.Linear(units, code_size)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, S, code) -> (B, S, code)``: output ``j`` predicts embedding ``j + 1``."""
        hidden, _ = self.lstm(embeddings)
        return self.head(hidden)


class VaeLstmNet(nn.Module):
    def __init__(self, cfg: VaeLstmConfig):
        super().__init__()
        self.vae = Vae(cfg.l_win, cfg.vae_hidden, cfg.code_size)
        self.predictor = EmbeddingPredictor(cfg.code_size, cfg.lstm_units, cfg.lstm_layers)

    def reconstruct_next(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, S, code) -> (B, S, l_win)``: the windows that should follow each of the S embeddings."""
        return self.vae.decoder(self.predictor(embeddings))


class VaeLstm(TorchDetector):
    name = "vae_lstm"
    config_class = VaeLstmConfig
    config: VaeLstmConfig

    def _build_module(self) -> nn.Module:
        return VaeLstmNet(self.config)

    def _fit_core(self, train: pd.DataFrame, val: pd.DataFrame | None) -> None:
        self.module = self._build_module().to(self.device)
        windows = [self._window_tensors(f) if f is not None else None for f in (train, val)]
        self._train_module(self.module.vae, self._vae_loss, *windows, phase="vae")
        # Embeddings come from the VAE's best epoch, which the LSTM phase then leaves untouched.
        sequences = [self._sequence_tensors(f) if f is not None else None for f in (train, val)]
        self._train_module(self.module.predictor, self._lstm_loss, *sequences, phase="lstm")

    # -- phase 1: the VAE on windows ------------------------------------------------------------
    def _window_tensors(self, frame: pd.DataFrame) -> Tensors:
        slices, cfg = kpi_slices(frame), self.config
        x, _ = windows_by_kpi(values_of(frame), slices, cfg.l_win, cfg.train_stride)
        observed, _ = windows_by_kpi(observed_of(frame), slices, cfg.l_win, cfg.train_stride)
        return to_tensor(x), to_tensor(observed)

    def _vae_loss(self, vae: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        x, observed = batch
        recon, mean, log_var = vae(x)
        kl = -0.5 * (1 + log_var - mean.square() - log_var.exp()).float().sum(-1)
        return masked_mse(recon, x, observed) + self.config.kl_weight * kl.mean() / self.config.l_win

    # -- phase 2: the LSTM on sequences of embeddings ---------------------------------------------
    def sequences(self, values: np.ndarray, observed: np.ndarray, seq_starts: np.ndarray):
        """Embeddings ``(S, l_seq, code)`` of the sequences starting at ``seq_starts`` (rows of one KPI),
        whether each window was fully observed ``(S, l_seq)``, and the windows' starts ``(S, l_seq)``."""
        cfg = self.config
        starts = sequence_window_starts(seq_starts, cfg.l_win, cfg.l_seq)
        unique, index = np.unique(starts, return_inverse=True)  # sequences share most of their windows
        codes = self._infer(lambda x: self.module.vae.encode(x)[0], windows_at(values, unique, cfg.l_win))
        full = windows_at(observed, unique, cfg.l_win).min(axis=1)
        return codes[index.reshape(starts.shape)], full[index.reshape(starts.shape)], starts

    def _sequence_tensors(self, frame: pd.DataFrame) -> Tensors:
        codes, full = [], []
        values, observed = values_of(frame), observed_of(frame)
        for _, sl in kpi_slices(frame):
            seq_starts = window_starts(sl.stop - sl.start, self.config.span, self.config.train_stride)
            if len(seq_starts):
                c, f, _ = self.sequences(values[sl], observed[sl], seq_starts)
                codes.append(c)
                full.append(f)
        if not codes:
            return torch.empty(0, self.config.l_seq, self.config.code_size), torch.empty(0, self.config.l_seq)
        return to_tensor(np.concatenate(codes)), to_tensor(np.concatenate(full))

    def _lstm_loss(self, predictor: nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        codes, full = batch
        # Targets are embeddings of fully observed windows only: an interpolated stretch is no evidence.
        return masked_mse(predictor(codes[:, :-1]), codes[:, 1:], full[:, 1:, None])

    # -- scoring ----------------------------------------------------------------------------------
    def _score_core(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        if causal:
            return self._causal_score(frame)
        cfg = self.config
        values, observed = values_of(frame), observed_of(frame)
        errors, starts = [], []
        for _, sl in kpi_slices(frame):
            seq_starts = covering_starts(sl.stop - sl.start, cfg.span, cfg.score_stride)
            if not len(seq_starts):
                continue
            codes, _, win_starts = self.sequences(values[sl], observed[sl], seq_starts)
            predicted = self._infer(self.module.reconstruct_next, codes[:, :-1])  # windows 1 .. l_seq-1
            actual = windows_at(values[sl], win_starts[:, 1:].ravel(), cfg.l_win)
            errors.append(np.abs(predicted.reshape(-1, cfg.l_win) - actual))
            starts.append(sl.start + win_starts[:, 1:].ravel())
        if not errors:
            return np.full(len(frame), np.nan)
        return spread_to_points(np.concatenate(errors), np.concatenate(starts), len(frame), cfg.l_win)

    def _causal_score(self, frame: pd.DataFrame) -> np.ndarray:
        """Row ``t``: |value at ``t`` - the last point of the window predicted for the sequence ending at ``t``|."""
        cfg = self.config
        values, slices = values_of(frame), kpi_slices(frame)
        if not any(sl.stop - sl.start >= cfg.span for _, sl in slices):
            return np.full(len(frame), np.nan)
        # Row r holds its value and the code of the window ending at r (NaN before the first window).
        codes = self._infer_at_window_ends(values, slices, cfg.l_win, lambda x: self.module.vae.encode(x)[0])
        rows = np.concatenate([values[:, None], codes], axis=1)
        # In the span ending at t, window j ends at position (j + 1) * l_win - 1; windows 0 .. l_seq - 2
        # are the history the LSTM reads, the last one is what it predicts.
        history = slice(cfg.l_win - 1, cfg.span - cfg.l_win, cfg.l_win)

        def predicted_error(history_codes: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
            window = self.module.vae.decoder(last_position(self.module.predictor(history_codes)))
            return (last_position(window).float() - actual).abs()

        return scores_at_window_ends(rows, slices, cfg.span,
                                     lambda view: self._infer(predicted_error, view[:, history, 1:], view[:, -1, 0]))
