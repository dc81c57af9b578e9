"""Seasonal residual: how far a point is from the same time of day and week, in units of the usual miss.

Per KPI, with ``d`` and ``w`` the grid steps of one ``day`` and one ``week`` (converted from time with
the KPI's own sampling interval, the median spacing of its timestamps, so 1-minute and 5-minute grids
both work):

- baseline ``b_t`` = median of the *observed* values at ``t - i d - k .. t - i d + k`` for ``i = 1 ..
  days`` and at ``t - w - k .. t - w + k`` (``k = neighbours``: a few points either side absorb small
  phase drifts; several days make the baseline less noisy than one day back). Where a week (or ``i``
  days) of history is not there yet, the median uses the candidates that exist (candidates closer than
  one step back are dropped); where not even a day is there (the first day, short KPIs) or every
  candidate was interpolated, the baseline is the median of the observed values among the
  ``fallback_window`` before ``t``.
- residual ``r_t = x_t - b_t``;
- scale ``s_t = max(1.4826 * median|r|, mean_scale * mean|r|, min_scale)`` over the ``scale_window``
  observed points before ``t``: a robust standard deviation of the misses so far, so a noisy KPI needs
  a larger miss; the mean term widens it on a spiky KPI whose routine misses are rare but large (the
  median alone ignores them, and every routine spike then scores in the hundreds); ``t`` itself is
  left out, or a long anomaly would dilute itself;
- score ``|r_t| / s_t``; NaN (filled by :meth:`models.base.Detector.score`) until
  ``min_history`` residuals exist, and at interpolated points.

Interpolated points (``missing``) are never used as a baseline candidate nor in the scales, and are not
scored: they are guesses, not history (scoring the miss of a straight line drawn across a gap raised
false alarms on NAB's traffic series). Every term reads rows before ``t`` (and ``x_t``): the rule is
causal as it stands and ``causal=True`` takes the same path. Nothing is learnt; ``fit`` only checks its
input.

The defaults were chosen on NAB (58 series, causal, NAB's likelihood calibration; nab_standard_oracle
50.5 -> 61.2) and checked on AIOps 2018 (aiops_f1 0.40 -> 0.51): three days instead of one and the mean
term help both; not scoring interpolated points helps NAB and changes nothing on AIOps; the scale over
1,440 points instead of 288 (a day at 1 minute, five days at 5 minutes) helps NAB (56.0 -> 61.2) and
costs AIOps about 0.05 (scratch runs, not a bench figure); 8,640 was no better on NAB and much worse on AIOps.
"""
from __future__ import annotations


import numpy as np
import pandas as pd

from models.base import FixedRule
from models.configs.seasonal_residual import SeasonalResidualConfig
from models.frame import MAD_TO_STD, MISSING, TIMESTAMP, VALUE


def grid_step(timestamps: pd.Series) -> pd.Timedelta | None:
    """The KPI's sampling interval: the median spacing (robust to the odd longer gap); None for one row."""
    if len(timestamps) < 2:
        return None
    ts = timestamps.to_numpy(dtype="datetime64[ns]") if not isinstance(timestamps.dtype, pd.DatetimeTZDtype) \
        else timestamps.dt.tz_convert(None).to_numpy(dtype="datetime64[ns]")
    return pd.Timedelta(int(np.median(np.diff(ts).astype(np.int64))), "ns")


def period_steps(period: str | pd.Timedelta, step: pd.Timedelta | None) -> int | None:
    """``period`` in grid steps (rounded), or None when the grid is unknown."""
    if step is None:
        return None
    return max(int(round(pd.Timedelta(period) / step)), 1)


def shifted(x: np.ndarray, lag: int) -> np.ndarray:
    """``x[t - lag]`` (NaN where ``t < lag``)."""
    out = np.full(len(x), np.nan)
    if 0 < lag < len(x):
        out[lag:] = x[:-lag]
    elif lag == 0:
        out[:] = x
    return out


