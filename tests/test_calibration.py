"""Score calibration (models/calibration.py): exact small cases, causality, serialisation, and the
served bundle giving the evaluate stage's calibrated scores for the same input."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from models.calibration import MAX_SURPRISE, CalibrationError, EcdfCalibration, LikelihoodCalibration, make_calibration
from pipeline.data import prep
from pipeline.eval import protocol

SD1 = np.tile([-1.0, 1.0], 500)  # mean 0, population std exactly 1


def q_surprise(z: float) -> float:
    return -math.log10(0.5 * math.erfc(z / math.sqrt(2)))


def test_likelihood_is_the_gaussian_tail_of_the_short_mean():
    cal = LikelihoodCalibration(short_window=1, long_window=10_000, suppress_window=0).fit(SD1, np.zeros(1000))
    assert cal.pooled == {"mean": 0.0, "std": 1.0, "n": 1000}
    # A frame of one point has no history of its own: the fitted Gaussian alone is the reference.
    for z in (0.0, 1.0, 3.0, 6.0):
        assert cal.transform([z], ["k"])[0] == pytest.approx(q_surprise(z), rel=1e-9)
    assert cal.transform([-5.0], ["k"])[0] == pytest.approx(q_surprise(-5.0))  # low scores are not surprising
    assert cal.transform([1e6], ["k"])[0] == MAX_SURPRISE  # no overflow, no inf


def test_likelihood_pools_the_fit_with_the_frames_own_history():
    cal = LikelihoodCalibration(short_window=1, long_window=4, suppress_window=0, min_std_ratio=0.0,
                                min_points=2).fit([-1.0, 1.0], ["k", "k"])  # mean 0, std 1, worth 2 points
    x = np.array([2.0, 2.0, 2.0, 2.0, 2.0, 5.0])
    got = cal.transform(x, ["k"] * 6)
    # Point 3: 3 earlier points of the frame (all 2.0) + the fit worth min(2, 4 - 3) = 1 point.
    mean = (1 * 0.0 + 3 * 2.0) / 4
    var = (1 * (1.0 + mean ** 2) + 3 * (0.0 + (2.0 - mean) ** 2)) / 4
    assert got[3] == pytest.approx(q_surprise((2.0 - mean) / math.sqrt(var)))
    # Point 5: the long window (4) is all frame (2.0, 2.0, 2.0, 2.0): the std floor is the fit's std x 0.
    assert got[5] == MAX_SURPRISE


def test_red_zone_filter_keeps_one_alarm_per_event():
    cal = LikelihoodCalibration(short_window=1, long_window=10_000, suppress_window=1).fit(SD1, np.zeros(1000))
    out = cal.transform([0.0, 8.0, 8.0, 8.0, 0.0, 8.0], ["k"] * 6)
    assert out[1] >= 5 and out[2] == 3.0 and out[3] == 3.0  # the run's first red point stays red
    assert out[5] >= 5  # a new event after a quiet point is red again


@pytest.mark.parametrize("cfg", [{"method": "likelihood"}, {"method": "ecdf"}])
def test_causal_a_prefix_gets_the_same_scores(cfg):
    rng = np.random.default_rng(0)
    fit = rng.gamma(2.0, size=600)
    cal = make_calibration(cfg).fit(fit, np.repeat(["a", "b"], 300))
    x = rng.gamma(2.0, size=400) * np.r_[np.ones(200), 4 * np.ones(200)]
    ids = np.repeat(["a", "b"], 200)
    whole = cal.transform(x, ids)
    assert np.isfinite(whole).all() and (whole >= 0).all()
    np.testing.assert_array_equal(cal.transform(x[:150], ids[:150]), whole[:150])
    np.testing.assert_array_equal(cal.transform(x[200:330], ids[200:330]), whole[200:330])


def test_ecdf_tail_probability():
    cal = EcdfCalibration(knots=1001, tail_level=0.99).fit(np.arange(1000.0), np.zeros(1000))
    out = cal.transform([-5.0, 0.0, 500.0, 989.01, 1200.0, 1e9], ["k"] * 6)
    assert out[0] == 0.0 and out[1] == 0.0
    assert out[2] == pytest.approx(-math.log10(0.5), abs=1e-3)
    assert out[3] == pytest.approx(2.0, abs=1e-3)                   # the 0.99 quantile: p = 0.01
    excess = np.arange(1000.0)[np.arange(1000.0) > 989.01].mean() - 989.01  # the tail's mean excess
    assert out[4] == pytest.approx(2 + (1200 - 989.01) / excess / math.log(10), rel=1e-6)
    assert out[5] == MAX_SURPRISE
    assert np.all(np.diff(out) >= 0)


def test_per_kpi_states_and_the_pooled_fallback():
    ids = np.repeat(["big", "small", "short"], [100, 100, 10])
    scores = np.r_[np.full(50, 100.0), np.full(50, 120.0), np.full(50, 1.0), np.full(50, 1.2), np.ones(10)]
    cal = make_calibration({"method": "likelihood", "min_points": 50}).fit(scores, ids)
    assert set(cal.per_kpi) == {"big", "small"}  # "short" has 10 < 50 points: pooled
    assert cal.state_for("short") is cal.pooled and cal.state_for("never seen") is cal.pooled
    # The same relative jump is equally surprising on both KPIs: one scale for all.
    big, small = cal.transform([140.0], ["big"])[0], cal.transform([1.4], ["small"])[0]
    assert big == pytest.approx(small, rel=1e-6) and big > 1


@pytest.mark.parametrize("cfg", [{"method": "likelihood", "short_window": 3}, {"method": "ecdf", "knots": 16},
                                 {"method": "none"}])
def test_round_trip_through_json(cfg):
    rng = np.random.default_rng(1)
    ids = np.repeat(["a", "b"], 200)
    cal = make_calibration(cfg).fit(rng.normal(size=400), ids)
    again = type(cal).from_dict(json.loads(json.dumps(cal.to_dict())))
    x = rng.normal(size=400) * 3
    np.testing.assert_array_equal(again.transform(x, ids), cal.transform(x, ids))
    if cfg["method"] == "none":
        np.testing.assert_array_equal(cal.transform(x, ids), x)


def test_configuration_errors_name_the_key():
    with pytest.raises(CalibrationError, match="unknown calibration method 'gauss'"):
        make_calibration({"method": "gauss"})
    with pytest.raises(CalibrationError, match=r"unknown calibration key\(s\) \['shortwindow'\]"):
        make_calibration({"method": "likelihood", "shortwindow": 3})
    with pytest.raises(CalibrationError, match="yellow <= red"):
        make_calibration({"method": "likelihood", "red": 2.0, "yellow": 3.0})
    with pytest.raises(CalibrationError, match="at least 2"):
        make_calibration({"method": "ecdf"}).fit([np.nan], ["a"])


def test_params_reject_a_bad_calibration(tmp_path):
    from pipeline.params import ParamsError, parse_params
    from tests.conftest import small_params_dict

    raw = small_params_dict(evaluate={"calibration": {"method": "likelihood", "long_windw": 5}})
    with pytest.raises(ParamsError, match="evaluate.calibration.*long_windw"):
        parse_params(raw)


def test_served_bundle_gives_the_evaluate_stages_calibrated_scores(small_params, tmp_path):
    """Same input rows: the bundle (what kpiguard score and the DAG serve) and evaluate agree exactly."""
    from pipeline.serving.bundle import Bundle, observed_rows, write_bundle
    from pipeline.stages import evaluate, ingest, train, validate, windows

    p = small_params.paths
    ingest.run(small_params, p.raw)
    validate.run(small_params, p.raw, p.validated, p.quarantine, p.validation_report)
    windows.run(small_params, p.validated, p.windows)
    train.run(small_params, "robust_zscore", progress=False)
    report = evaluate.run(small_params, ["robust_zscore"])
    saved = json.loads((tmp_path / p.evaluation / "calibration" / "robust_zscore.json").read_text())
    assert saved["method"] == small_params.evaluate.calibration["method"] and saved["per_kpi"]

    full = prep.load_splits(p.windows)
    raw = evaluate.score_detector("robust_zscore", tmp_path / p.artifacts, full)
    observed = ~full["missing"].to_numpy()
    for config in ({"method": "ecdf"}, {"method": "likelihood"}):
        calibrated, fitted = protocol.calibrate(full, raw, config)
        if config["method"] == saved["method"]:
            assert fitted == saved  # the evaluate stage wrote exactly this calibration
        threshold = report["detectors"]["robust_zscore"]["threshold"]
        write_bundle(tmp_path / config["method"], tmp_path / p.artifacts / "robust_zscore", threshold, fitted)
        served = Bundle.load(tmp_path / config["method"]).predict(observed_rows(full))
        np.testing.assert_array_equal(served["score"].to_numpy(), calibrated[observed])
        np.testing.assert_array_equal(served["raw_score"].to_numpy(), raw[observed])
        expected = calibrated[observed] >= np.array([threshold["per_kpi"].get(k, threshold["global_value"])
                                                     for k in full.loc[observed, "kpi_id"].astype(str)])
        np.testing.assert_array_equal(served["is_anomaly"].to_numpy(), expected)
        assert pd.Series(served["kpi_id"]).nunique() == 2

    # kpiguard score's progress bar scores groups of whole KPIs: the same rows, the same scores.
    from pipeline.batch.score import score_rows
    from pipeline.serving.bundle import BundleModel

    model, rows = BundleModel(Bundle.load(tmp_path / "ecdf")), observed_rows(full)
    start, end = rows["timestamp"].min(), rows["timestamp"].max() + pd.Timedelta("1s")
    pd.testing.assert_frame_equal(score_rows(model, rows, start, end, progress=True),
                                  score_rows(model, rows, start, end))
