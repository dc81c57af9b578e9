"""Sub-daily scoring slots (pipeline/batch/score.py: slot_range, merge_slot): an interval's rows replace
their own part of the day's partition, a rerun changes nothing, and a whole-day run replaces the day."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.batch import daily, score
from pipeline.errors import DataError
from pipeline.params import Params, parse_params

DAY = "2026-03-02"


def scored(start: str, periods: int, kpis=("a", "b"), flagged: tuple[int, ...] = (), value: float = 1.0) -> pd.DataFrame:
    """Scored rows in the dataset's schema, every minute from ``start``; ``flagged``: positions flagged."""
    stamps = pd.date_range(start, periods=periods, freq="1min", tz="UTC")
    frames = []
    for k in kpis:
        flags = np.zeros(periods, dtype=bool)
        flags[list(flagged)] = True
        frames.append(pd.DataFrame({"kpi_id": k, "timestamp": stamps, "value": value, "expected": 1.0,
                                    "expected_low": 0.5, "expected_high": 1.5, "raw_score": 0.1,
                                    "score": np.where(flags, 9.0, 0.1), "threshold": 3.0, "is_anomaly": flags}))
    return pd.concat(frames, ignore_index=True)[list(score.SCORES_SCHEMA.names)]


def no_quarantine() -> pd.DataFrame:
    return pd.DataFrame({"kpi_id": pd.Series(dtype=str), "timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
                         "value": pd.Series(dtype=float), "rule": pd.Series(dtype=str),
                         "reason": pd.Series(dtype=str)})


def merge(out, start: str, end: str, rows: pd.DataFrame, version: str = "1", grid: dict | None = None) -> list[dict]:
    lo, hi = score.slot_range(f"{start}/{end}")
    return score.merge_slot(str(out), lo, hi, rows, no_quarantine(), {"model": {"version": version}, "input": "t"},
                            grid=grid or {"off_grid_snapped": 0, "interval_changed": []}, params=Params())


def test_slot_range_reads_days_and_intervals_and_names_them_back():
    start, end = score.slot_range(DAY)
    assert (start, end) == (pd.Timestamp(DAY, tz="UTC"), pd.Timestamp("2026-03-03", tz="UTC"))
    assert score.slot_text(start, end) == DAY
    start, end = score.slot_range("2026-03-02T00:05:00Z/2026-03-02T00:10:00+00:00")
    assert end - start == pd.Timedelta("5min") and str(start.tz) == "UTC"
    assert score.slot_range(score.slot_text(start, end)) == (start, end)
    naive = score.slot_range("2026-03-02T00:05/2026-03-02T00:10")  # naive: UTC
    assert naive == (start, end)


@pytest.mark.parametrize("text, detail", [("2026-03-02T00:10Z/2026-03-02T00:05Z", "END must be after START"),
                                          ("2026-03-02T00:10Z/noon", "ISO timestamps")])
def test_a_bad_interval_is_a_data_error_naming_it(text, detail):
    with pytest.raises(DataError) as err:
        score.slot_range(text)
    assert err.value.rule == "interval_format" and detail in str(err.value) and text in str(err.value)


