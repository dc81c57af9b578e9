"""Exact tests of models/seasonal_residual.py: baseline, scale and periods by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import registry
from models.frame import KPI_ID, MISSING, TIMESTAMP, VALUE


def test_seasonal_residual_baseline_and_scale_hand_case():
    from models.seasonal_residual import row_nanmedian, seasonal_baseline
    np.testing.assert_array_equal(row_nanmedian(np.array([[3.0, np.nan, 1.0], [np.nan] * 3, [4.0, 2.0, 9.0]])),
                                  [2.0, np.nan, 4.0])
    # 1-minute grid, "day" = 4 minutes, "week" = 8 minutes: a period-4 pattern with one spike at t = 13
    pattern = np.tile([0.0, 1.0, 2.0, 1.0], 5)
    values = pattern.copy()
    values[13] += 10.0
    obs = values.copy()
    base = seasonal_baseline(obs, [4, 8], neighbours=0, fallback_window=2)
    # t < 4: trailing median of up to 2 values (t = 0 has none); t >= 4: median of x[t-4] (and x[t-8])
    np.testing.assert_array_equal(base[:4], [np.nan, 0.0, 0.5, 1.5])
    np.testing.assert_array_equal(base[4:13], pattern[4:13])
    assert base[13] == 1.0 and base[17] == 6.0  # the spike is a candidate a "day" later (median of 11, 1)
    frame = pd.DataFrame({KPI_ID: "a", TIMESTAMP: pd.date_range("2026-01-01", periods=20, freq="1min", tz="UTC"),
                          VALUE: values, MISSING: False})
    detector = registry.create("seasonal_residual", {"day": "4min", "week": "8min", "days": 1, "neighbours": 0,
                                                      "fallback_window": 2, "min_history": 2,
                                                      "scale_window": 4, "min_scale": 0.5,
                                                      "mean_scale": 0.0}).fit(frame)
    raw = detector._score_core(frame)
    # residuals are 0 from t = 4 on (before the spike): the scale is the floor, the spike scores 10 / 0.5
    assert raw[13] == pytest.approx(20.0) and (raw[8:13] == 0.0).all()
    assert np.isnan(raw[:3]).all()  # t = 0 has no baseline; t = 1, 2 have < min_history past residuals
    # a 5-minute grid with the same periods in time gives the same baseline lags in steps of 5 minutes
    frame5 = frame.assign(**{TIMESTAMP: pd.date_range("2026-01-01", periods=20, freq="5min", tz="UTC")})
    d5 = registry.create("seasonal_residual", {**detector.config.to_dict(), "day": "20min", "week": "40min"})
    np.testing.assert_array_equal(d5.fit(frame5)._score_core(frame5), raw)


def test_seasonal_residual_ignores_interpolated_candidates_and_short_kpis_get_scores():
    values = np.tile([0.0, 1.0, 2.0, 1.0], 5)
    frame = pd.DataFrame({KPI_ID: "a", TIMESTAMP: pd.date_range("2026-01-01", periods=20, freq="1min", tz="UTC"),
                          VALUE: values, MISSING: False})
    frame.loc[9, MISSING] = True
    frame.loc[9, VALUE] = 50.0  # a bad interpolation must not become a baseline candidate a period later
    cfg = {"day": "4min", "week": "8min", "neighbours": 0, "fallback_window": 2, "min_history": 2}
    raw = registry.create("seasonal_residual", cfg).fit(frame)._score_core(frame)
    assert raw[13] == 0.0  # x[13] = 1 against the week candidate x[5] = 1 (x[9] left out)
    assert np.isnan(raw[9]) and np.isfinite(raw[10:]).all()  # an interpolated point is not scored
    # no day of history at all (a 3-point KPI): the fallback baseline still scores from min_history on
    short = frame.iloc[:6].assign(**{TIMESTAMP: pd.date_range("2026-01-01", periods=6, freq="1h", tz="UTC")})
    assert np.isfinite(registry.create("seasonal_residual", cfg).fit(short)._score_core(short)[3:]).all()


def test_seasonal_residual_scale_and_periods_hand_case():
    from models.configs.seasonal_residual import SeasonalResidualConfig
    from models.seasonal_residual import seasonal_periods, trailing_scale
    x = np.array([0.0, 0.0, 0.0, -9.0, 5.0, 1.0])
    missing = np.array([False, False, False, False, True, False])
    # the 4 points before t, interpolated ones left out: at t = 5 they are 0, 0, -9 (x[4] skipped)
    np.testing.assert_allclose(trailing_scale(x, missing, 4, 1, 0.0), [np.nan, 0, 0, 0, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(trailing_scale(x, missing, 4, 1, 1.0), [np.nan, 0, 0, 0, 2.25, 3.0], rtol=1e-12)
    np.testing.assert_allclose(trailing_scale(np.array([1.0, -2.0, 3.0, -4.0, 0.0]), np.zeros(5, bool), 3, 2, 1.0),
                               [np.nan, np.nan, 1.4826 * 1.5, 1.4826 * 2, 1.4826 * 3], rtol=1e-12)
    step = pd.Timedelta("5min")
    assert seasonal_periods(SeasonalResidualConfig(), step) == [288, 576, 864, 2016]
    assert seasonal_periods(SeasonalResidualConfig(days=7), step) == [288 * i for i in range(1, 8)]  # 7 days = the week
    assert seasonal_periods(SeasonalResidualConfig(days=1), None) == []
    # A two-point shift of +10 at t = 13, 14 on the period-4 pattern; every earlier residual is 0
    values = np.tile([0.0, 1.0, 2.0, 1.0], 5)
    values[13:15] += 10.0
    frame = pd.DataFrame({KPI_ID: "a", TIMESTAMP: pd.date_range("2026-01-01", periods=20, freq="1min", tz="UTC"),
                          VALUE: values, MISSING: False})
    cfg = {"day": "4min", "week": "8min", "days": 1, "neighbours": 0, "fallback_window": 2, "min_history": 2,
           "scale_window": 4, "min_scale": 0.5, "mean_scale": 0.0}
    raw = registry.create("seasonal_residual", cfg).fit(frame)._score_core(frame)
    assert (raw[8:13] == 0.0).all() and raw[13] == pytest.approx(20.0)
    assert raw[14] == pytest.approx(20.0)  # the median |r| of t = 10..13 is still 0: the floor
    # mean_scale 1: the scale at t = 14 is the mean |r| of t = 10..13, 10 / 4
    raw = registry.create("seasonal_residual", {**cfg, "mean_scale": 1.0}).fit(frame)._score_core(frame)
    assert raw[13] == pytest.approx(20.0) and raw[14] == pytest.approx(10 / 2.5)
    # days 2: the candidates 4 and 8 steps back (8 = the week: one period), the same scores here
    np.testing.assert_array_equal(registry.create("seasonal_residual", {**cfg, "days": 2}).fit(frame)._score_core(frame),
                                  registry.create("seasonal_residual", cfg).fit(frame)._score_core(frame))
