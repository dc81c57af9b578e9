"""The embedded synthetic feed: deterministic per absolute time, labelled exactly where injected."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from models.frame import KPI_ID, LABEL, TIMESTAMP, VALUE
from pipeline.data import synthetic
from pipeline.data.contract import DTYPES, to_canonical
from pipeline.params import SyntheticParams

DEFAULT = SyntheticParams()
LONG = SyntheticParams(n_kpis=6, start="2026-01-01", end="2026-04-01", anomalies_per_week=7)


@pytest.fixture(scope="module")
def long_run():
    return synthetic.generate(LONG, return_events=True)


def test_default_shape_and_dtypes():
    frame = synthetic.generate(DEFAULT)
    assert list(frame.columns) == [KPI_ID, TIMESTAMP, VALUE, LABEL]
    for col in frame.columns:
        assert frame[col].dtype == DTYPES[col], col
    assert str(frame[TIMESTAMP].dt.tz) == "UTC"
    assert set(frame[LABEL].unique()) <= {0, 1}
    assert frame[KPI_ID].nunique() == DEFAULT.n_kpis
    assert sorted(frame[KPI_ID].unique()) == [f"synthetic/kpi_{i:03d}" for i in range(DEFAULT.n_kpis)]
    # end is exclusive; grid of 5 minutes; at most the gaps missing
    assert frame[TIMESTAMP].min() == pd.Timestamp("2026-01-01", tz="UTC")
    assert frame[TIMESTAMP].max() < pd.Timestamp("2026-01-29", tz="UTC")
    full = 28 * 24 * 12
    counts = frame.groupby(KPI_ID, observed=True).size()
    assert (counts <= full).all() and (counts > 0.95 * full).all()
    assert (frame[TIMESTAMP].astype("int64") % pd.Timedelta("5min").value == 0).all()
    # sorted by kpi, then time, no duplicates
    assert frame.equals(frame.sort_values([KPI_ID, TIMESTAMP]).reset_index(drop=True))
    assert not frame.duplicated([KPI_ID, TIMESTAMP]).any()
    assert np.isfinite(frame[VALUE]).all() and (frame[VALUE] >= 0).all()
    # already canonical: the contract leaves it unchanged
    pd.testing.assert_frame_equal(to_canonical(frame, "synthetic:"), frame, check_dtype=False)


def test_kpis_differ_and_have_daily_seasonality():
    frame = synthetic.generate(DEFAULT)
    clean = frame[frame[LABEL] == 0]
    levels = clean.groupby(KPI_ID, observed=True)[VALUE].median()
    assert levels.nunique() == DEFAULT.n_kpis
    for kpi, part in clean.groupby(KPI_ID, observed=True):
        hourly = part.groupby(part[TIMESTAMP].dt.hour)[VALUE].mean()
        # the daily swing is far larger than the noise
        assert hourly.max() - hourly.min() > 4 * DEFAULT.noise * levels[kpi], kpi


def test_fast_enough():
    synthetic.generate(DEFAULT)                     # warm-up (imports, caches)
    t0 = time.perf_counter()
    frame = synthetic.generate(DEFAULT)
    elapsed = time.perf_counter() - t0
    assert len(frame) > 30_000
    assert elapsed < 1.0, f"4 KPIs x 28 days took {elapsed:.2f}s"


def test_deterministic():
    a, ev_a = synthetic.generate(DEFAULT, return_events=True)
    b, ev_b = synthetic.generate(DEFAULT, return_events=True)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(ev_a, ev_b)
    c = synthetic.generate(DEFAULT.model_copy(update={"seed": DEFAULT.seed + 1}))
    assert not a[VALUE].equals(c[VALUE])


@pytest.mark.parametrize("start,end", [
    ("2026-01-10", "2026-01-11"),                       # one day ("today" in a daily run)
    ("2026-01-05", "2026-01-08"),                       # a few days
    ("2026-01-14 06:30", "2026-01-15 13:00"),           # not on day boundaries
])
def test_range_independence(start, end):
    wide, wide_ev = synthetic.generate(DEFAULT, return_events=True)
    narrow, narrow_ev = synthetic.generate(DEFAULT, start=start, end=end, return_events=True)
    lo, hi = pd.Timestamp(start, tz="UTC"), pd.Timestamp(end, tz="UTC")
    expected = wide[(wide[TIMESTAMP] >= lo) & (wide[TIMESTAMP] < hi)].reset_index(drop=True)
    assert len(narrow) > 0
    pd.testing.assert_frame_equal(narrow, expected)
    overlapping = wide_ev[(wide_ev["end"] > lo) & (wide_ev["start"] < hi)].reset_index(drop=True)
    pd.testing.assert_frame_equal(narrow_ev, overlapping)


def test_range_independent_of_configured_range():
    """Changing params start/end (e.g. a longer history) does not change the shared days."""
    longer = DEFAULT.model_copy(update={"start": "2025-12-01", "end": "2026-02-15"})
    a = synthetic.generate(DEFAULT)
    b = synthetic.generate(longer, start=DEFAULT.start, end=DEFAULT.end)
    pd.testing.assert_frame_equal(a, b)


def test_labels_exactly_where_injected(long_run):
    frame, events = long_run
    expected = np.zeros(len(frame), dtype=np.int8)
    ts = frame[TIMESTAMP].to_numpy(dtype="datetime64[ns]")
    kpi = frame[KPI_ID].to_numpy()
    for ev in events.itertuples(index=False):
        inside = (kpi == ev.kpi_id) & (ts >= ev.start.to_datetime64()) & (ts < ev.end.to_datetime64())
        if ev.kind == "gap":
            assert not inside.any(), f"rows present inside a gap {ev}"
        else:
            expected[inside] = 1
    np.testing.assert_array_equal(frame[LABEL].to_numpy(), expected)
    assert 0 < frame[LABEL].mean() < 0.2


def test_every_kind_occurs(long_run):
    _, events = long_run
    assert set(events["kind"]) == set(synthetic.KINDS)
    assert events["points"].ge(1).all()
    assert (events["end"] > events["start"]).all()
    # no event crosses midnight, so generating a single day reproduces it
    assert (events["start"].dt.floor("D") == (events["end"] - pd.Timedelta("1ns")).dt.floor("D")).all()


def test_gap_leaves_rows_absent(long_run):
    frame, events = long_run
    step = pd.Timedelta(LONG.interval)
    gaps = events[events["kind"] == "gap"]
    assert len(gaps) > 0
    for gap in gaps.itertuples(index=False):
        part = frame[frame[KPI_ID] == gap.kpi_id]
        grid = pd.date_range(gap.start, gap.end, freq=step, inclusive="left")
        assert len(grid) == gap.points
        assert not part[TIMESTAMP].isin(grid).any()
        # the neighbours of the gap are there unless another gap touches them
        before = gap.start - step
        others = gaps[(gaps[KPI_ID] == gap.kpi_id) & (gaps["start"] <= before) & (gaps["end"] > before)]
        if before >= pd.Timestamp(LONG.start, tz="UTC") and others.empty:
            assert (part[TIMESTAMP] == before).any()


def test_anomalies_detectable(long_run):
    """Isolated spikes and dips stand several noise stds away from their clean neighbourhood."""
    frame, events = long_run
    frame = frame.set_index([KPI_ID, TIMESTAMP])
    checked = 0
    for ev in events[events["kind"].isin(["spike", "dip"])].itertuples(index=False):
        near = events[(events[KPI_ID] == ev.kpi_id) & (events["start"] < ev.end + pd.Timedelta("1h"))
                      & (events["end"] > ev.start - pd.Timedelta("1h"))]
        if len(near) > 1:                       # overlapping kinds (stuck, gap) may mask it
            continue
        part = frame.loc[ev.kpi_id]
        window = part[(part.index >= ev.start - pd.Timedelta("1h")) & (part.index < ev.end + pd.Timedelta("1h"))]
        clean = window[window[LABEL] == 0][VALUE]
        hit = part[(part.index >= ev.start) & (part.index < ev.end)][VALUE]
        if len(clean) < 10 or hit.empty:
            continue
        level = part[VALUE].median()
        noise = LONG.noise * level
        deviation = (hit - clean.median()).abs().max()
        assert deviation > 3 * noise, ev
        checked += 1
    assert checked > 10


def test_stuck_is_constant(long_run):
    frame, events = long_run
    stuck = events[events["kind"] == "stuck"]
    assert len(stuck) > 0
    for ev in stuck.itertuples(index=False):
        part = frame[(frame[KPI_ID] == ev.kpi_id) & (frame[TIMESTAMP] >= ev.start) & (frame[TIMESTAMP] < ev.end)]
        overlapped = events[(events[KPI_ID] == ev.kpi_id) & (events["kind"] == "gap")
                            & (events["start"] < ev.end) & (events["end"] > ev.start)]
        if overlapped.empty:
            assert part[VALUE].nunique() == 1, ev


def test_empty_range_and_no_anomalies():
    frame = synthetic.generate(DEFAULT, start="2026-01-02", end="2026-01-02")
    assert len(frame) == 0 and list(frame.columns) == [KPI_ID, TIMESTAMP, VALUE, LABEL]
    quiet, events = synthetic.generate(DEFAULT.model_copy(update={"anomalies_per_week": 0}), return_events=True)
    assert events.empty and quiet[LABEL].eq(0).all()
    assert len(quiet) == DEFAULT.n_kpis * 28 * 24 * 12


def test_interval_not_dividing_a_day_stays_regular():
    p = DEFAULT.model_copy(update={"interval": "7min", "n_kpis": 1, "anomalies_per_week": 0})
    frame = synthetic.generate(p, start="2026-01-01", end="2026-01-04")
    assert frame[TIMESTAMP].diff().dropna().eq(pd.Timedelta("7min")).all()
    day2 = synthetic.generate(p, start="2026-01-02", end="2026-01-03")
    pd.testing.assert_frame_equal(
        day2, frame[frame[TIMESTAMP].dt.day == 2].reset_index(drop=True))
