"""Robust z-score baseline: how far a point is from the recent median, in units of recent MAD.

For a series ``x`` and a trailing window of ``w`` points (the point itself excluded, so a spike
does not dilute its own reference):

- ``median_t = median(x[t-w .. t-1])``
- ``dev_i = |x_i - median_i|`` (each point's deviation from its own trailing median)
- ``mad_t = median(dev[t-w .. t-1])`` -- the rolling median of deviations; an approximation of the
  exact MAD (deviations from ``median_t`` itself) that a rolling operation can compute
- ``z_t = (x_t - median_t) / max(1.4826 * mad_t, min_scale)``

The score is ``max(|z|)`` over the value and its first difference: the value catches level
shifts and slow excursions, the difference catches spikes riding on a seasonal slope. Everything is
pandas rolling medians, one call per KPI. The first ``2 w`` points of a KPI have no full reference
(filled by :meth:`models.base.Detector.score`). Nothing is learnt: ``fit`` only checks its input.

The statistics are trailing (pandas' default ``center=False``, then shifted by one), so the score at
``t`` reads rows ``t - 2 w - 1 .. t`` only: the rule is causal as it stands, and ``causal=True`` takes the
same path.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from models.base import FixedRule
from models.configs.robust_zscore import RobustZScoreConfig
from models.frame import MAD_TO_STD, VALUE


def trailing_median(series: pd.Series, window: int) -> pd.Series:
    """Median of the ``window`` points before ``t`` (NaN until there are that many): the level's reference."""
    return series.rolling(window, min_periods=window).median().shift(1)


def robust_z(series: pd.Series, window: int, min_scale: float) -> np.ndarray:
    """Trailing robust z-score of a series (NaN until ``2 * window`` points of history exist)."""
    median = trailing_median(series, window)
    mad = (series - median).abs().rolling(window, min_periods=window).median().shift(1)
    return ((series - median) / np.maximum(MAD_TO_STD * mad, min_scale)).to_numpy()


class RobustZScore(FixedRule):
    name = "robust_zscore"
    config_class = RobustZScoreConfig
    config: RobustZScoreConfig

    def _score_kpi(self, kpi: pd.DataFrame) -> np.ndarray:
        series = pd.Series(kpi[VALUE].to_numpy(dtype=np.float64))
        level = robust_z(series, self.config.window, self.config.min_scale)
        change = robust_z(series.diff(), self.config.window, self.config.min_scale)
        return np.fmax(np.abs(level), np.abs(change))  # fmax: NaN only where both are NaN

    def _expected_kpi(self, kpi: pd.DataFrame) -> np.ndarray:
        # The level's reference; the difference channel compares against no value a person would expect.
        return trailing_median(pd.Series(kpi[VALUE].to_numpy(dtype=np.float64)), self.config.window).to_numpy()
