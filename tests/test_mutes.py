"""Mute rules for repeated false alarms (pipeline/data/review_mutes.py): the pure rules in small exact cases,
suggestions and rules in the review store (SQLite and the local PostgreSQL), its migration from schema
version 1, and a rule's effect on the daily report, the alerts and ``kpiguard review``."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from pipeline import cli
from pipeline.batch import daily
from pipeline.errors import ReviewError
from pipeline.params import parse_params
from pipeline.data import review_mutes as M
from pipeline.review import service
from pipeline.review import store as store_mod
from pipeline.review.store import ReviewStore
from tests.conftest import small_params_dict
from tests.scored_days import write_day
from tests.servers import database_url, http_receiver


def at(day: str, hhmm: str) -> pd.Timestamp:
    return pd.Timestamp(f"{day}T{hhmm}:00Z")


def kpi_incident(start: str, end: str, severity: float = 2.0, kpi: str = "cpu", observed=250.0, expected=100.0,
                 day: str = "2026-01-28") -> dict:
    return {"kpi_id": kpi, "start": at(day, start).isoformat(),
            "end": (at(day, end) + (pd.Timedelta(days=1) if end < start else pd.Timedelta(0))).isoformat(),
            "peak_at": at(day, start).isoformat(), "severity": severity, "observed": observed, "expected": expected}


def rule(start: str, end: str, max_severity: float = 2.5, direction: str = "up", kpi: str = "cpu", rule_id: int = 1):
    return {"id": rule_id, "kpi_id": kpi, "direction": direction, "from": start, "to": end,
            "max_severity": max_severity}


# -- the pure rules ------------------------------------------------------------------------------------------
def test_direction_is_the_peak_against_the_expected_value():
    assert M.direction_of(kpi_incident("02:00", "02:10")) == "up"
    assert M.direction_of(kpi_incident("02:00", "02:10", observed=50.0)) == "down"
    assert M.direction_of(kpi_incident("02:00", "02:10", expected=None)) == "any"


def test_a_rule_mutes_its_kpi_direction_time_of_day_and_severity_only():
    r = rule("02:00", "03:00")
    assert M.mute_matches(r, kpi_incident("02:00", "03:00"))  # both ends inclusive
    assert M.mute_matches(r, kpi_incident("02:10", "02:50", severity=2.5))  # at the bound
    assert not M.mute_matches(r, kpi_incident("02:10", "02:50", severity=2.51))
    assert not M.mute_matches(r, kpi_incident("01:55", "02:30"))  # starts before the window
    assert not M.mute_matches(r, kpi_incident("02:30", "03:05"))
    assert not M.mute_matches(r, kpi_incident("02:10", "02:50", kpi="mem"))
    assert not M.mute_matches(r, kpi_incident("02:10", "02:50", observed=50.0))  # down, the rule is up
    assert not M.mute_matches(r, kpi_incident("02:10", "02:50", expected=None))  # unknown direction: only "any"
    assert M.mute_matches(rule("02:00", "03:00", direction="any"), kpi_incident("02:10", "02:50", expected=None))
    assert M.mute_matches(rule("02:00", "03:00", direction="any"), kpi_incident("02:10", "02:50", observed=50.0))
    assert M.mute_matches(r, kpi_incident("02:10", "02:50", day="2026-03-15"))  # any day


def test_a_window_past_midnight():
    r = rule("23:30", "00:30")
    assert M.mute_matches(r, kpi_incident("23:40", "00:20"))  # the span crosses midnight too
    assert M.mute_matches(r, kpi_incident("00:00", "00:30"))
    assert M.mute_matches(r, kpi_incident("23:30", "23:59"))
    assert not M.mute_matches(r, kpi_incident("12:00", "12:10"))
    assert not M.mute_matches(r, kpi_incident("00:20", "00:40"))
    whole = rule("00:00", "24:00")
    assert M.mute_matches(whole, kpi_incident("23:00", "01:00")) and M.mute_matches(whole, kpi_incident("07:00", "07:00"))
    assert not M.mute_matches(rule("00:00", "23:59"), kpi_incident("23:50", "00:05"))


def test_pattern_windows_are_widened_and_wrap():
    assert M.window_of(at("2026-01-28", "02:00"), at("2026-01-28", "02:10"), "30min") == (90, 160)
    assert M.window_of(at("2026-01-28", "23:50"), pd.Timestamp("2026-01-29T00:05:30Z"), "30min") == (23 * 60 + 20, 36)
    assert M.window_of(at("2026-01-28", "00:00"), at("2026-01-28", "23:00"), "1h") == (0, 1440)  # the whole day


def test_an_incident_is_muted_only_when_every_kpi_is():
    lone = {"id": "a", "per_kpi": [kpi_incident("02:10", "02:20")]}
    both = {"id": "b", "per_kpi": [kpi_incident("02:10", "02:20"), kpi_incident("02:10", "02:20", kpi="mem")]}
    late = {"id": "c", "per_kpi": [kpi_incident("05:00", "05:10")]}
    kept, muted = M.apply_mutes([lone, both, late], [rule("02:00", "03:00", rule_id=7)])
    assert [i["id"] for i in kept] == ["b", "c"] and kept[0] is both  # kept unchanged: it alerts on both KPIs
    assert [(i["id"], [r["id"] for r in i["muted_by"]]) for i in muted] == [("a", [7])]
    assert M.apply_mutes([lone], []) == ([lone], [])


def test_malformed_rules_name_the_field_and_the_rule():
    for args, rule_name, field in [(("cpu", "sideways", "02:00", "03:00", 2), "mute_direction_known", "direction"),
                                   (("cpu", "up", "25:00", "03:00", 2), "mute_time_of_day", "from '25:00'"),
                                   (("cpu", "up", "02:00", "3pm", 2), "mute_time_of_day", "to '3pm'"),
                                   (("cpu", "up", "24:00", "03:00", 2), "mute_time_of_day", "from '24:00'"),
                                   (("cpu", "up", "02:00", "03:00", -1), "mute_severity_bound", "max_severity -1"),
                                   (("cpu", "up", "02:00", "03:00", "lots"), "mute_severity_bound", "max_severity"),
                                   ((" ", "up", "02:00", "03:00", 2), "kpi_given", "KPI")]:
        with pytest.raises(ReviewError, match=rule_name) as err:
            M.checked_rule(*args)
        assert field in str(err.value)
    assert M.checked_rule("cpu", "up", "2:00", "24:00", "2.5") == \
        {"kpi_id": "cpu", "direction": "up", "from": "02:00", "to": "00:00", "max_severity": 2.5}


# -- the store: suggestions and rules -------------------------------------------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    with database_url(request.param, tmp_path / "reviews.db", "kpiguard_mutes") as url:
        yield url


def dismiss(store: ReviewStore, incident_id: str, day: str, start: str, end: str, verdict: str = "false_alarm",
            **kpi) -> None:
    k = kpi_incident(start, end, day=day, **kpi)
    store.add_verdict({"id": incident_id, "start": k["start"], "per_kpi": [k]}, verdict, "ann")


def suggested(store: ReviewStore, tolerance: str = "30min") -> list[dict]:
    return M.suggestions(store.verdicts(), store.mute_rules(), tolerance)


def test_two_dismissals_on_different_days_with_overlapping_windows_suggest_a_rule(store_url):
    with ReviewStore(store_url) as store:
        dismiss(store, "inc-1", "2026-01-28", "02:00", "02:10", severity=2.0)
        assert suggested(store) == []  # one dismissal is not a pattern
        dismiss(store, "inc-2", "2026-01-28", "02:40", "02:45", severity=2.2)
        assert suggested(store) == []  # two on one day: not a pattern either
        dismiss(store, "inc-3", "2026-01-29", "02:30", "02:42", severity=2.4837)
        (s,) = suggested(store)
        assert {k: s[k] for k in ("kpi_id", "direction", "from", "to", "max_severity", "days", "incidents")} == {
            "kpi_id": "cpu", "direction": "up", "from": "01:30", "to": "03:15", "max_severity": 2.49,
            "days": ["2026-01-28", "2026-01-29"], "incidents": ["inc-1", "inc-2", "inc-3"]}
        assert s["command"] == ("kpiguard review mute --kpi cpu --direction up --from 01:30 --to 03:15 "
                                "--max-severity 2.49 --incidents inc-1,inc-2,inc-3")
        assert suggested(store, "0min")[0]["incidents"] == ["inc-2", "inc-3"]  # 02:00–02:10 no longer overlaps


def test_no_suggestion_across_directions_distant_times_or_a_confirmed_verdict(store_url):
    with ReviewStore(store_url) as store:
        dismiss(store, "inc-1", "2026-01-28", "02:00", "02:10")
        dismiss(store, "inc-2", "2026-01-29", "02:00", "02:10", observed=50.0)  # down
        dismiss(store, "inc-3", "2026-01-30", "05:00", "05:10")  # another time of day
        assert suggested(store) == []
        dismiss(store, "inc-4", "2026-01-31", "02:05", "02:15")
        assert [s["incidents"] for s in suggested(store)] == [["inc-1", "inc-4"]]
        dismiss(store, "inc-4", "2026-01-31", "02:05", "02:15", verdict="confirmed")  # changed their mind
        assert suggested(store) == []


def test_dismissals_around_midnight_suggest_a_window_past_it(store_url):
    with ReviewStore(store_url) as store:
        dismiss(store, "inc-1", "2026-01-28", "23:50", "23:55")
        dismiss(store, "inc-2", "2026-01-30", "00:05", "00:10")
        (s,) = suggested(store)
        assert (s["from"], s["to"], s["days"]) == ("23:20", "00:40", ["2026-01-28", "2026-01-30"])
        assert M.mute_matches(s, kpi_incident("23:45", "00:15"))


def test_rules_are_confirmed_listed_and_lifted_atomically(store_url):
    with ReviewStore(store_url) as store:
        with pytest.raises(ReviewError, match="mute_kpi_dismissed"):
            store.add_mute("cpu", "up", "02:00", "03:00", 2.5, "ann")  # nothing was dismissed on cpu
        dismiss(store, "inc-1", "2026-01-28", "02:00", "02:10")
        dismiss(store, "inc-2", "2026-01-29", "02:20", "02:30")
        with pytest.raises(ReviewError, match="mute_incidents_known.*inc-9"):
            store.add_mute("cpu", "up", "02:00", "03:00", 2.5, "ann", incidents=["inc-1", "inc-9"])
        with pytest.raises(ReviewError, match="mute_time_of_day"):
            store.add_mute("cpu", "up", "02:00", "03:60", 2.5, "ann")
        assert store.mute_rules(active=False) == []  # nothing refused was written
        made = store.add_mute("cpu", "up", "01:30", "03:00", 2.5, "ann", note="nightly backup",
                              incidents=["inc-1", "inc-2"])
        assert {k: made[k] for k in ("kpi_id", "direction", "from", "to", "max_severity", "reviewer", "note",
                                     "incidents", "disabled_at")} == {
            "kpi_id": "cpu", "direction": "up", "from": "01:30", "to": "03:00", "max_severity": 2.5, "reviewer": "ann",
            "note": "nightly backup", "incidents": ["inc-1", "inc-2"], "disabled_at": None}
        assert suggested(store) == []  # the rule already mutes what was suggested
        with pytest.raises(ReviewError, match="mute_rule_new"):
            store.add_mute("cpu", "up", "01:30", "03:00", 2.5, "bob")
        assert store.mute_rules() == [made]
        lifted = store.disable_mute(made["id"], "bob")
        assert lifted["disabled_by"] == "bob" and lifted["disabled_at"] is not None
        assert store.mute_rules() == [] and store.mute_rules(active=False) == [lifted]  # kept, disabled
        with pytest.raises(ReviewError, match="mute_rule_active"):
            store.disable_mute(made["id"], "bob")
        with pytest.raises(ReviewError, match="mute_rule_known"):
            store.disable_mute(999, "bob")
        assert len(suggested(store)) == 1  # suggested again


def test_a_version_1_store_migrates_in_place(store_url):
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:  # the store as kpiguard's schema version 1 wrote it
        store_mod.SCHEMA.create(conn)
        store_mod.MIGRATIONS[1](conn)
        conn.execute(sa.insert(store_mod.SCHEMA).values(version=1))
        conn.execute(sa.text("INSERT INTO kpiguard_review_verdicts (incident_id, day, kpi_id, start_at, end_at, "
                             "verdict, reviewer, created_at) VALUES ('inc-old', '2026-01-27', 'cpu', "
                             "'2026-01-27 02:00:00', '2026-01-27 02:10:00', 'false_alarm', 'ann', '2026-01-27 09:00:00')"))
        columns = {c["name"] for c in sa.inspect(conn).get_columns("kpiguard_review_verdicts")}
    engine.dispose()
    assert "direction" not in columns
    with ReviewStore(store_url) as store:
        assert store.schema_version == 2
        old = store.verdicts()
        assert old["incident_id"].tolist() == ["inc-old"] and old["direction"].isna().all()
        dismiss(store, "inc-new", "2026-01-28", "02:00", "02:10")
        assert suggested(store) == []  # the old row has no pattern: it never makes one
        dismiss(store, "inc-newer", "2026-01-29", "02:00", "02:10")
        assert suggested(store)[0]["incidents"] == ["inc-new", "inc-newer"]
        assert store.add_mute("cpu", "up", "01:30", "02:40", 2.0, "ann")["id"] == 1
    with ReviewStore(store_url) as store:  # reopening migrates nothing
        assert store.schema_version == 2 and len(store.mute_rules()) == 1


# -- a rule at work: the report, the alerts, review list, the CLI ----------------------------------------
DAYS = ("2026-01-28", "2026-01-29", "2026-01-30")


@pytest.fixture
def nightly(tmp_path, store_url):
    """Params and three scored days with cpu flagged around 02:00 (severity 2, 2.5, 2.5); the third day also
    at 15:00 and, on mem, at 08:00 with severity 4."""
    raw = small_params_dict(score={"output": str(tmp_path / "scores"), "incident_gap": "30min",
                                   "reports": str(tmp_path / "reports")})
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    raw["reviews"] = {**raw["reviews"], "store": store_url}
    write_day(tmp_path / "scores", DAYS[0], {"cpu": {at(DAYS[0], "02:00"): 6.0, at(DAYS[0], "02:05"): 6.0}})
    write_day(tmp_path / "scores", DAYS[1], {"cpu": {at(DAYS[1], "02:20"): 7.5}})
    write_day(tmp_path / "scores", DAYS[2], {"cpu": {at(DAYS[2], "02:10"): 7.5, at(DAYS[2], "15:00"): 6.0},
                                             "mem": {at(DAYS[2], "08:00"): 12.0}})
    return raw


def only(found: list[dict], hhmm: str) -> dict:
    (incident,) = [i for i in found if i["start"][11:16] == hhmm]
    return incident


def test_a_confirmed_rule_mutes_the_report_and_the_alerts_until_lifted(nightly, tmp_path, capsys):
    with http_receiver() as hook:
        raw = {**nightly, "alerts": {**nightly["alerts"], "ledger": f"sqlite:///{tmp_path / 'ledger.db'}",
                                     "webhook": {"url": hook.url}, "retry_backoff_s": 0.0}}
        params = parse_params(raw)
        params_file = tmp_path / "params.yaml"
        params_file.write_text(yaml.safe_dump(params.as_dict(), sort_keys=False))
        base = ["--params", str(params_file)]

        for day, hhmm in ((DAYS[0], "02:00"), (DAYS[1], "02:20")):
            found = daily.day_incidents(params, day)
            assert cli.main(["review", "verdict", "--date", day, "--incident", only(found, hhmm)["id"],
                             "--verdict", "false_alarm", "--reviewer", "ann", *base]) == 0
        capsys.readouterr()
        assert cli.main(["review", "mutes", *base]) == 0
        listing = capsys.readouterr().out
        assert listing.startswith("mute suggestions: 1 ") and "mute rules: 0" in listing
        suggested = next(line.strip() for line in listing.splitlines() if line.strip().startswith("kpiguard review mute "))
        assert "--from 01:30 --to 02:50 --max-severity 2.5" in suggested

        assert cli.main([*shlex.split(suggested)[1:], "--reviewer", "ann", "--note", "nightly backup", *base]) == 0
        assert "review: mute rule #1 cpu up 01:30–02:50 UTC, severity ≤ 2.5 (ann) confirmed" in capsys.readouterr().out

        third = daily.day_incidents(params, DAYS[2])
        muted, afternoon, mem = only(third, "02:10"), only(third, "15:00"), only(third, "08:00")
        report = daily.build_day_report(params, DAYS[2])
        assert [i["id"] for i in report["muted_incidents"]] == [muted["id"]]
        assert report["muted_incidents"][0]["muted_by"][0]["id"] == 1
        assert {i["id"] for i in report["incidents"]} == {afternoon["id"], mem["id"]} and report["incident_count"] == 2
        assert json.loads(Path(report["json"]).read_text())["muted_incidents"][0]["id"] == muted["id"]
        page = Path(report["html"]).read_text()
        folded = page.split('<details class="muted">')[1].split("</details>")[0]
        assert f'data-incident="{muted["id"]}"' in folded and "#1 cpu up 01:30–02:50 UTC" in folded
        assert f'data-incident="{muted["id"]}"' not in page.split('<table class="incidents">')[1].split("</table>")[0]

        pushed = daily.push_day(params, DAYS[2])
        assert pushed["muted"] == [muted["id"]] and pushed["incidents"] == 2
        assert {p["json"]["incident"]["id"] for p in hook.posts} == {afternoon["id"], mem["id"]}
        interval = daily.alert(params, f"{DAYS[2]}T02:10:00Z/{DAYS[2]}T02:15:00Z")  # a sub-daily run's window
        assert muted["id"] in interval["muted"] and interval["incidents"] == 0
        assert {p["json"]["incident"]["id"] for p in hook.posts} == {afternoon["id"], mem["id"]}

        assert cli.main(["review", "list", "--date", DAYS[2], *base]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert [line for line in lines if "muted by rule #1" in line] == [line for line in lines if muted["id"] in line]

        assert cli.main(["review", "unmute", "--rule", "1", "--reviewer", "bob", *base]) == 0
        assert "lifted by bob" in capsys.readouterr().out
        again = daily.build_day_report(params, DAYS[2])
        assert again["muted_incidents"] == [] and muted["id"] in {i["id"] for i in again["incidents"]}
        assert '<details class="muted">' not in Path(again["html"]).read_text()
        assert daily.push_day(params, DAYS[2])["sinks"]["webhook"]["incidents"]["sent"] == [muted["id"]]

        assert cli.main(["review", "mutes", "--all", *base]) == 0
        assert ", lifted " in capsys.readouterr().out and cli.main(["review", "mutes", "--json", *base]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["rules"] == [] and len(data["suggestions"]) == 1


def test_mute_cli_errors_exit_2_with_one_paragraph(nightly, tmp_path, capsys):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(parse_params(nightly).as_dict(), sort_keys=False))
    base = ["--params", str(params_file)]
    cases = [(["--kpi", "cpu", "--direction", "up", "--from", "02:00", "--to", "03:00", "--max-severity", "2"],
              "mute_kpi_dismissed"),
             (["--kpi", "cpu", "--direction", "upward", "--from", "02:00", "--to", "03:00", "--max-severity", "2"],
              "mute_direction_known"),
             (["--kpi", "cpu", "--direction", "up", "--from", "2am", "--to", "03:00", "--max-severity", "2"],
              "mute_time_of_day"),
             (["--kpi", "cpu", "--direction", "up", "--from", "02:00", "--to", "03:00", "--max-severity", "-2"],
              "mute_severity_bound")]
    for args, rule_name in cases:
        assert cli.main(["review", "mute", *args, "--reviewer", "ann", *base]) == 2
        err = capsys.readouterr().err
        assert f"rule '{rule_name}'" in err and "Traceback" not in err and err.count("\n") == 1
    assert cli.main(["review", "unmute", "--rule", "7", "--reviewer", "ann", *base]) == 2
    assert "rule 'mute_rule_known'" in capsys.readouterr().err


def test_without_a_review_store_nothing_is_muted_and_none_is_created(tmp_path):
    raw = small_params_dict(score={"output": str(tmp_path / "scores"), "reports": str(tmp_path / "reports")})
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    raw["reviews"] = {**raw["reviews"], "store": f"sqlite:///{tmp_path / 'reviews.db'}"}
    params = parse_params(raw)
    write_day(tmp_path / "scores", DAYS[0], {"cpu": {at(DAYS[0], "02:00"): 6.0}})
    report = daily.build_day_report(params, DAYS[0])
    assert report["incident_count"] == 1 and report["muted_incidents"] == [] and report["mute_rules"] == 0
    assert daily.push_day(params, DAYS[0])["muted"] == []
    assert not (tmp_path / "reviews.db").exists()


def test_an_unreadable_review_store_mutes_nothing_and_says_so(tmp_path):
    raw = small_params_dict(score={"output": str(tmp_path / "scores"), "reports": str(tmp_path / "reports")})
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    raw["reviews"] = {**raw["reviews"], "store": "postgresql+psycopg2://kpiguard@127.0.0.1:1/none?connect_timeout=2"}
    params = parse_params(raw)
    write_day(tmp_path / "scores", DAYS[0], {"cpu": {at(DAYS[0], "02:00"): 6.0}})
    report = daily.build_day_report(params, DAYS[0])
    assert report["incident_count"] == 1 and "review_store_reachable" in report["mutes_unavailable"]
    assert "Mute rules not applied" in Path(report["html"]).read_text()


def test_mute_tolerance_is_a_checked_param(tmp_path):
    assert parse_params(small_params_dict()).reviews.mute_tolerance == "30min"
    assert parse_params(small_params_dict(reviews={"mute_tolerance": "1h"})).reviews.mute_tolerance == "1h"
    for bad in ("soon", "-5min", "12h"):
        with pytest.raises(Exception, match="mute_tolerance"):
            parse_params(small_params_dict(reviews={"mute_tolerance": bad}))
