"""pipeline.eval.thresholds: fitting, scopes, serialisation and errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from pipeline.eval.thresholds import (BestF1Threshold, PotThreshold, QuantileThreshold, Threshold, ThresholdError,
                                      make_threshold, pot_threshold)


def test_quantile_exact_hand_case():
    # numpy linear quantile of 1..10 at 0.9: position 0.9 * 9 = 8.1 -> 9 + 0.1 * (10 - 9) = 9.1
    thr = make_threshold({"method": "quantile", "quantile": 0.9}).fit(np.arange(1.0, 11.0))
    assert thr.value_for() == pytest.approx(9.1)
    # alarm = score >= 9.1: only the 10
    assert thr.apply(np.arange(1.0, 11.0)).tolist() == [False] * 9 + [True]


def test_missing_mask_and_nan_are_ignored_in_fitting():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 100.0, np.nan])
    missing = np.array([0, 0, 0, 0, 1, 0], bool)
    thr = QuantileThreshold(quantile=0.5).fit(scores, missing=missing)
    # median of 1, 2, 3, 4 (the 100 is missing, the NaN dropped) = 2.5
    assert thr.value_for() == pytest.approx(2.5)
    # best_f1 ignores a missing positive: the only observed positive scores 0.7
    lab = np.array([0, 0, 1, 1])
    sc = np.array([0.1, 0.2, 0.7, 0.05])
    thr = BestF1Threshold().fit(sc, lab, missing=np.array([0, 0, 0, 1], bool))
    assert thr.value_for() == pytest.approx(0.7)


def test_best_f1_picks_the_separating_threshold():
    # normal points score <= 0.3, anomalies >= 0.8: any threshold in (0.3, 0.8] gives F1 = 1;
    # the sweep returns the lowest anomaly score, 0.8.
    sc = np.array([0.1, 0.3, 0.2, 0.8, 0.9, 0.25, 0.85, 0.1])
    lab = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    thr = make_threshold({"method": "best_f1"}).fit(sc, lab)
    assert thr.value_for() == pytest.approx(0.8)
    assert thr.fit_info["global"]["f1"] == 1.0
    assert (thr.apply(sc) == lab.astype(bool)).all()


def test_best_f1_with_an_event_metric():
    # aiops_f1 with delay 0: only the first point of an event can detect it. Event [2..4]
    # scores 0.6, 0.9, 0.9; the normal points score 0.5 and 0.7. With threshold 0.6 the event
    # is detected (3 TP) and the 0.7 point is a FP: F1 = 6 / (6 + 1) = 6/7 -- better than any
    # threshold that does not fire at index 2.
    sc = np.array([0.5, 0.7, 0.6, 0.9, 0.9, 0.5])
    lab = np.array([0, 0, 1, 1, 1, 0])
    thr = BestF1Threshold(metric="aiops_f1", delay=0).fit(sc, lab)
    assert thr.value_for() == pytest.approx(0.6)
    assert thr.fit_info["global"]["f1"] == pytest.approx(6 / 7)


def test_best_f1_without_labels_is_a_clear_error():
    thr = make_threshold({"method": "best_f1"})
    with pytest.raises(ThresholdError, match="'quantile' or 'pot'"):
        thr.fit(np.arange(10.0))
    with pytest.raises(ThresholdError, match="'quantile' or 'pot'"):
        thr.fit(np.arange(10.0), labels=np.zeros(10))
    assert issubclass(ThresholdError, ValueError)


def test_pot_on_exponential_sample_lands_near_the_analytic_quantile():
    # Exp(1): excesses over any threshold are Exp(1) = GPD(gamma=0, sigma=1); the value exceeded
    # with probability q = 1e-3 is -ln(1e-3) = 6.9078. With 100 000 points and level 0.98 the
    # fit uses 2 000 peaks; over 40 seeds the estimate had mean 6.9086 and sd 0.081, so a 0.4
    # tolerance is about 5 standard deviations.
    x = np.random.default_rng(0).exponential(1.0, 100_000)
    thr = make_threshold({"method": "pot", "pot_level": 0.98, "pot_q": 1e-3}).fit(x)
    assert thr.value_for() == pytest.approx(-np.log(1e-3), abs=0.4)
    info = thr.fit_info["global"]
    assert info["n_peaks"] == 2000 and "fallback" not in info
    assert info["gamma"] == pytest.approx(0.0, abs=0.1)
    assert info["sigma"] == pytest.approx(1.0, abs=0.1)


def test_pot_on_heavy_tailed_gpd_sample():
    # GPD(gamma=0.2, sigma=1): the 1 - 1e-3 quantile is (1e-3**-0.2 - 1)/0.2 = 14.905. Over 40
    # seeds the estimate had sd 0.31; tolerance 1.5 (about 5 sd, 10 %).
    x = stats.genpareto.rvs(0.2, size=100_000, random_state=1)
    z, info = pot_threshold(x, level=0.98, q=1e-3)
    assert z == pytest.approx(stats.genpareto.ppf(1 - 1e-3, 0.2), abs=1.5)
    assert info["gamma"] == pytest.approx(0.2, abs=0.1)


def test_pot_degenerate_cases_fall_back():
    # constant scores: just above the constant, so the constant itself never alarms
    z, info = pot_threshold(np.full(500, 3.0))
    assert z > 3.0 and info["fallback"] == "constant scores"
    # 100 points at level 0.98 leave 2 peaks < min_peaks 10: empirical 1 - q quantile
    x = np.arange(100.0)
    z, info = pot_threshold(x, level=0.98, q=1e-3)
    assert z == pytest.approx(np.quantile(x, 1 - 1e-3)) and "peaks" in info["fallback"]


def test_per_kpi_vs_global():
    rng = np.random.default_rng(0)
    quiet = rng.normal(0, 1, 1000)
    loud = rng.normal(0, 10, 1000)
    scores = np.r_[quiet, loud]
    ids = np.repeat(["quiet", "loud"], 1000)
    glob = QuantileThreshold(quantile=0.99).fit(scores, kpi_ids=ids)
    per = QuantileThreshold(quantile=0.99, scope="per_kpi").fit(scores, kpi_ids=ids)
    assert glob.per_kpi == {}
    assert per.value_for("quiet") == pytest.approx(np.quantile(quiet, 0.99))
    assert per.value_for("loud") == pytest.approx(np.quantile(loud, 0.99))
    assert per.value_for("never-seen") == pytest.approx(np.quantile(scores, 0.99))
    assert per.value_for("never-seen") == glob.value_for("quiet")
    # per-KPI: each KPI alarms on about 1 % of its points; global: the quiet KPI almost never
    a_per, a_glob = per.apply(scores, ids), glob.apply(scores, ids)
    assert a_per[:1000].sum() == 10 and a_per[1000:].sum() == 10
    assert a_glob[:1000].sum() < 3


def test_per_kpi_falls_back_for_small_kpis():
    scores = np.r_[np.arange(200.0), np.arange(5.0)]
    ids = np.r_[["big"] * 200, ["tiny"] * 5]
    thr = QuantileThreshold(quantile=0.5, scope="per_kpi", min_points=100).fit(scores, kpi_ids=ids)
    assert set(thr.per_kpi) == {"big"}
    assert thr.value_for("tiny") == thr.global_value == pytest.approx(np.quantile(scores, 0.5))
    with pytest.raises(ThresholdError, match="kpi_ids"):
        QuantileThreshold(scope="per_kpi").fit(scores)


def test_per_kpi_best_f1_uses_global_for_kpis_without_anomalies():
    sc = np.r_[0.1, 0.2, 0.9, 0.1, 0.5, 0.6]
    lab = np.r_[0, 0, 1, 0, 0, 0]
    ids = np.array(list("aaabbb"))
    thr = BestF1Threshold(scope="per_kpi", min_points=1).fit(sc, lab, kpi_ids=ids)
    assert thr.per_kpi == {"a": pytest.approx(0.9)}
    assert thr.value_for("b") == pytest.approx(0.9)


def test_to_dict_from_dict_round_trip():
    rng = np.random.default_rng(5)
    scores = rng.exponential(1.0, 4000)
    ids = np.repeat(["k1", "k2"], 2000)
    for cfg in ({"method": "pot", "scope": "per_kpi", "pot_level": 0.95, "pot_q": 1e-3},
                {"method": "quantile", "quantile": 0.97},
                {"method": "best_f1", "metric": "rpa_f1"}):
        labels = (scores > 4).astype(int)
        thr = make_threshold(cfg).fit(scores, labels, kpi_ids=ids)
        blob = json.dumps(thr.to_dict())  # JSON-serialisable
        back = Threshold.from_dict(json.loads(blob))
        assert type(back) is type(thr)
        assert back.to_dict() == thr.to_dict()
        assert (back.apply(scores, ids) == thr.apply(scores, ids)).all()
    with pytest.raises(ThresholdError, match="unknown key"):
        Threshold.from_dict({"method": "quantile", "colour": "red"})


def test_make_threshold_validates_config():
    full = {"method": "quantile", "scope": "global", "quantile": 0.99, "pot_level": 0.98,
            "pot_q": 1e-3, "metric": "point_f1"}
    assert isinstance(make_threshold(full), QuantileThreshold)
    assert isinstance(make_threshold({**full, "method": "pot"}), PotThreshold)
    with pytest.raises(ValueError, match="qantile"):
        make_threshold({"method": "quantile", "qantile": 0.9})
    with pytest.raises(ValueError, match="'zscore'"):
        make_threshold({"method": "zscore"})
    with pytest.raises(ValueError, match="scope"):
        make_threshold({"method": "quantile", "scope": "per_host"})
    with pytest.raises(ValueError, match="metric"):
        make_threshold({"method": "best_f1", "metric": "accuracy"})
    with pytest.raises(ValueError, match="pot_q"):
        make_threshold({"method": "pot", "pot_level": 0.98, "pot_q": 0.05})


def test_unfitted_threshold_refuses_to_apply():
    with pytest.raises(ThresholdError, match="not fitted"):
        QuantileThreshold().apply(np.arange(3.0))


def test_fixed_threshold_fits_nothing_and_round_trips():
    th = make_threshold({"method": "fixed", "value": 5.0, "scope": "per_kpi", "min_points": 1})
    th.fit(np.array([1.0, 9.0, 3.0]), kpi_ids=np.array(["a", "b", "b"]), labels=np.array([0, 1, 0]))
    assert th.global_value == 5.0 and th.per_kpi == {"a": 5.0, "b": 5.0}
    assert th.apply(np.array([4.99, 5.0, 7.0])).tolist() == [False, True, True]
    again = Threshold.from_dict(th.to_dict())
    assert again.value_for("never seen") == 5.0 and again.method == "fixed"
    with pytest.raises(ThresholdError, match="finite"):
        make_threshold({"method": "fixed", "value": float("inf")})