def test_intervals_fill_the_day_and_a_rerun_changes_nothing(tmp_path):
    out = tmp_path / "scores"
    first = scored(f"{DAY} 00:00", 5)
    second = scored(f"{DAY} 00:05", 5, flagged=(2,))
    merge(out, f"{DAY}T00:00Z", f"{DAY}T00:05Z", first)
    partition, = merge(out, f"{DAY}T00:05Z", f"{DAY}T00:10Z", second, version="2",
                       grid={"off_grid_snapped": 3, "interval_changed": []})
    day = score.read_partition(str(out), DAY)
    assert len(day) == 20 and list(day["kpi_id"]) == ["a"] * 10 + ["b"] * 10  # by KPI, then time
    assert day.groupby("kpi_id")["timestamp"].apply(lambda t: t.is_monotonic_increasing and t.is_unique).all()
    meta = score.read_meta(str(out), DAY)
    assert meta["rows"] == 20 and meta["anomalies"] == 2 and meta["model"]["version"] == "2"
    assert list(meta["slots"]) == [f"{DAY}T00:00:00+00:00/{DAY}T00:05:00+00:00",
                                   f"{DAY}T00:05:00+00:00/{DAY}T00:10:00+00:00"]
    assert meta["off_grid_snapped"] == 3 and partition["rows"] == 20

    # the same interval again (a retry, a rerun): the partition and its counts are the same
    merge(out, f"{DAY}T00:05Z", f"{DAY}T00:10Z", second, version="2", grid={"off_grid_snapped": 3, "interval_changed": []})
    pd.testing.assert_frame_equal(score.read_partition(str(out), DAY), day)
    again = score.read_meta(str(out), DAY)
    assert {k: again[k] for k in ("rows", "anomalies", "off_grid_snapped", "slots")} == \
        {k: meta[k] for k in ("rows", "anomalies", "off_grid_snapped", "slots")}

    # a rescored interval replaces exactly its own rows
    merge(out, f"{DAY}T00:05Z", f"{DAY}T00:10Z", scored(f"{DAY} 00:05", 5, value=7.0), version="3")
    day = score.read_partition(str(out), DAY)
    assert (day.loc[day["timestamp"] >= pd.Timestamp(f"{DAY} 00:05", tz="UTC"), "value"] == 7.0).all()
    assert (day.loc[day["timestamp"] < pd.Timestamp(f"{DAY} 00:05", tz="UTC"), "value"] == 1.0).all()
    assert score.read_meta(str(out), DAY)["anomalies"] == 0


def test_an_interval_across_midnight_writes_both_days(tmp_path):
    out = tmp_path / "scores"
    rows = scored(f"{DAY} 23:55", 10, kpis=("a",))
    parts = merge(out, f"{DAY}T23:55Z", "2026-03-03T00:05Z", rows)
    assert [p["date"] for p in parts] == [DAY, "2026-03-03"] and [p["rows"] for p in parts] == [5, 5]


def test_a_whole_day_run_replaces_what_the_intervals_wrote(tmp_path):
    out = tmp_path / "scores"
    merge(out, f"{DAY}T00:00Z", f"{DAY}T00:05Z", scored(f"{DAY} 00:00", 5))
    start, end = score.slot_range(DAY)
    score.write_days(str(out), start, end, scored(f"{DAY} 00:00", 60), no_quarantine(), {"model": {}, "input": "t"})
    meta = score.read_meta(str(out), DAY)
    assert meta["rows"] == 120 and "slots" not in meta


def test_the_staging_key_is_the_day_or_the_interval_and_old_intervals_are_pruned(tmp_path):
    raw = Params().model_dump(by_alias=True)
    raw["score"]["staging"] = str(tmp_path / "staging")
    params = parse_params(raw)
    assert daily.slot_key(DAY) == DAY
    key = daily.slot_key(f"{DAY}T00:05Z/{DAY}T00:10Z")
    assert key == "2026-03-02T000500Z_2026-03-02T001000Z"
    assert daily.days_of(f"{DAY}T23:55Z/2026-03-03T00:05Z") == [DAY, "2026-03-03"]
    old = tmp_path / "staging" / "2026-02-27T000000Z_2026-02-27T000500Z"
    kept = tmp_path / "staging" / "2026-03-01T235500Z_2026-03-02T000000Z"
    a_day = tmp_path / "staging" / "2026-02-20"
    for folder in (old, kept, a_day):
        folder.mkdir(parents=True)
        (folder / "input.json").write_text(json.dumps({"input": "t"}))
    daily._prune_interval_staging(params, pd.Timestamp(f"{DAY}T00:05Z") - daily.STAGING_KEEP)
    assert not old.exists() and kept.exists() and a_day.exists()  # a day's staging is not an interval's
