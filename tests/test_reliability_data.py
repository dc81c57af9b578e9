"""Issue 25, the data side: no row lost silently on the way to the trained grid, and a grid bounded by
the rows it holds. (Extreme values near windows: tests/test_extreme_values.py.)"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.frame import KPI_ID, TIMESTAMP, VALUE
from pipeline import summary
from pipeline.batch import daily, score
from pipeline.batch.report import build_report
from pipeline.data import prep, sources
from pipeline.errors import DataError
from pipeline.params import parse_params
from pipeline.serving.bundle import Bundle, BundleModel, write_bundle
from pipeline.stages import evaluate, ingest, train, validate, windows
from tests.conftest import small_params_dict

DAY = "2026-01-06"
DETECTOR = "robust_zscore"  # fits in a second; the grid is the detector's input, whichever it is


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A bundle trained on the 5-minute synthetic feed, and params rooted in a temporary directory."""
    root = tmp_path_factory.mktemp("reliability")
    raw = small_params_dict()
    raw["paths"] = {k: str(root / v) for k, v in raw["paths"].items()}
    raw["score"].update({k: str(root / k) for k in ("output", "staging", "reports")})
    raw["train"].update({"detectors": [DETECTOR]})
    p = parse_params(raw)
    ingest.run(p, Path(p.paths.raw))
    validate.run(p, Path(p.paths.raw), Path(p.paths.validated), Path(p.paths.quarantine),
                 Path(p.paths.validation_report))
    windows.run(p, Path(p.paths.validated), Path(p.paths.windows))
    train.run(p, DETECTOR, progress=False)
    evaluate.run(p)
    evaluation = Path(p.paths.evaluation)
    write_bundle(root / "bundle", Path(p.paths.artifacts) / DETECTOR,
                 json.loads((evaluation / "thresholds" / f"{DETECTOR}.json").read_text()),
                 json.loads((evaluation / "calibration" / f"{DETECTOR}.json").read_text()), p.windows.clip_sigma)
    return root, p


def _model(root: Path, norm_interval_s: float | None = None, name: str = "bundle"):
    """The trained bundle, optionally with every KPI's interval_s in norm_stats.json replaced."""
    directory = root / name
    if norm_interval_s is not None and not directory.exists():
        shutil.copytree(root / "bundle", directory)
        stats = json.loads((directory / "norm_stats.json").read_text())
        (directory / "norm_stats.json").write_text(json.dumps(
            {k: {**v, "interval_s": norm_interval_s} for k, v in stats.items()}))
    return BundleModel(Bundle.load(directory)), {"uri": f"test:{name}"}


def _one_kpi_every_minute(p, start, end) -> tuple[pd.DataFrame, str]:
    """The day + context of the synthetic feed, with its first KPI resampled to 1 minute (linear in time)."""
    rows = sources.read_source("synthetic:", p, start - pd.Timedelta(p.score.context), end)
    kpi = sorted(rows[KPI_ID].astype(str).unique())[0]
    mine = rows[rows[KPI_ID].astype(str) == kpi].sort_values(TIMESTAMP)
    ts = pd.date_range(mine[TIMESTAMP].iloc[0], mine[TIMESTAMP].iloc[-1], freq="1min")
    seconds = lambda t: (t - ts[0]).total_seconds()  # noqa: E731
    fine = pd.DataFrame({KPI_ID: kpi, TIMESTAMP: ts, VALUE: np.interp(
        seconds(pd.DatetimeIndex(ts)), seconds(pd.DatetimeIndex(mine[TIMESTAMP])), mine[VALUE])})
    return pd.concat([rows[rows[KPI_ID].astype(str) != kpi][[KPI_ID, TIMESTAMP, VALUE]], fine],
                     ignore_index=True), kpi


def _in_day(frame: pd.DataFrame, start, end) -> pd.DataFrame:
    return frame[(frame[TIMESTAMP] >= start) & (frame[TIMESTAMP] < end)]


