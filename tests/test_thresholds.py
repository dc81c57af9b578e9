"""pipeline.eval.thresholds: fitting, scopes, serialisation and errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from pipeline.eval.thresholds import (BestF1Threshold, BudgetThreshold, PotThreshold, QuantileThreshold, Threshold,
                                      ThresholdError, alarms_per_kpi_day, make_threshold, pot_threshold)


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


def test_budget_is_the_quantile_at_one_minus_budget_per_points_per_day():
    # One KPI at 5-minute sampling: 288 points a day. 2880 scores 0..2879 (10 days), budget 2 a day: rate
    # 2 / 288, the 1 - 2/288 quantile of 0..2879 = 2879 * (1 - 2/288) = 2859.0069...; alarms = the 20 scores
    # 2860..2879, 2 per day.
    scores = np.arange(2880.0)
    thr = make_threshold({"method": "budget", "budget": 2.0}).fit(scores, points_per_day=288.0)
    assert thr.value_for() == pytest.approx(2879 * (1 - 2 / 288))
    assert thr.apply(scores).sum() == 20
    assert thr.fit_info["global"] == {"n": 2880, "days": pytest.approx(10.0), "quantile": pytest.approx(1 - 2 / 288),
                                      "tie_lifted": False}
    assert alarms_per_kpi_day(thr.apply(scores), points_per_day=288.0) == pytest.approx(2.0)


def test_budget_per_kpi_follows_each_kpis_sampling_interval():
    # "fast" at 1 minute (1440 a day), "slow" hourly (24 a day), both 1440 points of 0..1439: one day of
    # fast, 60 days of slow. Budget 6: fast alarms on 6 points (1 - 6/1440), slow on 6 x 60 = 360 (1 - 6/24).
    scores = np.r_[np.arange(1440.0), np.arange(1440.0)]
    ids = np.repeat(["fast", "slow"], 1440)
    ppd = {"fast": 1440.0, "slow": 24.0}
    per = BudgetThreshold(budget=6.0, scope="per_kpi").fit(scores, kpi_ids=ids, points_per_day=ppd)
    assert per.value_for("fast") == pytest.approx(1439 * (1 - 6 / 1440))
    assert per.value_for("slow") == pytest.approx(1439 * (1 - 6 / 24))
    alarms = per.apply(scores, ids)
    assert (alarms[:1440].sum(), alarms[1440:].sum()) == (6, 360)
    # global: one value spending the budget on average: 6 x 61 KPI-days = 366 alarms of 2880 points
    glob = BudgetThreshold(budget=6.0).fit(scores, kpi_ids=ids, points_per_day=ppd)
    assert glob.value_for() == pytest.approx(np.quantile(scores, 1 - 366 / 2880))
    assert glob.apply(scores, ids).sum() == 366
    assert alarms_per_kpi_day(glob.apply(scores, ids), kpi_ids=ids, points_per_day=ppd) == pytest.approx(6.0)
    # the per-KPI fallback is that global value; round trip
    assert per.value_for("never seen") == glob.value_for()
    back = Threshold.from_dict(json.loads(json.dumps(per.to_dict())))
    assert type(back) is BudgetThreshold and back.budget == 6.0 and back.to_dict() == per.to_dict()


def test_budget_ties_missing_points_and_errors():
    # a budget of every point (288 a day at 288 points a day): every point alarms
    assert BudgetThreshold(budget=288.0).fit(np.arange(5.0), points_per_day=288.0).apply(np.arange(5.0)).all()
    # a quiet detector: 995 zeros, 5 positive scores; a budget of 20 of 1000 points would put the quantile at
    # 0, where the 995 tied zeros would all alarm: the value moves just above the tie, 5 alarms
    scores = np.r_[np.zeros(995), np.arange(1.0, 6.0)]
    thr = BudgetThreshold(budget=20.0).fit(scores, points_per_day=1000.0)
    assert thr.value_for() == np.nextafter(0.0, 1.0) and thr.apply(scores).sum() == 5
    assert thr.fit_info["global"]["tie_lifted"] is True
    # missing points count neither as points nor as days
    missing = np.r_[np.zeros(995, bool), np.ones(5, bool)]
    thr = BudgetThreshold(budget=1.0).fit(np.arange(1000.0), missing=missing, points_per_day=995.0)
    assert thr.fit_info["global"]["n"] == 995 and thr.fit_info["global"]["days"] == pytest.approx(1.0)
    with pytest.raises(ThresholdError, match="points per day"):
        BudgetThreshold().fit(np.arange(10.0))
    with pytest.raises(ThresholdError, match=r"no points per day for KPI\(s\) \['b'\]"):
        BudgetThreshold().fit(np.arange(4.0), kpi_ids=np.array(list("aabb")), points_per_day={"a": 288.0})
    with pytest.raises(ThresholdError, match="finite and > 0"):
        make_threshold({"method": "budget", "budget": 0.0})