def row_nanmedian(a: np.ndarray) -> np.ndarray:
    """Median of each row ignoring NaN (NaN for an all-NaN row), via one sort: NaN sorts last."""
    a = np.sort(a, axis=1)
    count = (~np.isnan(a)).sum(axis=1)
    lo = np.take_along_axis(a, np.maximum((count - 1) // 2, 0)[:, None], 1)[:, 0]
    hi = np.take_along_axis(a, np.maximum(count // 2, 0)[:, None], 1)[:, 0]
    return np.where(count > 0, 0.5 * (lo + hi), np.nan)


def seasonal_baseline(observed: np.ndarray, periods: list[int], neighbours: int, fallback_window: int) -> np.ndarray:
    """Median of the observed values (NaN = missing) at ``t - p - k .. t - p + k`` for each period ``p``;
    the trailing median of ``fallback_window`` values where no candidate exists."""
    lags = sorted({p + j for p in periods for j in range(-neighbours, neighbours + 1) if p + j >= 1})
    base = np.full(len(observed), np.nan)
    if lags:
        base = row_nanmedian(np.stack([shifted(observed, lag) for lag in lags], axis=1))
    fallback = pd.Series(observed).rolling(fallback_window, min_periods=1).median().shift(1).to_numpy()
    return np.where(np.isnan(base), fallback, base)


def trailing_scale(x: np.ndarray, missing: np.ndarray, window: int, min_history: int, mean_weight: float) -> np.ndarray:
    """``max(1.4826 * median |x|, mean_weight * mean |x|)`` over the ``window`` observed points before ``t``
    (NaN until ``min_history`` of them exist); ``t`` itself is left out."""
    past = pd.Series(np.where(missing, np.nan, np.abs(x))).rolling(window, min_periods=min_history)
    scale = MAD_TO_STD * past.median().to_numpy()
    if mean_weight > 0:
        scale = np.maximum(scale, mean_weight * past.mean().to_numpy())
    return shifted(scale, 1)


def seasonal_periods(cfg: SeasonalResidualConfig, step: pd.Timedelta | None) -> list[int]:
    """The baseline's periods in grid steps: 1 .. ``days`` days and a week (none when the grid is unknown)."""
    spans = [pd.Timedelta(cfg.day) * i for i in range(1, cfg.days + 1)] + [pd.Timedelta(cfg.week)]
    return sorted({p for p in (period_steps(span, step) for span in spans) if p is not None})


def seasonal_expected(values: np.ndarray, missing: np.ndarray, step: pd.Timedelta | None,
                      cfg: SeasonalResidualConfig) -> np.ndarray:
    """The baseline ``b_t`` for one KPI: what :func:`seasonal_scores` measures the miss from."""
    observed = np.where(missing, np.nan, values)
    return seasonal_baseline(observed, seasonal_periods(cfg, step), cfg.neighbours, cfg.fallback_window)


def seasonal_scores(values: np.ndarray, missing: np.ndarray, step: pd.Timedelta | None,
                    cfg: SeasonalResidualConfig) -> np.ndarray:
    """``|x_t - b_t| / s_t`` for one KPI (NaN before ``min_history`` residuals and at interpolated points)."""
    residual = values - seasonal_expected(values, missing, step, cfg)
    scale = trailing_scale(residual, missing, cfg.scale_window, cfg.min_history, cfg.mean_scale)
    score = np.abs(residual) / np.maximum(scale, cfg.min_scale)  # a NaN scale stays NaN (np.maximum)
    return np.where(missing, np.nan, score)  # an interpolated point is not scored (a guess, not a miss)


class SeasonalResidual(FixedRule):
    name = "seasonal_residual"
    config_class = SeasonalResidualConfig
    config: SeasonalResidualConfig

    def _score_kpi(self, kpi: pd.DataFrame) -> np.ndarray:
        return seasonal_scores(kpi[VALUE].to_numpy(dtype=np.float64), kpi[MISSING].to_numpy(dtype=bool),
                               grid_step(kpi[TIMESTAMP]), self.config)

    def _expected_kpi(self, kpi: pd.DataFrame) -> np.ndarray:
        return seasonal_expected(kpi[VALUE].to_numpy(dtype=np.float64), kpi[MISSING].to_numpy(dtype=bool),
                                 grid_step(kpi[TIMESTAMP]), self.config)