# -- defect 1: a KPI trained at 5 minutes that arrives every minute ---------------------------------
def test_rows_finer_than_the_trained_grid_are_quarantined_named_and_counted(trained, tmp_path):
    """Every input row of the day is scored or quarantined with a reason (on 5c9dee7: 1,152 of the KPI's
    1,440 rows vanished, 'quarantined 0'); the KPI is named in the metadata, the CLI line and the report."""
    root, p = trained
    start, end = score.day_range(DAY)
    rows, kpi = _one_kpi_every_minute(p, start, end)
    rows.to_csv(tmp_path / "in.csv", index=False)
    result = score.run(p, f"csv:{tmp_path / 'in.csv'}", start, end, str(tmp_path / "scores"), "unused",
                       model=_model(root))

    meta = result["partitions"][0]
    day_in = _in_day(rows, start, end)
    assert meta["rows"] + meta["quarantined"] == len(day_in)  # nothing lost
    fine = day_in[day_in[KPI_ID] == kpi]
    between = int((fine[TIMESTAMP].dt.minute % 5 != 0).sum())  # the 5-minute grid starts on the hour
    assert meta["quarantined_by_rule"] == {"on_trained_grid": between}
    assert meta["interval_changed"] == [{"kpi_id": kpi, "trained_interval_s": 300.0, "observed_interval_s": 60.0,
                                         "rows_quarantined": between}]
    assert score.read_meta(str(tmp_path / "scores"), DAY)["interval_changed"] == meta["interval_changed"]

    out = score.read_partition(str(tmp_path / "scores"), DAY)
    theirs = out[out[KPI_ID] == kpi]
    assert len(theirs) == len(fine) - between and (theirs[TIMESTAMP].dt.minute % 5 == 0).all()
    given = day_in.set_index([KPI_ID, TIMESTAMP])[VALUE]
    np.testing.assert_allclose(theirs[VALUE], given.loc[list(zip(theirs[KPI_ID], theirs[TIMESTAMP]))])  # own values

    held = pd.read_parquet(score.partition_file(str(tmp_path / "scores"), DAY, score.QUARANTINED))
    assert set(held["rule"]) == {"on_trained_grid"} and set(held[KPI_ID]) == {kpi}
    assert not held.set_index([KPI_ID, TIMESTAMP]).index.isin(out.set_index([KPI_ID, TIMESTAMP]).index).any()
    reason = held["reason"].iloc[0]
    assert kpi in reason and "300 s" in reason and "60 s" in reason and "retrain" in reason

    line = summary.score(result)
    assert f"{meta['quarantined']:,} quarantined" in line
    assert f"{meta['quarantined']:,} of the quarantined not on their KPI's trained grid (on_trained_grid)" in line
    assert f"interval changed: {kpi} (trained 300 s, arrives 60 s)" in line

    report = build_report(out, DAY, {}, tmp_path / "reports", partition=meta)
    page = Path(report["html"]).read_text()
    written = json.loads(Path(report["json"]).read_text())
    assert written["quarantined"] == meta["quarantined"] and written["interval_changed"] == meta["interval_changed"]
    changed_table = page.split('<table class="interval-changed">')[1].split("</table>")[0]
    assert f"<td>{kpi}</td>" in changed_table and ">300<" in changed_table and ">60<" in changed_table
    assert "<td>on_trained_grid</td>" in page


def test_the_scoring_dag_quarantines_and_reports_them_too(trained, tmp_path, monkeypatch):
    """The DAG's steps (ingest → validate → score_shard ×2 → write → report) carry each shard's grid
    quarantine and counts into the day's partition and report. The registry lookup is replaced by the
    same bundle (tests/test_dags.py drives it through MLflow); everything after it is the real code."""
    root, p = trained
    start, end = score.day_range(DAY)
    rows, kpi = _one_kpi_every_minute(p, start, end)
    rows.to_csv(tmp_path / "in.csv", index=False)
    raw = small_params_dict()
    raw["paths"] = dict(p.paths)
    raw["score"].update({"input": f"csv:{tmp_path / 'in.csv'}", "output": str(tmp_path / "scores"),
                         "staging": str(tmp_path / "staging"), "reports": str(tmp_path / "reports")})
    params = parse_params(raw)
    model = _model(root)
    monkeypatch.setattr(score, "load_model", lambda _params, _uri: model)

    daily.ingest(params, DAY)
    daily.validate(params, DAY)
    shards = [daily.score_shard(params, DAY, i, 2) for i in range(2)]
    assert sum(s["quarantined"] for s in shards) > 0
    partition = daily.write(params, DAY, 2)
    day_in = _in_day(rows, start, end)
    fine = day_in[day_in[KPI_ID] == kpi]
    assert partition["rows"] + partition["quarantined"] == len(day_in)
    assert partition["quarantined_by_rule"] == {"on_trained_grid": int((fine[TIMESTAMP].dt.minute % 5 != 0).sum())}
    assert [c["kpi_id"] for c in partition["interval_changed"]] == [kpi]
    # a bundle written without a training range (as before it was recorded) scores, its range unknown
    assert partition["training_range"] == {"start": None, "end": None, "outside": False, "days_outside": None}
    assert partition["untrained_kpis"] == [] and set(partition["alarm_check"]) == {
        "alarm_fraction", "budget_fraction", "ratio", "factor", "mismatch"}
    reported = daily.report(params, DAY)
    assert reported["quarantined"] == partition["quarantined"]
    assert [c["kpi_id"] for c in reported["interval_changed"]] == [kpi]


