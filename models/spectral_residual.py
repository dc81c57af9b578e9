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

Why not an FFT per window: a length-``N`` rfft + irfft per point costs about 2 s per million points
on one core (over 5 s when ``N = 133`` is not a power of two), and a ``(window + 1, 2K)`` DFT matrix
product per window (``K = N // 2 + 1`` frequencies, the previous version) about 3.5 s of CPU: both redo ``window`` multiplications
per frequency for each point although consecutive windows share all but one point. Exact rewrites,
with the same result up to float rounding (a test compares them with a direct per-window rfft/irfft):

- sliding DFT: with ``w = exp(-2 pi i / N)``, the transform of the window starting at ``r`` is
  ``w^(-r k) * sum_{i=r}^{r+window-1} x_i w^(i k)``: a sliding *sum* of one product table
  ``x_i w^(i k)`` (one multiplication per point and frequency), computed by doubling (sums of 2, 4,
  ... 2^j rows, ``log2(window)`` vector additions; pairwise sums, as accurate as the direct ones and
  without the cancellation of a running cumulative sum, which a 1e6 spike would leave in every
  later window). ``w^(i k)`` depends on ``i mod N`` only, so the windows of a block are grouped by
  ``c = r mod N`` (the columns of a ``(rows, N)`` reshape): the factor ``w^(-c k)`` is never applied to
  the data but folded into the extension's columns and into one inverse matrix per ``c``;
- ``exp(R + i * phase) = F/|F| * exp(log|F| - AL) = F * exp(-AL)`` (where ``|F| > 0``): no phase,
  no exp of the amplitude, and ``AL`` from ``log |F|^2`` (no square root);
- only ``z + 1`` saliency values are needed: the inverse transform at those positions is a
  ``(2K, z + 1)`` matrix product per ``c`` rather than a full irfft.

Blocks of about ``batch_windows`` windows (a multiple of ``N``) keep the ``(windows, 2K)`` arrays in
the CPU cache (a pass over a cached block costs a fraction of one over main memory), and every block
reuses the buffers of the first: a fresh multi-megabyte array per step costs more in page faults
than the arithmetic. The per-class products are small, so OpenBLAS runs them on one thread; a big
product would use every core, and its threads wait for each other for a whole time slice when
another process holds a core (the DFT-matrix product took 2-3x longer that way beside a benchmark).
"""
from __future__ import annotations


import numpy as np
import pandas as pd

from models.base import FixedRule
from models.configs.spectral_residual import SpectralResidualConfig
from models.frame import VALUE

AMPLITUDE_EPS = 1e-8  # |F| below this is a zero: its log is clipped and its phase taken as 0
SALIENCY_EPS = 1e-8   # floor of the local average of the saliency


def extension_values(x: np.ndarray, window: int, m: int) -> np.ndarray:
    """The estimated point appended to each window ending at ``n = window - 1 .. len(x) - 1``:
    ``x_{n-m} + g * m`` with ``g = mean_{i=1..m} (x_{n-1} - x_{n-1-i}) / i``, read from the ``m + 1``
    points *before* ``x_n`` (see the module docstring for why not ``x_n`` itself)."""
    prev = x[window - 2: len(x) - 1]
    g = sum((prev - x[window - 2 - i: len(x) - 1 - i]) / i for i in range(1, m + 1)) / m  # a loop over m only
    return x[window - 1 - m: len(x) - m] + g * m


def window_sums(u: np.ndarray, width: int, count: int, work: np.ndarray, total: np.ndarray) -> np.ndarray:
    """``out[r] = u[r] + ... + u[r + width - 1]`` along axis 0 for ``r < count`` (``len(u) >= count + width
    - 1``), by doubling: ``log2(width)`` vector additions plus one per further set bit of ``width``, not
    one per row. Overwrites ``u`` and ``work`` (same shape as ``u``); the result is a view into one of
    them, or into ``total`` (``count`` rows or more) when ``width`` is not a power of two. The caller
    owns the buffers: fresh multi-megabyte arrays per step cost more in page faults than the sums."""
    buffers, i, span, done, out = (u, work), 0, 1, 0, None
    level = u  # level[r] = u[r] + ... + u[r + span - 1]
    while True:
        if width & span:  # this power of two is part of the width: the block at offset `done`
            part = level[done: done + count]
            if out is None and done + span == width:
                return part  # the only one: no copy
            if out is None:
                out = total[:count]
                np.copyto(out, part)
            else:
                np.add(out, part, out=out)
            done += span
        if 2 * span > width:
            return out
        rows = len(level) - span
        i = 1 - i
        level = np.add(level[:rows], level[span:span + rows], out=buffers[i][:rows])
        span *= 2


class SpectralTables:
    """Tables for one configuration, shared by all KPIs: the product table's phases, the extension's
    contribution and the partial inverse, each per class ``c = r mod N`` (see the module docstring)."""

    def __init__(self, cfg: SpectralResidualConfig):
        self.cfg = cfg
        self.n_fft = n_fft = cfg.window + cfg.extend
        k = np.arange(n_fft // 2 + 1)
        self.n_freq = len(k)
        c = np.arange(n_fft)

        def angle(j: np.ndarray) -> np.ndarray:  # 2 pi j k / N, reduced modulo N in integers (precision)
            return 2 * np.pi * ((j[..., None] * k) % n_fft) / n_fft
        self.phase = np.stack([np.cos(angle(c)), -np.sin(angle(c))], axis=1)          # (N, 2, K): w^(c k)
        # The m copies of the estimate sit at window positions window .. N - 1: w^((c + j) k) summed.
        tail = angle(c[:, None] + np.arange(cfg.window, n_fft)[None, :])               # (N, m, K)
        self.extension = np.stack([np.cos(tail).sum(1), -np.sin(tail).sum(1)], axis=1)  # (N, 2, K)
        # Inverse at positions p = n - z .. n of a half spectrum, as irfft reads it: weight 1 for DC
        # (and Nyquist when N is even), 2 for the others; imaginary parts of DC/Nyquist ignored. Class c
        # reads position p + c: the factor w^(-c k) of its windows, folded in here.
        weight = np.full(len(k), 2.0)
        weight[0] = 1.0
        if n_fft % 2 == 0:
            weight[-1] = 1.0
        inv = angle(c[:, None] + np.arange(cfg.window - 1 - cfg.score_window, cfg.window)[None, :])  # (N, z+1, K)
        self.inverse = np.ascontiguousarray(
            np.concatenate([weight * np.cos(inv), -weight * np.sin(inv)], axis=2).transpose(0, 2, 1) / n_fft)
        self.log_weight = -0.5 / np.minimum(k + 1, cfg.amplitude_window)  # -AL = this * trailing sum of log|F|^2
        self.rows_per_block = max(1, cfg.batch_windows // n_fft)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """Scores of the window ends ``window - 1 .. len(x) - 1`` of one KPI."""
        cfg, n_fft, n_freq, window = self.cfg, self.n_fft, self.n_freq, self.cfg.window
        est = extension_values(x, window, cfg.extend)
        out = np.empty(len(est))
        # Buffers for the largest block, reused by every block (views of their first rows).
        max_rows = min(self.rows_per_block, -(-len(est) // n_fft))
        extra_rows = -(-(window - 1) // n_fft)  # points past a block's last window start, in rows of N
        y = np.empty((max_rows + extra_rows) * n_fft)
        terms, work = np.empty((2, len(y), 2 * n_freq))
        total, e = np.empty((max_rows * n_fft, 2 * n_freq)), np.empty(max_rows * n_fft)
        power, log_power, neg_avg_log = np.empty((3, max_rows * n_fft * n_freq))
        saliency = np.empty(n_fft * max_rows * (cfg.score_window + 1))
        for start in range(0, len(est), self.rows_per_block * n_fft):  # blocks of windows, not a loop per window
            stop = min(start + self.rows_per_block * n_fft, len(est))
            rows = -(-(stop - start) // n_fft)  # the block's windows as (rows, N): column = class c
            windows, points = rows * n_fft, (rows + extra_rows) * n_fft
            # Points start .. stop + window - 2, zero-padded past the KPI's end (their windows are dropped),
            # in whole rows of N so that point i takes the phase of column i mod N.
            yb = y[:points]
            yb[:stop - start + window - 1] = x[start: stop + window - 1]
            yb[stop - start + window - 1:] = 0.0
            tb = terms[:points]
            np.multiply(yb.reshape(-1, n_fft, 1, 1), self.phase, out=tb.reshape(-1, n_fft, 2, n_freq))
            spec = window_sums(tb, window, windows, work[:points], total)  # w^(c k) F without the extension
            free = work if np.shares_memory(spec, terms) else terms
            eb = e[:windows]
            eb[:stop - start] = est[start:stop]
            eb[stop - start:] = 0.0
            spec = spec.reshape(rows, n_fft, 2, n_freq)
            ext = np.multiply(eb.reshape(rows, n_fft, 1, 1), self.extension,
                              out=free[:windows].reshape(rows, n_fft, 2, n_freq))
            spec += ext
            pw = np.einsum("rcik,rcik->rck", spec, spec, out=power[:windows * n_freq].reshape(rows, n_fft, n_freq))
            zero = pw <= AMPLITUDE_EPS ** 2
            if zero.any():  # rare (a constant window): amplitude eps, phase 0, as the log's clip
                r, c, f = np.nonzero(zero)
                spec[r, c, :, f] = AMPLITUDE_EPS * self.phase[c, :, f]  # eps * w^(c k): F = eps after the fold
                pw[zero] = AMPLITUDE_EPS ** 2
            lp = np.log(pw, out=log_power[:windows * n_freq].reshape(pw.shape))
            # The trailing sum over frequencies on the flat array (one contiguous pass per term; rows of
            # ~67 are too short for numpy's inner loop), then the first q - 1 frequencies of each window,
            # which took terms from the window before, redone with their own count.
            q = min(cfg.amplitude_window, n_freq)
            flat, lp_flat = neg_avg_log[:windows * n_freq], log_power[:windows * n_freq]
            np.copyto(flat, lp_flat)
            for j in range(1, q):  # a loop over q only
                flat[j:] += lp_flat[:-j]
            flat *= self.log_weight[-1]
            g = flat.reshape(pw.shape)
            if q > 1:
                g[..., :q - 1] = np.cumsum(lp[..., :q - 1], axis=-1) * self.log_weight[:q - 1]
            # exp(R + i*phase) = F/|F| * exp(log|F| - AL) = F * exp(-AL); a zero amplitude keeps phase 0
            spec *= np.exp(g, out=g)[:, :, None, :]
            sal = np.matmul(spec.reshape(rows, n_fft, 2 * n_freq).transpose(1, 0, 2), self.inverse,
                            out=saliency[:n_fft * rows * (cfg.score_window + 1)].reshape(n_fft, rows, -1))
            np.abs(sal, out=sal)                                               # (N, rows, z + 1)
            local = np.maximum(sal[..., :-1].mean(axis=-1), SALIENCY_EPS)
            out[start:stop] = ((sal[..., -1] - local) / local).T.ravel()[:stop - start]
        return out


class SpectralResidual(FixedRule):
    name = "spectral_residual"
    config_class = SpectralResidualConfig
    config: SpectralResidualConfig

    def __init__(self, config=None, train_config=None):
        super().__init__(config, train_config)
        self.tables = SpectralTables(self.config)  # the transform's tables, built once

    def _score_kpi(self, kpi: pd.DataFrame) -> np.ndarray:
        # The window ending at t only; a KPI shorter than one window has no score of its own.
        window, out = self.config.window, np.full(len(kpi), np.nan)
        if len(kpi) >= window:
            out[window - 1:] = self.tables.scores(kpi[VALUE].to_numpy(dtype=np.float64))
        return out
