"""Windowed Gaussian: NAB's reference detector ("windowedGaussian"), vectorised.

NAB's detector keeps the last (up to) 6400 values of a series, refreshes their mean and standard
deviation every 100 steps (std floored at 1e-6), and scores each new value ``x`` by ``1 - Q(|z|)``
with ``z = (x - mean) / std`` (two-sided: a value below the mean is mirrored above it).

Here, per KPI, with the ``window`` normalised values *before* ``t`` (the point itself excluded):

- ``mean_t``, ``std_t``: mean and population standard deviation (``ddof=0``, as NAB's
  ``numpy.std``) of ``x[t-window .. t-1]``, refreshed at every step rather than every 100;
- ``score_t = |x_t - mean_t| / max(std_t, min_std)``.

``|z|`` is a monotone transform of NAB's ``1 - Q(|z|)``, so a single corpus-wide threshold ranks the
points the same way (NAB's score saturates to exactly 1.0 beyond |z| ~ 8.3; ``|z|`` keeps ranking
them). A KPI's first two points have fewer than two values of history (NaN, filled by
:meth:`models.base.Detector.score`). Nothing is learnt: ``fit`` only checks its input.

The statistics are pandas trailing rolling windows shifted by one, so the score at ``t`` reads rows
``t - window .. t`` of its KPI only: the rule is causal as it stands, and ``causal=True`` takes the
same path.
"""
from __future__ import annotations


import numpy as np
import pandas as pd

from models.base import FixedRule
from models.configs.windowed_gaussian import WindowedGaussianConfig
from models.frame import VALUE

MIN_PERIODS = 2  # values of history before a point is scored


def windowed_z(values: np.ndarray, window: int, min_std: float) -> np.ndarray:
    """``|x_t - mean| / max(std, min_std)`` over the ``window`` values before ``t`` (NaN until
    :data:`MIN_PERIODS` values of history exist)."""
    series = pd.Series(values, dtype=np.float64)
    rolling = series.rolling(window, min_periods=MIN_PERIODS)
    mean = rolling.mean().shift(1).to_numpy()
    std = rolling.std(ddof=0).shift(1).to_numpy()
    return np.abs(values - mean) / np.maximum(std, min_std)  # NaN std stays NaN


class WindowedGaussian(FixedRule):
    name = "windowed_gaussian"
    config_class = WindowedGaussianConfig
    config: WindowedGaussianConfig

    def _score_kpi(self, kpi: pd.DataFrame) -> np.ndarray:
        return windowed_z(kpi[VALUE].to_numpy(dtype=np.float64), self.config.window, self.config.min_std)