def test_place_on_grid_keeps_the_nearest_row_of_each_point_and_counts_snaps():
    ts = pd.date_range("2026-01-01", periods=6, freq="5min", tz="UTC")
    frame = pd.DataFrame({KPI_ID: "a", TIMESTAMP: ts, VALUE: np.arange(6.0)})
    late = pd.DataFrame({KPI_ID: ["a", "a"], TIMESTAMP: [ts[2] + pd.Timedelta("10s"), ts[4] - pd.Timedelta("2min")],
                         VALUE: [20.0, 40.0]})
    jitter = frame.assign(**{TIMESTAMP: frame[TIMESTAMP].where(frame.index != 5, ts[5] + pd.Timedelta("3s"))})
    placed = prep.place_on_grid(pd.concat([jitter, late], ignore_index=True),
                                {"a": prep.NormStats(0.0, 1.0, 300.0)})
    assert placed.rows[VALUE].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]  # the on-grid readings win
    assert placed.quarantine[VALUE].tolist() == [20.0, 40.0]
    assert placed.quarantine["rule"].tolist() == ["on_trained_grid"] * 2
    assert "10 s from its nearest grid point" in placed.quarantine["reason"].iloc[0]
    assert placed.snapped[TIMESTAMP].tolist() == [ts[5] + pd.Timedelta("3s")]  # scored at ts[5], and counted
    assert placed.intervals == {}  # its interval did not change
    assert placed.summary(ts[0], ts[-1] + pd.Timedelta("1h")) == {"off_grid_snapped": 1, "interval_changed": []}
    prepared = prep.prepare(placed.rows, {"a": prep.NormStats(0.0, 1.0, 300.0)})
    assert len(prepared) == 6 and prepared.attrs["collisions_dropped"] == 0
    assert prepared.attrs["off_grid_snapped"] == 1


# -- defect 4: a grid bounded by the rows ------------------------------------------------------------
@pytest.mark.parametrize("interval_s", [1.0, 0.01, 0.0, float("nan")])
def test_a_grid_far_finer_than_the_rows_is_refused_before_it_is_built(interval_s):
    """interval_s 0.001 in norm_stats.json built a 345M-point grid (minutes, then MemoryError on 5c9dee7)."""
    ts = pd.date_range("2026-01-01", periods=10, freq="5min", tz="UTC")
    frame = pd.DataFrame({KPI_ID: "cpu", TIMESTAMP: ts, VALUE: np.arange(10.0)})
    began = time.perf_counter()
    with pytest.raises(DataError) as err:
        prep.prepare(frame, {"cpu": prep.NormStats(0.0, 1.0, interval_s)})
    assert time.perf_counter() - began < 1.0
    assert err.value.rule == "grid_bounded" and "'cpu'" in str(err.value)
    assert f"interval_s {interval_s:g}" in str(err.value) and "norm_stats.json" in str(err.value)
    if interval_s > 0:
        bound = prep.MAX_GRID_POINTS_PER_ROW * len(frame)
        assert f"{prep.MAX_GRID_POINTS_PER_ROW} points per row ({bound:,})" in str(err.value)


def test_scoring_with_a_tiny_trained_interval_is_one_clear_error(trained, tmp_path):
    root, p = trained
    start, end = score.day_range(DAY)
    with pytest.raises(DataError, match=r"rule 'grid_bounded'.*interval_s 1 \(the model's norm_stats.json\)"):
        score.run(p, "synthetic:", start, end, str(tmp_path / "scores"), "unused",
                  model=_model(root, norm_interval_s=1.0, name="bundle-1s"))
    assert not (tmp_path / "scores").exists()  # nothing written


def test_the_bound_leaves_room_for_validated_gaps():
    """A KPI with every other point missing (far past validation.max_gap_ratio) still regularises."""
    ts = pd.date_range("2026-01-01", periods=200, freq="5min", tz="UTC")[::2]
    grid, stats = prep.regularise(pd.DataFrame({KPI_ID: "a", TIMESTAMP: ts, VALUE: np.arange(100.0)}),
                                  pd.Timedelta("5min"))
    assert len(grid) == 199 and stats["missing"] == 99
