"""Scoring refuses to mislead (pipeline/batch/guards.py): KPIs the model never saw are an error unless
allowed, a day far from the training data warns, and a day flagging far more than the alarm budget
warns (or, past score.max_alarm_fraction, fails once its partition is written). The bundle is a small
real one (tests/bundles.py: kpi_0 and kpi_1, fitted on 2026-01-01 00:00 .. 2026-01-05 03:55 at 5 min)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from models.frame import KPI_ID, TIMESTAMP, VALUE
from pipeline import cli, summary
from pipeline.batch import guards, score
from pipeline.errors import DataError
from pipeline.params import parse_params
from pipeline.serving.bundle import Bundle, BundleError, BundleModel
from tests.bundles import make_bundle
from tests.conftest import small_params_dict

INFO = {"uri": "models:/kpiguard@champion", "model": "kpiguard", "version": "7"}
TRAINED_END = pd.Timestamp("2026-01-05 03:55", tz="UTC")  # row 1199 of tests/detector_data.py's 5-minute KPIs


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("guards"), "diff_z")[0]


def model_of(bundle_dir):
    return BundleModel(Bundle.load(bundle_dir)), dict(INFO)


def params_for(tmp_path, **score_params):
    raw = small_params_dict()
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    raw["score"].update(score_params)
    return raw


def kpi_rows(day: str, kpis=("kpi_0", "kpi_1"), noise: float = 0.25) -> pd.DataFrame:
    """The day and its 3-day context of each KPI: its trained level and daily cycle plus ``noise``."""
    ts = pd.date_range(pd.Timestamp(day, tz="UTC") - pd.Timedelta("3D"), periods=4 * 288, freq="5min")
    rng = np.random.default_rng(1)
    parts = []
    for k, kpi in enumerate(kpis):
        t = np.arange(len(ts))
        value = 10 + 5 * k + (2 + 0.5 * k) * np.sin(2 * np.pi * t / 288 + k) + noise * rng.standard_normal(len(ts))
        parts.append(pd.DataFrame({KPI_ID: kpi, TIMESTAMP: ts, VALUE: value}))
    return pd.concat(parts, ignore_index=True)


def score_day(tmp_path, bundle_dir, day: str, rows: pd.DataFrame, **score_params):
    rows.to_csv(tmp_path / "in.csv", index=False)
    p = parse_params(params_for(tmp_path, **score_params))
    return score.run(p, f"csv:{tmp_path / 'in.csv'}", *score.day_range(day), str(tmp_path / "scores"), "unused",
                     model=model_of(bundle_dir))


# -- the bundle records what its model was fitted on ------------------------------------------------
def test_a_bundle_records_its_training_range_and_an_old_one_still_loads(bundle_dir, tmp_path):
    assert Bundle.load(bundle_dir).training_range == (pd.Timestamp("2026-01-01", tz="UTC"), TRAINED_END)
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    old = tmp_path / "old"
    shutil.copytree(bundle_dir, old)
    (old / "bundle.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "training_range"}))
    assert Bundle.load(old).training_range is None
    (old / "bundle.json").write_text(json.dumps({**meta, "training_range": {"start": "soon", "end": meta["training_range"]["end"]}}))
    with pytest.raises(BundleError, match="training_range.start") as err:
        Bundle.load(old)
    assert err.value.file == "bundle.json"


def test_register_records_the_range_of_the_train_and_validation_splits(tmp_path):
    from pipeline.stages import register

    windows = tmp_path / "windows"
    windows.mkdir()
    for split, first, last in (("train", "2026-01-02 00:00", "2026-01-10 00:00"), ("val", "2026-01-10 00:05", "2026-01-12 00:00"),
                               ("test", "2026-01-12 00:05", "2026-02-01 00:00")):  # the test split is held out
        pd.DataFrame({KPI_ID: ["a", "b"], TIMESTAMP: pd.to_datetime([last, first], utc=True)}).to_parquet(
            windows / f"{split}.parquet")
    p = parse_params({"paths": {"windows": str(windows)}})
    assert register.training_range(p) == {"start": "2026-01-02T00:00:00+00:00", "end": "2026-01-12T00:00:00+00:00"}


# -- every day's _meta.json ---------------------------------------------------------------------------
def test_a_day_inside_the_training_range_writes_every_guard_key(bundle_dir, tmp_path):
    result = score_day(tmp_path, bundle_dir, "2026-01-06", kpi_rows("2026-01-06"))
    meta = score.read_meta(str(tmp_path / "scores"), "2026-01-06")
    assert meta["training_range"] == {"start": "2026-01-01T00:00:00+00:00", "end": TRAINED_END.isoformat(),
                                      "outside": False, "days_outside": round((pd.Timestamp("2026-01-06", tz="UTC")
                                                                               - TRAINED_END) / pd.Timedelta("1D"), 2)}
    check = meta["alarm_check"]
    assert check["alarm_fraction"] == pytest.approx(meta["anomalies"] / meta["rows"])
    assert check["budget_fraction"] == pytest.approx(2.0 / 288)  # evaluate.alarm_budget over 288 points a day
    assert check["ratio"] == pytest.approx(check["alarm_fraction"] / check["budget_fraction"])
    assert check["factor"] == 10 and check["mismatch"] is (check["ratio"] > 10)
    assert meta["untrained_kpis"] == []
    assert result["partitions"][0]["training_range"] == meta["training_range"]


def test_an_untrained_kpi_is_an_error_naming_it_the_model_and_the_way_out(bundle_dir, tmp_path):
    rows = kpi_rows("2026-01-06", kpis=("kpi_0", "kpi_1", "checkout_latency"))
    with pytest.raises(DataError) as err:
        score_day(tmp_path, bundle_dir, "2026-01-06", rows)
    text = str(err.value)
    assert err.value.rule == "kpi_trained" and "checkout_latency" in text and "kpi_0" not in text
    assert "model kpiguard version 7" in text and "-S data.train=csv:" in text
    assert "score.allow_untrained_kpis=true" in text
    assert not (tmp_path / "scores").exists()  # refused before anything was written

    result = score_day(tmp_path, bundle_dir, "2026-01-06", rows, allow_untrained_kpis=True)
    assert score.read_meta(str(tmp_path / "scores"), "2026-01-06")["untrained_kpis"] == ["checkout_latency"]
    assert result["partitions"][0]["kpis"] == 3
    assert "1 KPI(s) without training statistics scored (score.allow_untrained_kpis): checkout_latency" \
        in summary.score(result)


# -- a day far from the training data, through the CLI -------------------------------------------------
def test_a_day_far_outside_the_training_range_warns_and_past_the_alarm_limit_exits_2(bundle_dir, tmp_path,
                                                                                    monkeypatch, capsys):
    """Ten months after the model's data ended, the KPIs are forty times noisier: the CLI says the day is
    outside the training range and flags far more than the alarm budget; with score.max_alarm_fraction
    the partition is still written, and the exit code is 2."""
    day = "2026-11-28"
    kpi_rows(day, noise=10.0).to_csv(tmp_path / "in.csv", index=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params_for(tmp_path)))
    monkeypatch.setattr(score, "load_model", lambda _params, _uri: model_of(bundle_dir))
    argv = ["score", "--date", day, "--input", f"csv:{tmp_path / 'in.csv'}", "--output", str(tmp_path / "scores"),
            "--params", str(tmp_path / "params.yaml")]

    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    meta = score.read_meta(str(tmp_path / "scores"), day)
    days = round((pd.Timestamp(day, tz="UTC") - TRAINED_END) / pd.Timedelta("1D"), 2)
    assert meta["training_range"]["outside"] is True and meta["training_range"]["days_outside"] == days
    assert f"score: warning: {day} is {days:g} days outside the model's training range (2026-01-01 – 2026-01-05)" in out
    fraction = meta["alarm_check"]["alarm_fraction"]
    assert meta["alarm_check"]["mismatch"] is True and fraction > 0.2
    assert f"score: warning: {day} flagged {fraction:.1%} of its points, " in out and "alarm_budget" in out

    code = cli.main([*argv, "-S", "score.max_alarm_fraction=0.2"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("kpiguard score: error:")]
    assert "max_alarm_fraction" in line and day in line and f"({fraction:.1%})" in line and "0.2" in line
    assert score.read_meta(str(tmp_path / "scores"), day)["scored_at"] >= meta["scored_at"]  # written again


def test_the_scoring_dag_runs_the_same_guards(bundle_dir, tmp_path, monkeypatch):
    """ingest → validate → score_shard ×3 (one of them empty) → write: the shards' facts merge into the
    day's guards, an untrained KPI fails its shard, and past max_alarm_fraction the write step fails with
    the partition written. The registry lookup is replaced by the bundle; the rest is the real code."""
    from pipeline.batch import daily

    day = "2026-11-28"
    monkeypatch.setattr(score, "load_model", lambda _params, _uri: model_of(bundle_dir))
    kpi_rows(day, noise=10.0).to_csv(tmp_path / "in.csv", index=False)
    p = parse_params(params_for(tmp_path, input=f"csv:{tmp_path / 'in.csv'}", output=str(tmp_path / "scores"),
                                staging=str(tmp_path / "staging"), max_alarm_fraction=0.2))
    daily.ingest(p, day)
    daily.validate(p, day)
    shards = [daily.score_shard(p, day, i, 3) for i in range(3)]
    assert sorted(s["kpis"] for s in shards) == [0, 1, 1]
    with pytest.raises(DataError, match=f"rule 'max_alarm_fraction'.*{day}"):
        daily.write(p, day, 3)
    meta = score.read_meta(str(tmp_path / "scores"), day)
    assert meta["training_range"]["outside"] is True and meta["alarm_check"]["mismatch"] is True
    assert meta["alarm_check"]["budget_fraction"] == pytest.approx(2.0 / 288) and meta["untrained_kpis"] == []

    kpi_rows(day, kpis=("kpi_0", "kpi_1", "new_kpi")).to_csv(tmp_path / "in.csv", index=False)
    daily.ingest(p, day)
    daily.validate(p, day)
    with pytest.raises(DataError, match="rule 'kpi_trained'.*new_kpi"):
        for i in range(3):
            daily.score_shard(p, day, i, 3)


# -- the pure pieces --------------------------------------------------------------------------------
RANGE = (pd.Timestamp("2026-01-01", tz="UTC"), pd.Timestamp("2026-01-20 12:00", tz="UTC"))


@pytest.mark.parametrize("day, outside, days", [
    ("2025-12-30", True, 2.0),      # before its start
    ("2026-01-01", False, 0.0),
    ("2026-01-21", False, 0.5),     # after its end, within the 7-day tolerance
    ("2026-01-27", False, 6.5),
    ("2026-01-28", True, 7.5),
])
def test_training_range_check(day, outside, days):
    p = parse_params({})
    got = guards.training_range_check(p, pd.Timestamp(day, tz="UTC"), guards.Served(RANGE))
    assert got == {"start": RANGE[0].isoformat(), "end": RANGE[1].isoformat(), "outside": outside,
                   "days_outside": days}


def test_an_old_bundle_has_an_unknown_range_never_outside():
    assert guards.training_range_check(parse_params({}), pd.Timestamp("2030-01-01", tz="UTC"), guards.Served()) == {
        "start": None, "end": None, "outside": False, "days_outside": None}


def test_alarm_check_averages_the_budget_over_the_scored_kpis():
    rows = pd.DataFrame({KPI_ID: ["a"] * 6 + ["b"] * 4})
    flagged = pd.Series([True] * 3 + [False] * 7)
    facts = guards.Served(None, {"a": 300.0, "b": 60.0, "c": 1.0})  # c was not scored that day
    p = parse_params({"evaluate": {"alarm_budget": 4.0}, "score": {"mismatch_factor": 20}})
    got = guards.alarm_check(p, rows, flagged, facts)
    budget = (4.0 / 288 + 4.0 / 1440) / 2
    assert got == {"alarm_fraction": 0.3, "budget_fraction": pytest.approx(budget), "ratio": pytest.approx(0.3 / budget),
                   "factor": 20.0, "mismatch": True}
    daily = guards.alarm_check(p, rows.iloc[:6], flagged.iloc[:6], guards.Served(None, {"a": 86400.0}))
    assert daily["budget_fraction"] == 1.0 and daily["mismatch"] is False  # a daily KPI: at most every point
    empty = guards.alarm_check(p, rows.iloc[:0], flagged.iloc[:0], facts)
    assert empty["alarm_fraction"] is None and empty["ratio"] is None and empty["mismatch"] is False


def test_served_facts_travel_through_the_dags_staging_and_merge():
    one = guards.Served(RANGE, {"a": 300.0}, ("x",))
    two = guards.Served(RANGE, {"b": 60.0}, ())
    again = guards.Served.from_dict(json.loads(json.dumps(one.to_dict())))
    assert again == one
    assert guards.Served.merge([two, again, guards.Served()]) == guards.Served(RANGE, {"b": 60.0, "a": 300.0}, ("x",))


def test_max_alarm_fraction_is_off_by_default_and_names_each_day_over_it():
    parts = [{"date": d, "rows": 100, "anomalies": n, "path": f"out/date={d}", "alarm_check": {"alarm_fraction": n / 100}}
             for d, n in (("2026-01-01", 5), ("2026-01-02", 40))]
    guards.enforce_max_alarm_fraction(parse_params({}), parts, "csv:in.csv")  # null: off
    with pytest.raises(DataError) as err:
        guards.enforce_max_alarm_fraction(parse_params({"score": {"max_alarm_fraction": 0.2}}), parts, "csv:in.csv")
    assert err.value.rule == "max_alarm_fraction" and "2026-01-02: 40 of 100 scored points flagged (40.0%)" in str(err.value)
    assert "2026-01-01" not in str(err.value) and "out/date=2026-01-02" in str(err.value)
