"""Incidents (pipeline/batch/incidents.py): spans joined within one KPI and across KPIs, exactly."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pipeline.batch import score
from pipeline.batch.incidents import KPI_INCIDENT_COLUMNS, incident_id, incidents, kpi_incidents
from pipeline.batch.report import anomaly_spans

DAY = "2026-03-01"


def kpi(name: str, flagged: dict[int, float], n: int = 48, threshold: float = 2.0, start: str = DAY,
        values=None) -> pd.DataFrame:
    """``n`` points at 5 minutes from ``start``; ``flagged``: {index: score} of the flagged points (others 0.5)."""
    score_ = np.full(n, 0.5)
    flags = np.zeros(n, dtype=bool)
    for i, s in flagged.items():
        score_[i], flags[i] = s, True
    return pd.DataFrame({
        "kpi_id": name,
        "timestamp": pd.date_range(start, periods=n, freq="5min", tz="UTC"),
        "value": np.arange(n, dtype=float) if values is None else np.asarray(values, dtype=float),
        "score": score_, "threshold": threshold, "is_anomaly": flags,
    })


def at(hhmm: str, day: str = DAY) -> pd.Timestamp:
    return pd.Timestamp(f"{day} {hhmm}", tz="UTC")


def test_spans_of_one_kpi_within_the_gap_join_and_over_it_do_not():
    # spans 00:00-00:05, 00:35 (30 min after the first one's end), 01:10 (35 min after 00:35)
    rows = kpi("a", {0: 3.0, 1: 5.0, 7: 4.0, 14: 8.0})
    spans = anomaly_spans(rows)

    joined = kpi_incidents(spans, "30min")
    assert list(joined.columns) == list(KPI_INCIDENT_COLUMNS)
    assert [tuple(r) for r in joined.itertuples(index=False)] == [
        ("a", at("00:00"), at("00:35"), 2, 3, 5.0, 2.5),   # the gap is exactly the tolerance: joined
        ("a", at("01:10"), at("01:10"), 1, 1, 8.0, 4.0),   # 35 min: over it
    ]
    assert len(kpi_incidents(spans, "29min")) == 3
    assert len(kpi_incidents(spans, "0min")) == 3  # adjacent spans are already one span
    assert len(kpi_incidents(spans, "35min")) == 1

    found = incidents(rows, "30min", detector="diff_z")
    assert [(i["start"], i["end"], i["duration_s"], i["spans"], i["points"], i["peak_score"], i["severity"])
            for i in found] == [
        ("2026-03-01T01:10:00+00:00", "2026-03-01T01:10:00+00:00", 0.0, 1, 1, 8.0, 4.0),  # most severe first
        ("2026-03-01T00:00:00+00:00", "2026-03-01T00:35:00+00:00", 2100.0, 2, 3, 5.0, 2.5),
    ]
    assert {i["detector"] for i in found} == {"diff_z"}


def test_kpis_that_overlap_or_lie_within_the_gap_form_one_incident():
    frames = [
        kpi("a", {12: 3.0, 13: 3.0, 14: 3.0}),   # 01:00-01:10
        kpi("b", {18: 9.0}, threshold=3.0),      # 01:30: 20 min after a's end
        kpi("d", {24: 2.2}),                     # 02:00: 30 min after b, 50 after a: chained through b
        kpi("c", {40: 7.0}, threshold=1.0),      # 03:20: 80 min after d: another incident
        kpi("e", {}),                            # never flagged
    ]
    rows = pd.concat(frames, ignore_index=True).sample(frac=1, random_state=1)  # order does not matter

    found = incidents(rows, "30min")

    assert [(i["kpis"], i["start"][11:16], i["end"][11:16], i["severity"], i["peak_score"]) for i in found] == [
        (["c"], "03:20", "03:20", 7.0, 7.0),
        (["b", "a", "d"], "01:00", "02:00", 3.0, 9.0),  # KPIs most severe first: 9/3, 3/2, 2.2/2
    ]
    group = found[1]
    assert group["duration_s"] == 3600.0 and group["spans"] == 3 and group["points"] == 5
    assert [(k["kpi_id"], k["peak_at"][11:16], k["peak_score"], k["threshold"], k["severity"])
            for k in group["per_kpi"]] == [("b", "01:30", 9.0, 3.0, 3.0), ("a", "01:00", 3.0, 2.0, 1.5),
                                           ("d", "02:00", 2.2, 2.0, pytest.approx(1.1))]
    assert [k["observed"] for k in group["per_kpi"]] == [18.0, 12.0, 24.0]  # the value at each KPI's peak
    # a smaller tolerance breaks the chain where d is 30 min after b
    assert [i["kpis"] for i in incidents(rows, "25min")] == [["c"], ["b", "a"], ["d"]]


def test_ids_are_stable_and_name_the_start_and_kpis():
    rows = pd.concat([kpi("b", {18: 9.0}), kpi("a", {19: 3.0}), kpi("c", {40: 7.0})], ignore_index=True)
    first = incidents(rows, "30min")
    again = incidents(rows.sample(frac=1, random_state=3).reset_index(drop=True), "30min")
    assert [i["id"] for i in first] == [i["id"] for i in again]
    assert all(re.fullmatch(r"inc-\d{8}-\d{4}-[0-9a-f]{8}", i["id"]) for i in first)
    assert [i["id"][:18] for i in first] == ["inc-20260301-0130-", "inc-20260301-0320-"]
    assert incident_id(at("01:30"), ["b", "a"]) == incident_id(at("01:30"), ["a", "b"]) == first[0]["id"]
    assert incident_id(at("01:30"), ["a"]) != first[0]["id"]           # other KPIs
    assert incident_id(at("01:35"), ["a", "b"]) != first[0]["id"]      # another start
    assert incident_id(at("01:30", "2026-03-02"), ["a", "b"]) != first[0]["id"]  # another day


def test_the_band_is_the_models_where_the_scores_carry_it_else_the_days_quantiles():
    values = np.arange(48, dtype=float)
    values[30] = 100.0  # the peak
    values[29] = 1000.0  # flagged, before the peak: not in the band
    rows = kpi("a", {29: 3.0, 30: 6.0}, values=values)

    # no expected columns (a partition written before them): the 2 h of unflagged values before the peak
    # (02:30, point 30): points 6..28 (00:30 is point 6; point 29 is flagged)
    band = incidents(rows, "30min")[0]["per_kpi"][0]
    expected = np.quantile(np.arange(6, 29, dtype=float), [0.5, 0.05, 0.95])
    assert band["observed"] == 100.0 and band["expected_from"] == "day_quantiles"
    assert [band["expected"], band["expected_low"], band["expected_high"]] == pytest.approx(expected.tolist())
    assert band["expected"] == 17.0

    model = rows.assign(expected=rows["value"] - 1, expected_low=rows["value"] - 5, expected_high=rows["value"] + 5)
    band = incidents(model, "30min")[0]["per_kpi"][0]
    assert (band["expected"], band["expected_low"], band["expected_high"], band["expected_from"]) == \
        (99.0, 95.0, 105.0, "model")

    unknown = model.assign(expected=np.nan, expected_low=np.nan, expected_high=np.nan)
    assert incidents(unknown, "30min")[0]["per_kpi"][0]["expected_from"] == "day_quantiles"

    early = kpi("a", {3: 6.0})  # 3 points before it: too few for a band
    band = incidents(early, "30min")[0]["per_kpi"][0]
    assert (band["expected"], band["expected_low"], band["expected_high"], band["expected_from"]) == \
        (None, None, None, None)


def test_an_empty_or_quiet_day_has_no_incidents():
    empty = kpi("a", {}).iloc[:0]
    assert incidents(empty, "30min") == []
    assert incidents(kpi("a", {}), "30min") == []
    none = kpi_incidents(anomaly_spans(empty), "30min")
    assert none.empty and list(none.columns) == list(KPI_INCIDENT_COLUMNS)


def test_score_finds_incidents_day_by_day_as_the_reports_do():
    # a's incident runs over midnight: each day's report sees its own part, and score counts both
    late = kpi("a", {46: 3.0, 47: 3.0}, start="2026-03-01 20:00")   # 23:50, 23:55
    rows = pd.concat([late, kpi("a", {0: 4.0}, start="2026-03-02"), kpi("b", {5: 2.5}, start="2026-03-02")],
                     ignore_index=True)
    result = score.alarm_spans(rows, "30min", "diff_z", limit=2)
    day2 = rows[rows["timestamp"] >= "2026-03-02"]
    assert result["spans"] == 2 and result["incidents"] == 2  # a's span runs over midnight and result["incidents_listed"] == 2
    assert result["anomaly_incidents"][0] == incidents(day2, "30min", "diff_z")[0]
    assert [i["kpis"] for i in result["anomaly_incidents"]] == [["a", "b"], ["a"]]
    assert score.alarm_spans(rows.iloc[:0], "30min")["incidents"] == 0
