"""Spectral residual (Ren et al., "Time-Series Anomaly Detection Service at Microsoft", KDD 2019).

For a window ``x`` of ``window`` points ending at ``t`` (the stride-1 window of the KPI: causal):

1. extension (the paper's fix for the lag at the window's end): append ``m`` copies of an estimated
   next point, so the scored point is no longer on the circular boundary of the FFT; the series has
   ``N = window + m`` points. The estimate follows Microsoft's reference implementation
   (``predict_next(values[-m-2:-1])`` in microsoft/anomalydetector): the paper's rule
   ``x_{n-m+1} + g * m`` with ``g`` the mean gradient of ``m`` points to the newest one, applied one
   step back, to the ``m + 1`` points *before* ``x_n``: ``x_{n-m} + m * mean_{i=1..m}
   (x_{n-1} - x_{n-1-i}) / i``. Read literally (gradients to ``x_n`` itself), the rule copies a
   spike at ``x_n`` into the extension (about 2.3 x its height) and hides it: on the test data a
   single spike's AUC drops from 1.0 to 0.64-0.83;
2. ``F = rfft(series)``, log amplitude ``L = log |F|``, its local (trailing, ``q`` frequencies)
   average ``AL``, spectral residual ``R = L - AL``;
3. saliency map ``S = |irfft(exp(R + i * phase))|`` (a half spectrum: the real-input form of the
   paper's ``|IFFT|``);
4. score of ``t`` (the window's last *real* point, ``n``):
   ``(S_n - mean(S_{n-z} .. S_{n-1})) / mean(S_{n-z} .. S_{n-1})`` (the local average of the
   ``z`` saliency values before it).

Nothing is learnt: ``fit`` only checks its input. The first ``window - 1`` points of a KPI have no
window (NaN, filled by :meth:`models.base.Detector.score`). Causal as it stands: ``causal=True``
takes the same path.

Why not ``numpy.fft`` on a batch of windows: one length-``N`` rfft + irfft per point costs about
2 s per million points on one core (over 5 s when ``N = 133`` is not a power of two). Three exact
rewrites make it several times cheaper, with the same result up to float rounding (a test compares
them with a direct per-window rfft/irfft):

- the half spectrum of a window and its extension is one matrix product,
  ``[x_{n-window+1} .. x_n, x_{n+1}] @ D`` with ``D`` the ``(window + 1, 2K)`` DFT matrix (cosines
  and sines; the extension's row sums its ``m`` columns): BLAS, all windows of a block at once;
- ``exp(R + i * phase) = F/|F| * exp(log|F| - AL) = F * exp(-AL)`` (where ``|F| > 0``): no phase,
  no exp of the amplitude;
- only ``z + 1`` saliency values are needed: the inverse transform at those positions is a
  ``(2K, z + 1)`` matrix product rather than a full irfft.
"""
from __future__ import annotations


import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from models.base import FixedRule
from models.configs import SpectralResidualConfig
from models.frame import VALUE

AMPLITUDE_EPS = 1e-8  # |F| below this is a zero: its log is clipped and its phase taken as 0
SALIENCY_EPS = 1e-8   # floor of the local average of the saliency


def trailing_mean(a: np.ndarray, q: int) -> np.ndarray:
    """Mean of ``a[..., max(0, k - q + 1) .. k]`` along the last axis (fewer terms at the start)."""
    c = np.cumsum(a, axis=-1)
    out = c.copy()
    out[..., q:] -= c[..., :-q]
    return out / np.minimum(np.arange(1, a.shape[-1] + 1), q)


def extension_values(x: np.ndarray, window: int, m: int) -> np.ndarray:
    """The estimated point appended to each window ending at ``n = window - 1 .. len(x) - 1``:
    ``x_{n-m} + g * m`` with ``g = mean_{i=1..m} (x_{n-1} - x_{n-1-i}) / i``, read from the ``m + 1``
    points *before* ``x_n`` (see the module docstring for why not ``x_n`` itself)."""
    prev = x[window - 2: len(x) - 1]
    g = sum((prev - x[window - 2 - i: len(x) - 1 - i]) / i for i in range(1, m + 1)) / m  # a loop over m only
    return x[window - 1 - m: len(x) - m] + g * m


