"""Seasonal residual: how far a point is from the same time of day and week, in units of the usual miss.

Per KPI, with ``d`` and ``w`` the grid steps of one ``day`` and one ``week`` (converted from time with
the KPI's own sampling interval, the median spacing of its timestamps, so 1-minute and 5-minute grids
both work):

- baseline ``b_t`` = median of the *observed* values at ``t - d - k .. t - d + k`` and
  ``t - w - k .. t - w + k`` (``k = neighbours``: a few points either side absorb small phase
  drifts). Where a week of history is not there yet only the day candidates exist, and the median
  uses what exists (candidates closer than one step back are dropped); where not even a day is
  there (the first day, short KPIs) or every candidate was interpolated, the baseline is the median
  of the observed values among the ``fallback_window`` before ``t``.
- residual ``r_t = x_t - b_t``;
- scale ``s_t = max(1.4826 * median(|r|) over the scale_window observed points before t, min_scale)``:
  a robust standard deviation of the recent misses, so a noisy KPI needs a larger miss; ``t`` itself
  is left out, or a long anomaly would dilute itself;
- score ``|r_t| / s_t``; NaN (filled by :meth:`models.base.Detector.score`) until ``min_history``
  residuals exist.

Interpolated points (``missing``) are never used as a baseline candidate nor in the scale: they are
guesses, not history. Every term reads rows before ``t`` (and ``x_t``): the rule is causal as it stands
and ``causal=True`` takes the same path. Nothing is learnt; ``fit`` only checks its input.
"""
from __future__ import annotations


import numpy as np
import pandas as pd

from models.base import FixedRule
from models.configs import SeasonalResidualConfig
from models.frame import MISSING, TIMESTAMP, VALUE

MAD_TO_STD = 1.4826


def grid_step(timestamps: pd.Series) -> pd.Timedelta | None:
    """The KPI's sampling interval: the median spacing (robust to the odd longer gap); None for one row."""
    if len(timestamps) < 2:
        return None
    ts = timestamps.to_numpy(dtype="datetime64[ns]") if not isinstance(timestamps.dtype, pd.DatetimeTZDtype) \
        else timestamps.dt.tz_convert(None).to_numpy(dtype="datetime64[ns]")
    return pd.Timedelta(int(np.median(np.diff(ts).astype(np.int64))), "ns")


def period_steps(period: str, step: pd.Timedelta | None) -> int | None:
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


def seasonal_scores(values: np.ndarray, missing: np.ndarray, step: pd.Timedelta | None,
                    cfg: SeasonalResidualConfig) -> np.ndarray:
    """``|x_t - b_t| / s_t`` for one KPI (NaN before ``min_history`` residuals)."""
    observed = np.where(missing, np.nan, values)
    periods = [p for p in (period_steps(cfg.day, step), period_steps(cfg.week, step)) if p is not None]
    residual = values - seasonal_baseline(observed, periods, cfg.neighbours, cfg.fallback_window)
    past = pd.Series(np.where(missing, np.nan, np.abs(residual)))  # rolling medians skip NaN
    scale = MAD_TO_STD * past.rolling(cfg.scale_window, min_periods=cfg.min_history).median().shift(1).to_numpy()
    return np.abs(residual) / np.maximum(scale, cfg.min_scale)  # a NaN scale stays NaN (np.maximum)


class SeasonalResidual(FixedRule):
    name = "seasonal_residual"
    config_class = SeasonalResidualConfig
    config: SeasonalResidualConfig

    def _score_kpi(self, kpi: pd.DataFrame) -> np.ndarray:
        return seasonal_scores(kpi[VALUE].to_numpy(dtype=np.float64), kpi[MISSING].to_numpy(dtype=bool),
                               grid_step(kpi[TIMESTAMP]), self.config)
