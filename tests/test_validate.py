"""The validate stage with Great Expectations: each bad input is an error or a quarantine entry."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from models.frame import KPI_ID, LABEL, TIMESTAMP, VALUE
from pipeline.data import checks
from pipeline.data.contract import DataError
from pipeline.stages import validate


def kpi(kpi_id: str, n: int, freq: str = "5min", labelled: bool = True) -> pd.DataFrame:
    frame = pd.DataFrame({KPI_ID: kpi_id,
                          TIMESTAMP: pd.date_range("2026-01-01", periods=n, freq=freq, tz="UTC"),
                          VALUE: np.sin(np.arange(n) / 10.0)})
    if labelled:
        frame[LABEL] = np.zeros(n, dtype=np.int8)
    return frame


@pytest.fixture(scope="module")
def validator():
    from pipeline.params import Params

    return checks.Validator(Params())  # defaults: min 200 points, 48-point windows


def quarantined(outcome, rule):
    q = outcome.quarantine
    return q[q["rule"] == rule]


def test_clean_frame_passes_untouched(validator):
    frame = kpi("a", 300)
    outcome = validator.validate(frame, "clean.csv")
    assert outcome.quarantine.empty
    pd.testing.assert_frame_equal(outcome.valid, frame)
    assert all(r["success"] for r in outcome.results)


def test_nan_and_inf_rows_are_quarantined_with_the_rule(validator):
    frame = kpi("a", 300)
    frame.loc[5, VALUE] = np.nan
    frame.loc[6, VALUE] = np.inf
    frame.loc[7, VALUE] = -np.inf
    outcome = validator.validate(frame, "x.csv")
    assert len(outcome.valid) == 297
    nulls = quarantined(outcome, "expect_column_values_to_not_be_null")
    infs = quarantined(outcome, "expect_column_values_to_be_between")
    assert nulls[TIMESTAMP].tolist() == [frame.loc[5, TIMESTAMP]]
    assert sorted(infs[VALUE].tolist()) == [-np.inf, np.inf]
    assert set(outcome.quarantine["column"]) == {"value"}
    assert outcome.summary()["rows_in"] == 300


def test_duplicates_keep_the_first_and_quarantine_the_rest(validator):
    frame = kpi("a", 300)
    dup = frame.iloc[[10, 10]].assign(**{VALUE: [100.0, 200.0]})
    outcome = validator.validate(pd.concat([frame, dup], ignore_index=True), "dups.csv")
    q = quarantined(outcome, "expect_compound_columns_to_be_unique")
    assert q[VALUE].tolist() == [100.0, 200.0]
    assert outcome.valid[TIMESTAMP].is_unique and len(outcome.valid) == 300
    assert outcome.valid.loc[10, VALUE] == frame.loc[10, VALUE]


def test_unsorted_input_comes_out_sorted(validator):
    frame = kpi("a", 300).sample(frac=1.0, random_state=0).reset_index(drop=True)
    outcome = validator.validate(frame, "shuffled.csv")
    assert outcome.quarantine.empty
    assert outcome.valid[TIMESTAMP].is_monotonic_increasing


def test_bad_label_is_quarantined(validator):
    frame = kpi("a", 300)
    frame[LABEL] = frame[LABEL].astype(float)
    frame.loc[3, LABEL] = 2.0
    outcome = validator.validate(frame, "labels.csv")
    assert quarantined(outcome, "expect_column_values_to_be_in_set")[LABEL].tolist() == [2.0]


def test_short_kpi_is_quarantined_whole_with_its_statistics(validator):
    frame = pd.concat([kpi("long", 300), kpi("short", 40)], ignore_index=True)
    outcome = validator.validate(frame, "short.csv")
    q = outcome.quarantine
    assert set(q[KPI_ID]) == {"short"} and len(q) == 40
    assert (q["level"] == "kpi").all()
    assert q["reason"].iloc[0] == "n_points = 40; must be >= 200"
    assert outcome.summary()["kpis_quarantined"] == ["short"]


def test_irregular_and_gappy_kpis_are_quarantined(validator):
    regular = kpi("regular", 300)
    irregular = kpi("irregular", 300)
    irregular[TIMESTAMP] = irregular[TIMESTAMP] + pd.to_timedelta(np.random.default_rng(0).integers(1, 200, 300), "s")
    gappy = kpi("gappy", 600).iloc[::3]  # two of every three points absent
    outcome = validator.validate(pd.concat([regular, irregular, gappy], ignore_index=True), "grid.csv")
    reasons = outcome.quarantine.groupby(KPI_ID)["reason"].first()
    assert reasons["irregular"].startswith("on_grid_ratio")
    # an every-third-point series is regular at 15 minutes: it passes on its own grid
    assert "gappy" not in reasons
    holes = kpi("holes", 600).drop(index=range(100, 400))
    outcome = validator.validate(holes, "holes.csv")
    assert outcome.quarantine["reason"].iloc[0].startswith("gap_ratio = 0.5")


def test_unlabelled_frame_is_fine(validator):
    outcome = validator.validate(kpi("a", 300, labelled=False), "unlabelled.csv")
    assert outcome.quarantine.empty and LABEL not in outcome.valid.columns


def test_schema_failure_names_source_column_and_rule(validator):
    frame = kpi("a", 300)
    frame[VALUE] = frame[VALUE].astype(str)
    with pytest.raises(DataError) as err:
        validator.validate(frame, "s3://bucket/kpis.csv")
    msg = str(err.value)
    assert "s3://bucket/kpis.csv" in msg and "'value'" in msg and "expect_column_values_to_be_of_type" in msg


def test_naive_timestamps_fail_the_schema(validator):
    frame = kpi("a", 300)
    frame[TIMESTAMP] = frame[TIMESTAMP].dt.tz_localize(None)
    with pytest.raises(DataError, match="column 'timestamp'"):
        validator.validate(frame, "naive.parquet")


def test_stage_writes_valid_quarantine_report_and_data_docs(tmp_path, small_params):
    raw = tmp_path / "raw"
    raw.mkdir()
    frame = pd.concat([kpi("a", 300), kpi("tiny", 30)], ignore_index=True)
    frame.loc[0, VALUE] = np.nan
    frame.to_parquet(raw / "train.parquet")
    summary = validate.run(small_params, raw, tmp_path / "valid", tmp_path / "q", tmp_path / "report")
    assert len(pd.read_parquet(tmp_path / "valid" / "train.parquet")) == 299
    q = pd.read_parquet(tmp_path / "q" / "train.parquet")
    assert len(q) == 31 and set(q["level"]) == {"row", "kpi"}
    report = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert report == json.loads(json.dumps(summary, default=str))
    assert (tmp_path / "report" / "data_docs" / "index.html").exists()


def test_stage_fails_when_nothing_is_valid_and_keeps_the_previous_outputs(tmp_path, small_params):
    """#13.8: a run where every row fails raises, and the previous good outputs stay as they were."""
    raw = tmp_path / "raw"
    raw.mkdir()
    dirs = (raw, tmp_path / "valid", tmp_path / "q", tmp_path / "report")
    kpi("good", 300).to_parquet(raw / "train.parquet")
    validate.run(small_params, *dirs)
    before = {p.relative_to(tmp_path): p.read_bytes() for d in dirs[1:] for p in d.rglob("*") if p.is_file()}
    assert len(pd.read_parquet(tmp_path / "valid" / "train.parquet")) == 300
    assert (tmp_path / "report" / "metrics.json").exists()

    kpi("tiny", 30).to_parquet(raw / "train.parquet")
    with pytest.raises(DataError, match="at_least_one_valid_kpi") as err:
        validate.run(small_params, *dirs)
    after = {p.relative_to(tmp_path): p.read_bytes() for d in dirs[1:] for p in d.rglob("*") if p.is_file()}
    assert after == before  # nothing replaced, nothing lost
    assert "quarantined by rule" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