class SpectralTables:
    """The forward and (partial) inverse DFT matrices for one configuration, shared by all KPIs."""

    def __init__(self, cfg: SpectralResidualConfig):
        self.cfg = cfg
        n_fft = cfg.window + cfg.extend
        k = np.arange(n_fft // 2 + 1)
        self.n_freq = len(k)

        def angle(j: np.ndarray) -> np.ndarray:  # 2 pi j k / N, reduced modulo N in integers (precision)
            return 2 * np.pi * ((j[:, None] * k[None, :]) % n_fft) / n_fft
        real = angle(np.arange(cfg.window))
        tail = angle(np.arange(cfg.window, n_fft))  # the m copies of the estimate share one row
        self.forward = np.concatenate([
            np.concatenate([np.cos(real), -np.sin(real)], axis=1),
            np.concatenate([np.cos(tail).sum(0), -np.sin(tail).sum(0)])[None, :]])
        # Inverse at positions p = n - z .. n of a half spectrum, as irfft reads it: weight 1 for DC
        # (and Nyquist when N is even), 2 for the others; imaginary parts of DC/Nyquist ignored.
        weight = np.full(len(k), 2.0)
        weight[0] = 1.0
        if n_fft % 2 == 0:
            weight[-1] = 1.0
        inv = angle(np.arange(cfg.window - 1 - cfg.score_window, cfg.window)).T  # (K, z + 1)
        self.inverse = np.concatenate([weight[:, None] * np.cos(inv), -weight[:, None] * np.sin(inv)]) / n_fft

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Scores of the window ends ``window - 1 .. len(x) - 1`` of one KPI."""
        cfg, n_freq = self.cfg, self.n_freq
        windows = sliding_window_view(x, cfg.window)
        est = extension_values(x, cfg.window, cfg.extend)
        out = np.empty(len(est))
        for start in range(0, len(est), cfg.batch_windows):  # blocks of windows, not a loop per window
            stop = min(start + cfg.batch_windows, len(est))
            block = np.concatenate([windows[start:stop], est[start:stop, None]], axis=1)  # contiguous
            spec = block @ self.forward                                        # (b, 2K): real | imaginary
            power = spec[:, :n_freq] ** 2 + spec[:, n_freq:] ** 2
            avg_log = trailing_mean(0.5 * np.log(np.maximum(power, AMPLITUDE_EPS ** 2)), cfg.amplitude_window)
            # exp(R + i*phase) = F/|F| * exp(log|F| - AL) = F * exp(-AL); a zero amplitude keeps phase 0
            zero = power <= AMPLITUDE_EPS ** 2
            if zero.any():  # rare (a constant window): amplitude eps, phase 0, as the log's clip
                spec[:, :n_freq][zero], spec[:, n_freq:][zero] = AMPLITUDE_EPS, 0.0
            spec *= np.tile(np.exp(-avg_log), 2)
            saliency = np.abs(spec @ self.inverse)                             # (b, z + 1)
            local = np.maximum(saliency[:, :-1].mean(axis=1), SALIENCY_EPS)
            out[start:stop] = (saliency[:, -1] - local) / local
        return out


class SpectralResidual(FixedRule):
    name = "spectral_residual"
    config_class = SpectralResidualConfig
    config: SpectralResidualConfig

    def __init__(self, config=None, train_config=None):
        super().__init__(config, train_config)
        self.tables = SpectralTables(self.config)  # the transform's matrices, built once

    def _score_kpi(self, kpi: pd.DataFrame) -> np.ndarray:
        # The window ending at t only; a KPI shorter than one window has no score of its own.
        window, out = self.config.window, np.full(len(kpi), np.nan)
        if len(kpi) >= window:
            out[window - 1:] = self.tables.scores(kpi[VALUE].to_numpy(dtype=np.float64))
        return out
