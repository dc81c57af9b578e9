"""Every scored row says what the model expected there: ``expected``, ``expected_low``, ``expected_high``
in the KPI's units (pipeline/serving/expected.py), from the detector's baseline when it has one, else
from the KPI's own earlier values at the same time of day."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import registry
from models.frame import CLIPPED, KPI_ID, MISSING, RAW_VALUE, TIMESTAMP, VALUE
from pipeline.batch import score
from pipeline.serving import expected as E
from pipeline.serving.bundle import (EXPECTED, EXPECTED_HIGH, EXPECTED_LOW, IS_ANOMALY, OUTPUT_COLUMNS, Bundle,
                                     BundleModel, predict_with)
from tests.bundles import make_bundle

LEVEL, AMPLITUDE, NOISE = 10.0, 2.0, 0.05  # kpi_0 of tests/detector_data.py: level 10, amplitude 2, phase 0


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("expected")
    return {name: make_bundle(root, name)[0] for name in ("seasonal_residual", "robust_zscore", "diff_z")}


def cycle_rows(days: int = 4) -> tuple[pd.DataFrame, np.ndarray]:
    """(rows of kpi_0: a constant plus its daily cycle plus a little noise, the true cycle)."""
    ts = pd.date_range("2026-01-10", periods=days * 288, freq="5min", tz="UTC")
    t = np.arange(len(ts))
    truth = LEVEL + AMPLITUDE * np.sin(2 * np.pi * t / 288)
    value = truth + NOISE * np.random.default_rng(0).standard_normal(len(ts))
    return pd.DataFrame({KPI_ID: "kpi_0", TIMESTAMP: ts, VALUE: value}), truth


@pytest.mark.parametrize("name", ["seasonal_residual", "diff_z"])
def test_expected_follows_the_true_cycle_in_the_kpis_units(bundles, name):
    """seasonal_residual's own baseline, and diff_z's (no baseline) band from the KPI's history: on the
    last day both follow the cycle within a few noise widths, and the band holds most points."""
    rows, truth = cycle_rows()
    out = Bundle.load(bundles[name]).predict(rows)
    assert list(out.columns) == list(OUTPUT_COLUMNS)
    last = slice(3 * 288, None)
    expected, low, high = (out[c].to_numpy()[last] for c in (EXPECTED, EXPECTED_LOW, EXPECTED_HIGH))
    assert np.isfinite(expected).all() and np.isfinite(low).all() and np.isfinite(high).all()
    assert np.abs(expected - truth[last]).max() < 0.3 and np.abs(expected - truth[last]).mean() < 0.1
    assert (low <= expected).all() and (expected <= high).all()
    assert (high - low).mean() < 1.0  # a band a few noise widths wide, not the whole cycle (4.0)
    value = out[VALUE].to_numpy()[last]
    assert ((value >= low) & (value <= high)).mean() > 0.8


def test_the_first_point_has_no_expected_value(bundles):
    rows, _ = cycle_rows(days=1)
    out = Bundle.load(bundles["diff_z"]).predict(rows)
    assert out[[EXPECTED, EXPECTED_LOW, EXPECTED_HIGH]].iloc[0].isna().all()
    assert out[EXPECTED].iloc[100:].notna().all()  # the trailing band before a day of history


def test_a_flagged_incident_leaves_the_band_of_later_points_alone(bundles):
    """An incident must not widen the band that judges the rest of it: 30 points far off the cycle (a
    tenth of a day's residuals, enough to move their 95% quantile) are flagged and left out."""
    rows, _ = cycle_rows()
    shifted = rows.copy()
    at = 3 * 288 + 10
    shifted.loc[at:at + 29, VALUE] += 50 * AMPLITUDE
    bundle = Bundle.load(bundles["seasonal_residual"])
    before, after = bundle.predict(rows), bundle.predict(shifted)
    assert after[IS_ANOMALY].iloc[at:at + 30].all()
    later = slice(at + 1, None)
    width = {k: (f[EXPECTED_HIGH] - f[EXPECTED_LOW]).to_numpy()[later] for k, f in (("before", before), ("after", after))}
    np.testing.assert_allclose(width["after"], width["before"], atol=0.05)
    np.testing.assert_allclose(after[EXPECTED].to_numpy()[later], before[EXPECTED].to_numpy()[later])


def test_an_empty_frame_and_the_dataset_have_the_columns(bundles):
    model = BundleModel(Bundle.load(bundles["diff_z"]))
    empty = predict_with(model, cycle_rows()[0].iloc[:0])
    assert list(empty.columns) == list(OUTPUT_COLUMNS) == score.SCORES_SCHEMA.names
    assert all(empty[c].dtype == np.float64 for c in (EXPECTED, EXPECTED_LOW, EXPECTED_HIGH))


# -- the pure pieces --------------------------------------------------------------------------------
def test_row_nanquantiles_is_numpys_nanquantile():
    a = np.array([[3.0, np.nan, 1.0, 2.0], [np.nan] * 4, [5.0, np.nan, np.nan, np.nan], [4.0, 1.0, 3.0, 2.0]])
    lo, mid, hi = E.row_nanquantiles(a, (0.05, 0.5, 0.95))
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        want = np.nanquantile(a, [0.05, 0.5, 0.95], axis=1)
    np.testing.assert_allclose(np.vstack([lo, mid, hi]), want)


def test_same_time_lags_stay_inside_the_frame():
    assert E.same_time_lags(10, 4) == [2, 3, 4, 5, 6, 7, 8, 9]  # days 1 and 2 (+-2), capped at n - 1
    assert E.same_time_lags(3, 288) == []


def test_history_band_reads_the_same_time_of_earlier_days_only():
    day = 12
    usable = np.tile(np.arange(day, dtype=float), 4)  # a ramp every day: the same time holds the same value
    median, low, high = E.history_band(usable, day)
    assert np.isnan(median[:day]).all()  # fewer than MIN_POINTS earlier values before a day of history
    inner = np.r_[[t for t in range(day, 4 * day) if 2 <= t % day < day - 2]]  # +-2 neighbours stay in the day
    np.testing.assert_array_equal(median[inner], usable[inner])
    assert (low[inner] < median[inner]).all() and (median[inner] < high[inner]).all()


def test_residual_band_is_the_baseline_plus_earlier_residual_quantiles():
    n, day = 40, 20
    baseline = np.full(n, 5.0)
    values = baseline + np.tile([-1.0, 1.0], n // 2)
    expected, low, high = E.residual_band(values, np.ones(n, dtype=bool), baseline, day)
    np.testing.assert_array_equal(expected, baseline)
    assert np.isnan(low[E.MIN_POINTS - 1]) and np.isfinite(low[E.MIN_POINTS])  # MIN_POINTS earlier residuals
    np.testing.assert_allclose(low[E.MIN_POINTS:], 4.0)
    np.testing.assert_allclose(high[E.MIN_POINTS:], 6.0)


def test_a_detector_without_a_baseline_says_so():
    frame = pd.DataFrame({KPI_ID: "a", TIMESTAMP: pd.date_range("2026-01-01", periods=30, freq="5min", tz="UTC"),
                          VALUE: np.zeros(30), RAW_VALUE: np.zeros(30), MISSING: False, CLIPPED: False})
    assert registry.create("diff_z").fit(frame).expected(frame) is None
    baseline = registry.create("seasonal_residual").fit(frame).expected(frame)
    assert baseline.shape == (30,) and np.isnan(baseline[0]) and (baseline[1:] == 0).all()
