"""Reviews become labels: the store (SQLite, and the local PostgreSQL), ``kpiguard review``, the label
rules (small exact cases) and their merge into ingest's train split."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from pipeline import cli
from pipeline.batch import daily
from pipeline.data import review_labels as L
from pipeline.errors import ReviewError
from pipeline.params import parse_params
from pipeline.review import service
from pipeline.review import store as store_mod
from pipeline.review.store import ReviewStore
from pipeline.stages import ingest
from tests.conftest import small_params_dict
from tests.scored_days import write_day
from tests.servers import database_url

DAY = "2026-01-28"


def at(hhmm: str, day: str = DAY) -> pd.Timestamp:
    return pd.Timestamp(f"{day}T{hhmm}:00Z")


def params_for(tmp_path: Path, store: str | None = None, **sections):
    raw = small_params_dict(score={"output": str(tmp_path / "scores"), "incident_gap": "30min"}, **sections)
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    raw["reviews"] = {**raw.get("reviews", {}), "store": store or f"sqlite:///{tmp_path / 'reviews.db'}"}
    return parse_params(raw)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    with database_url(request.param, tmp_path / 'reviews.db', "kpiguard_reviews") as url:
        yield url


@pytest.fixture
def scored(tmp_path, store_url):
    """Params and a scored day with two incidents: cpu at 10:00–10:10 (with mem from 10:05), cpu at 15:00."""
    params = params_for(tmp_path, store_url)
    write_day(Path(params.score.output), DAY, {"cpu": {at("10:00"): 9.0, at("10:05"): 9.0, at("10:10"): 9.0,
                                                       at("15:00"): 5.0},
                                               "mem": {at("10:05"): 6.0, at("10:10"): 6.0}})
    return params


def test_verdicts_misses_and_days_round_trip(scored):
    found = daily.day_incidents(scored, DAY)
    assert len(found) == 2
    big = next(i for i in found if set(i["kpis"]) == {"cpu", "mem"})
    small = next(i for i in found if i is not big)

    assert service.give_verdict(scored, DAY, big["id"], "confirmed", "ann")["kpis"] == ["cpu", "mem"]
    assert service.day_review(scored, DAY)["reviewed"] is False  # one incident of two answered
    service.give_verdict(scored, DAY, big["id"], "false_alarm", "bob", kpi="mem", note="deploy")  # changes mind
    service.give_verdict(scored, DAY, small["id"], "false_alarm", "ann")
    listed = service.day_review(scored, DAY)
    assert listed["reviewed"] is True  # every incident of the day has a verdict: the day counts as reviewed
    verdicts = {i["id"]: i["verdict"] for i in listed["incidents"]}
    assert verdicts == {big["id"]: "mixed", small["id"]: "false_alarm"}
    assert listed["incidents"][[i["id"] for i in listed["incidents"]].index(big["id"])]["verdicts"]["mem"]["note"] == "deploy"

    service.report_miss(scored, "disk", "2026-01-29T01:00:00Z", "2026-01-29T01:20:00Z", "ann")
    with ReviewStore(scored.reviews.store) as store:
        assert len(store.verdicts(latest=False)) == 4  # append-only: the changed verdict is kept
        latest = store.verdicts().set_index("kpi_id")
        assert latest.loc["mem", "verdict"] == "false_alarm" and latest.loc["mem", "reviewer"] == "bob"
        assert store.misses()["kpi_id"].tolist() == ["disk"]
        assert store.reviewed_days() == [DAY]
        assert store.schema_version == store_mod.SCHEMA_VERSION


def test_bad_reviews_are_clear_errors_and_store_nothing(scored):
    found = daily.day_incidents(scored, DAY)
    with pytest.raises(ReviewError, match="incident_known") as err:
        service.give_verdict(scored, DAY, "inc-20260128-0000-deadbeef", "confirmed", "ann")
    assert found[0]["id"] in str(err.value)  # the message lists the incidents that exist
    with pytest.raises(ReviewError, match="verdict_known"):
        service.give_verdict(scored, DAY, found[0]["id"], "maybe", "ann")
    with pytest.raises(ReviewError, match="kpi_in_incident"):
        service.give_verdict(scored, DAY, found[0]["id"], "confirmed", "ann", kpi="disk")
    with pytest.raises(ReviewError, match="reviewer_given"):
        service.give_verdict(scored, DAY, found[0]["id"], "confirmed", " ")
    with pytest.raises(ReviewError, match="time_range.*before start"):
        service.report_miss(scored, "cpu", "2026-01-28T10:00Z", "2026-01-28T09:00Z", "ann")
    with pytest.raises(ReviewError, match="time_range.*not a timestamp"):
        service.report_miss(scored, "cpu", "yesterday-ish", "2026-01-28T09:00Z", "ann")
    with ReviewStore(scored.reviews.store) as store:
        assert store.verdicts().empty and store.misses().empty and store.reviewed_days() == []


def test_a_store_from_a_newer_kpiguard_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'reviews.db'}"
    ReviewStore(url).close()
    ReviewStore(url).close()  # reopening migrates nothing and changes nothing
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.insert(store_mod.SCHEMA).values(version=store_mod.SCHEMA_VERSION + 1))
    engine.dispose()
    with pytest.raises(ReviewError, match="review_schema_version"):
        ReviewStore(url)


def test_an_unreachable_store_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ReviewError, match="review_store_reachable"):
        ReviewStore(f"sqlite:///{tmp_path / 'file' / 'reviews.db'}")


# -- the label rules -----------------------------------------------------------------------------
def spans_of(*rows) -> pd.DataFrame:
    verdicts = pd.DataFrame([r for r in rows if r[0] == "verdict"], columns=["_", "kpi_id", "start_at", "end_at", "verdict"])
    misses = pd.DataFrame([r[:4] for r in rows if r[0] == "miss"], columns=["_", "kpi_id", "start_at", "end_at"])
    days = [r[1] for r in rows if r[0] == "day"]
    for frame in (verdicts, misses):
        for c in ("start_at", "end_at"):
            frame[c] = pd.to_datetime(frame[c], utc=True)
    return L.label_spans(verdicts, misses, days)


def rows(kpis=("a", "b"), start=f"{DAY}T09:00Z", periods=24, freq="10min") -> pd.DataFrame:
    stamps = pd.date_range(start, periods=periods, freq=freq, tz="UTC")
    return pd.concat([pd.DataFrame({"kpi_id": k, "timestamp": stamps, "value": 1.0}) for k in kpis], ignore_index=True)


def labels_of(frame: pd.DataFrame, kpi: str) -> dict[str, int]:
    own = frame[frame["kpi_id"] == kpi]
    return {t.strftime("%H:%M"): int(v) for t, v in zip(own["timestamp"], own["label"])}


def test_confirmed_is_one_false_alarm_zero_and_unreviewed_rows_are_left_out():
    spans = spans_of(("verdict", "a", at("10:00"), at("10:20"), "confirmed"),
                     ("verdict", "b", at("11:00"), at("11:10"), "false_alarm"))
    merged, summary = L.apply_labels(rows(), spans)
    assert labels_of(merged, "a") == {"10:00": 1, "10:10": 1, "10:20": 1}  # both ends inclusive
    assert labels_of(merged, "b") == {"11:00": 0, "11:10": 0}
    assert summary == {"applied": True, "rows": 5, "anomalous_rows": 3, "normal_rows": 2, "unreviewed_rows": 43,
                       "kpis": 2, "events": 1}


def test_a_reviewed_day_is_normal_except_what_was_confirmed_or_reported():
    spans = spans_of(("day", DAY), ("verdict", "a", at("10:00"), at("10:00"), "confirmed"),
                     ("miss", "b", at("12:00"), at("12:30")), ("verdict", "b", at("12:10"), at("12:40"), "false_alarm"))
    merged, summary = L.apply_labels(rows(), spans)
    assert len(merged) == 48 and summary["unreviewed_rows"] == 0  # the whole day is reviewed, every KPI
    assert [t for t, v in labels_of(merged, "a").items() if v] == ["10:00"]
    # a reported miss is not undone by a dismissal that overlaps it; the dismissal's own tail stays 0
    assert [t for t, v in labels_of(merged, "b").items() if v] == ["12:00", "12:10", "12:20", "12:30"]
    assert labels_of(merged, "b")["12:40"] == 0 and summary["events"] == 2


def test_the_sources_own_labels_win():
    labelled = rows().assign(label=0)
    spans = spans_of(("miss", "a", at("09:00"), at("11:00")))
    merged, summary = L.apply_labels(labelled, spans)
    assert merged is labelled and summary["applied"] is False and "own labels" in summary["reason"]


def test_no_reviews_change_nothing():
    frame = rows()
    merged, summary = L.apply_labels(frame, L.empty_spans())
    assert merged is frame and summary["applied"] is False


def test_the_digest_names_the_verdicts():
    one = spans_of(("verdict", "a", at("10:00"), at("10:20"), "confirmed"))
    same = spans_of(("verdict", "a", at("10:00"), at("10:20"), "confirmed"))
    other = spans_of(("verdict", "a", at("10:00"), at("10:20"), "false_alarm"))
    assert L.digest(one) == L.digest(same) != L.digest(other)


def test_enough_events_follows_min_events_and_the_validation_fraction(tmp_path):
    assert L.enough_events(params_for(tmp_path)) == 250  # 50 validation events / 0.2
    assert L.enough_events(params_for(tmp_path, evaluate={"min_events": 3}, windows={"train_fraction": 0.5, "val_fraction": 0.25})) == 12


# -- export and ingest ---------------------------------------------------------------------------
def test_export_is_byte_identical_on_a_rerun_and_ingest_merges_it(scored, tmp_path):
    found = daily.day_incidents(scored, DAY)
    for inc in found:
        service.give_verdict(scored, DAY, inc["id"], "confirmed", "ann")
    first = service.export(scored)
    files = {p.name: p.read_bytes() for p in Path(scored.paths.labels).iterdir()}
    assert service.export(scored)["digest"] == first["digest"]
    assert {p.name: p.read_bytes() for p in Path(scored.paths.labels).iterdir()} == files  # DVC sees no change
    assert first["by_origin"] == {"confirmed": 3, "reviewed_day": 1}  # cpu twice, mem once; the day is answered

    train = rows(kpis=("cpu", "mem"), start=f"{DAY}T00:00Z", periods=288 * 2, freq="5min")  # the day and the next
    few = ingest.with_reviewed_labels(scored, train)
    assert few["applied"] is False and "label-free path" in few["reason"] and few["frame"] is train
    enough = params_for(tmp_path, scored.reviews.store, evaluate={"min_events": 1}, windows={"train_fraction": 0.4, "val_fraction": 0.5})
    merged = ingest.with_reviewed_labels(enough, train)
    assert merged["applied"] is True and merged["digest"] == first["digest"]
    assert merged["rows"] == 2 * 288 and merged["unreviewed_rows"] == 2 * 288  # the next day is not reviewed
    frame = merged["frame"]
    flagged = frame[frame["label"] == 1]
    assert sorted(flagged.groupby("kpi_id").size().items()) == [("cpu", 4), ("mem", 2)]


def test_review_cli(scored, tmp_path, capsys):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(scored.as_dict(), sort_keys=False))
    base = ["--params", str(params_file)]
    assert cli.main(["review", "list", "--date", DAY, *base]) == 0
    listing = capsys.readouterr().out
    first = listing.split("\n")[1].split()[0]
    assert listing.startswith(f"review {DAY}: 2 incidents") and first.startswith("inc-")
    assert cli.main(["review", "verdict", "--date", DAY, "--incident", first, "--verdict", "confirmed",
                     "--reviewer", "ann", *base]) == 0
    assert f"{first} → confirmed" in capsys.readouterr().out
    assert cli.main(["review", "miss", "--kpi", "cpu", "--start", "2026-01-28T20:00Z", "--end", "2026-01-28T20:30Z",
                     "--reviewer", "ann", *base]) == 0
    assert cli.main(["review", "done", "--date", DAY, "--reviewer", "ann", *base]) == 0
    assert cli.main(["review", "export", *base]) == 0
    assert "(2 confirmed, 1 missed, 1 reviewed_day)" in capsys.readouterr().out  # cpu and mem of the first
    # bad input: exit 2, one paragraph naming the rule, no traceback
    assert cli.main(["review", "verdict", "--date", DAY, "--incident", "inc-nope", "--verdict", "confirmed",
                     "--reviewer", "ann", *base]) == 2
    err = capsys.readouterr().err
    assert "rule 'incident_known'" in err and "Traceback" not in err
    assert cli.main(["review", "miss", "--kpi", "cpu", "--start", "2026-01-28T20:00Z", "--end", "2026-01-28",
                     "--reviewer", "ann", *base]) == 2
    assert "rule 'time_range'" in capsys.readouterr().err


def test_a_verdict_can_carry_the_anomalys_extent_from_the_cli(scored, tmp_path, capsys):
    """`review verdict --start/--end`: the label covers where the anomaly began, not where the alarm did; an
    extent that misses the incident's span is a clear error (exit 2, the rule named)."""
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(scored.as_dict(), sort_keys=False))
    base = ["--params", str(params_file)]
    incident = daily.day_incidents(scored, DAY)[0]
    kpi = incident["per_kpi"][0]
    began = pd.Timestamp(kpi["start"]) - pd.Timedelta("20min")  # before the first alarm
    assert cli.main(["review", "verdict", "--date", DAY, "--incident", incident["id"], "--verdict", "confirmed",
                     "--kpi", kpi["kpi_id"], "--start", began.isoformat(), "--end", kpi["end"],
                     "--reviewer", "ann", *base]) == 0
    with ReviewStore(scored.reviews.store) as store:
        stored = store.verdicts().iloc[0]
    assert pd.Timestamp(stored["start_at"]).tz_localize(None) == began.tz_convert("UTC").tz_localize(None)
    assert pd.Timestamp(stored["end_at"]).tz_localize(None) == pd.Timestamp(kpi["end"]).tz_convert("UTC").tz_localize(None)
    capsys.readouterr()
    far = pd.Timestamp(kpi["start"]) - pd.Timedelta("6h")
    assert cli.main(["review", "verdict", "--date", DAY, "--incident", incident["id"], "--verdict", "confirmed",
                     "--kpi", kpi["kpi_id"], "--start", far.isoformat(), "--end", (far + pd.Timedelta("5min")).isoformat(),
                     "--reviewer", "ann", *base]) == 2
    err = capsys.readouterr().err
    assert "rule 'extent_overlaps_incident'" in err and "Traceback" not in err
