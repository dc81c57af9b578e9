"""What the model expected at each scored point: ``expected``, ``expected_low``, ``expected_high``.

Computed per KPI on its regular grid in normalised units (the bundle denormalises them with the
statistics its rows were normalised with, so they are in the KPI's own units), from rows before ``t``
only, and NaN where there is too little history to say:

- **a detector baseline** (:meth:`models.base.Detector.expected`: seasonal_residual's seasonal median,
  robust_zscore's trailing median): ``expected`` is the baseline ``b_t``; the band is ``b_t`` plus the
  :data:`BAND_QUANTILES` of the residuals ``x - b`` of the KPI's earlier *usable* points (observed, not
  flagged, not clipped) over the day before ``t`` (:data:`MIN_POINTS` of them at least). The band is
  widened to contain ``b_t`` when the residuals are all on one side.
- **otherwise the KPI's own past at the same time of day**: the usable values at ``t - i day + j`` for
  every whole day ``i`` the frame holds (the scoring context: ``score.context`` before the scored day;
  at most :data:`MAX_DAYS`) and ``|j| <= NEIGHBOURS`` grid steps (a few points either side absorb
  small phase drifts and give a quantile more than one value per day); ``expected`` is their median,
  the band their :data:`BAND_QUANTILES`. Where fewer than :data:`MIN_SAME_TIME` such values exist
  (before a day of history), the usable values among the :data:`TRAILING_POINTS` before ``t`` instead
  (:data:`MIN_POINTS` of them at least).

A flagged point is left out of every later band: an incident must not widen the band that judges the
rest of it. Everything is vectorised per KPI (shifted copies and one sort per KPI, pandas' rolling
quantile); the day is the KPI's grid step converted with :func:`models.seasonal_residual.period_steps`.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from models.frame import CLIPPED, MISSING, TIMESTAMP, VALUE, kpi_slices
from models.seasonal_residual import grid_step, period_steps, shifted

BAND_QUANTILES = (0.05, 0.95)  # expected_low, expected_high: 9 in 10 usual points fall between them
NEIGHBOURS = 2                 # same-time candidates t - i day - k .. t - i day + k
MAX_DAYS = 28                  # same-time candidates go back at most this many days (bounds the work per point)
TRAILING_POINTS = 24           # before a day of history: the band of this many points before t (2 h at 5 min)
MIN_POINTS = 12                # fewer usable earlier values than this: NaN, not a band drawn from two points
MIN_SAME_TIME = 3              # same-time values needed (a day back gives 2 * NEIGHBOURS + 1 of them)
DAY = "1D"


def row_nanquantiles(a: np.ndarray, qs: tuple[float, ...]) -> list[np.ndarray]:
    """Each row's quantiles ``qs`` ignoring NaN (linear interpolation, numpy's default; NaN for an
    all-NaN row), via one sort: NaN sorts last."""
    a = np.sort(a, axis=1)
    count = (~np.isnan(a)).sum(axis=1)
    out = []
    for q in qs:
        pos = q * np.maximum(count - 1, 0)
        lo, frac = np.floor(pos).astype(np.int64), pos - np.floor(pos)
        hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
        below = np.take_along_axis(a, lo[:, None], 1)[:, 0]
        above = np.take_along_axis(a, hi[:, None], 1)[:, 0]
        out.append(np.where(count > 0, below + frac * (above - below), np.nan))
    return out


def same_time_lags(n: int, day: int) -> list[int]:
    """Lags of the same-time candidates in a KPI of ``n`` grid points with ``day`` steps a day."""
    return sorted({i * day + j for i in range(1, MAX_DAYS + 1) if i * day - NEIGHBOURS < n
                   for j in range(-NEIGHBOURS, NEIGHBOURS + 1) if 1 <= i * day + j < n})


def history_band(usable: np.ndarray, day: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(median, low, high) of one KPI from its own earlier values; ``usable``: the values, NaN where a
    point may not be used (interpolated, flagged, clipped)."""
    n = len(usable)
    nothing = np.full(n, np.nan)
    lags = same_time_lags(n, day)
    trailing = np.stack([shifted(usable, lag) for lag in range(1, TRAILING_POINTS + 1)], axis=1)
    trailing_count = (~np.isnan(trailing)).sum(axis=1)
    if lags:
        same = np.stack([shifted(usable, lag) for lag in lags], axis=1)
        use_same = (~np.isnan(same)).sum(axis=1) >= MIN_SAME_TIME
        same_q = row_nanquantiles(same, (0.5, *BAND_QUANTILES))
    else:
        use_same, same_q = np.zeros(n, dtype=bool), [nothing] * 3
    trailing_q = row_nanquantiles(trailing, (0.5, *BAND_QUANTILES))
    enough = trailing_count >= MIN_POINTS
    return tuple(np.where(use_same, s, np.where(enough, t, np.nan)) for s, t in zip(same_q, trailing_q))


def residual_band(values: np.ndarray, usable: np.ndarray, baseline: np.ndarray, day: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(baseline, low, high) of one KPI: the baseline plus the quantiles of its earlier usable residuals."""
    residual = pd.Series(np.where(usable, values - baseline, np.nan))
    window = residual.rolling(max(day, MIN_POINTS), min_periods=MIN_POINTS)
    low, high = (window.quantile(q).shift(1).to_numpy() + baseline for q in BAND_QUANTILES)
    return baseline, np.minimum(low, baseline), np.maximum(high, baseline)  # minimum: a NaN band stays NaN


def expected_band(prepared: pd.DataFrame, flagged: np.ndarray, baseline: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(expected, low, high) in normalised units for every row of a prepared frame (KPI slices in time
    order): from the detector's ``baseline`` when it has one, else from the KPI's own history.
    ``flagged``: the rows' alarms, left out of every later band."""
    values = prepared[VALUE].to_numpy(dtype=np.float64)
    usable_mask = ~(prepared[MISSING].to_numpy(dtype=bool) | prepared[CLIPPED].to_numpy(dtype=bool)
                    | np.asarray(flagged, dtype=bool))
    if baseline is not None:
        usable_mask &= np.isfinite(baseline)
    out = [np.full(len(prepared), np.nan) for _ in range(3)]
    for _, sl in kpi_slices(prepared):
        day = period_steps(DAY, grid_step(prepared[TIMESTAMP].iloc[sl])) or 1
        if baseline is None:
            parts = history_band(np.where(usable_mask[sl], values[sl], np.nan), day)
        else:
            parts = residual_band(values[sl], usable_mask[sl], baseline[sl], day)
        for target, part in zip(out, parts):
            target[sl] = part
    return out[0], out[1], out[2]
