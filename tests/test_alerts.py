"""Incident sinks (pipeline/batch/alerts.py) against real servers: a real Alertmanager that routes every
alert to a local webhook receiver, the receiver itself as the generic webhook sink, a receiver answering
500 or 400 as a sink that is down or refuses, and the ledger on SQLite and on the local PostgreSQL.

The scored days are small partitions written as ``kpiguard score`` writes them, with their flagged
points just before *now*, so the alerts are active in Alertmanager; one test scores a day through
``kpiguard score`` with a small real bundle."""
from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from pipeline import cli
from pipeline.batch import alerts, daily, score
from pipeline.errors import AlertError
from pipeline.params import parse_params
from tests.conftest import small_params_dict
from tests.scored_days import write_day
from tests.servers import (
    alertmanager,
    closed_port,
    database_url,
    env_vars,
    http_receiver,
    wait_until,
)

GAP = pd.Timedelta("2h")  # long enough that an alert written at 00:50 of a late-running test is still active
QUIET_S = 3.0  # three of Alertmanager's group intervals: a notification due would have come by then


class Recent:
    """A 5-minute grid ending just before now, all in one UTC day (the day before, just after midnight)."""

    def __init__(self):
        last = pd.Timestamp.now(tz="UTC").floor("5min") - pd.Timedelta("5min")
        if last - last.floor("D") < pd.Timedelta("45min"):
            last = last.floor("D") - pd.Timedelta("5min")
        self.last, self.day = last, last.floor("D").date().isoformat()

    def at(self, steps_back: int) -> pd.Timestamp:
        return self.last - pd.Timedelta(minutes=5 * steps_back)


def raw_params(tmp_path: Path, ledger: str | None = None, **alert_params) -> dict:
    raw = small_params_dict(score={"output": str(tmp_path / "scores"), "incident_gap": "2h"})
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    raw["alerts"] = {"ledger": ledger or f"sqlite:///{tmp_path / 'alerts' / 'ledger.db'}", "retry_backoff_s": 0.0,
                     "max_attempts": 2, "timeout_s": 5, **alert_params}
    return raw


def params_for(tmp_path: Path, ledger: str | None = None, **alert_params):
    return parse_params(raw_params(tmp_path, ledger, **alert_params))


def ledger_rows(params) -> list[dict]:
    engine = sa.create_engine(params.alerts.ledger)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(alerts.LEDGER).order_by(alerts.LEDGER.c.id)).mappings().all()
        return [dict(r) for r in rows]
    finally:
        engine.dispose()


def am_alerts(url: str, alertname: str) -> list[dict]:
    import requests

    found = requests.get(f"{url}/api/v2/alerts", params={"filter": f'alertname="{alertname}"'}, timeout=5)
    found.raise_for_status()
    return sorted(found.json(), key=lambda a: a["labels"]["kpi"])


def notifications(receiver, alertname: str) -> list[dict]:
    return [b for b in receiver.bodies() if b["commonLabels"].get("alertname") == alertname]


@pytest.fixture(scope="module")
def am(tmp_path_factory):
    """(the receiver of Alertmanager's notifications, Alertmanager's URL); one for the module, so each test
    sends its own alertname."""
    with http_receiver() as receiver, alertmanager(tmp_path_factory.mktemp("am"), receiver.url + "/hook") as url:
        yield receiver, url


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request, tmp_path):
    with database_url(request.param, tmp_path / 'alerts' / 'ledger.db', "kpiguard_alerts") as url:
        yield url


# -- Alertmanager ----------------------------------------------------------------------------------
def test_alertmanager_shows_the_incident_notifies_once_and_a_rerun_adds_nothing(am, tmp_path):
    receiver, am_url = am
    name, t = f"KpiguardTest{uuid.uuid4().hex[:8]}", Recent()
    write_day(tmp_path / "scores", t.day, {"cpu": {t.at(3): 6.0, t.at(2): 9.0}})
    p = params_for(tmp_path, alertmanager={"url": am_url}, alertname=name, labels={"team": "sre"},
                   report_url="https://reports.example/{day}.html")
    (incident,) = daily.day_incidents(p, t.day)

    pushed = daily.push_day(p, t.day)
    sink = pushed["sinks"]["alertmanager"]
    assert (sink["sent"], sink["updated"], sink["unchanged"]) == (1, 0, 0)
    assert sink["incidents"]["sent"] == [incident["id"]] and sink["url"] == f"{am_url}/api/v2/alerts"
    (alert,) = am_alerts(am_url, name)
    assert alert["labels"] == {"alertname": name, "kpi": "cpu", "detector": "diff_z", "severity": "critical",
                               "team": "sre"}
    report = f"https://reports.example/{t.day}.html"
    notes = alert["annotations"]
    assert notes["summary"] == "cpu: observed 250 vs expected 100 (90 – 110), severity 3.0× its threshold"
    assert (notes["incident"], notes["peak_at"], notes["report_url"]) == (incident["id"], t.at(2).isoformat(), report)
    assert (notes["observed"], notes["expected"], notes["expected_low"], notes["expected_high"]) == \
        ("250.0", "100.0", "90.0", "110.0")
    assert incident["id"] in notes["description"] and report in notes["description"]
    assert alert["generatorURL"] == report and alert["status"]["state"] == "active"
    assert pd.Timestamp(alert["startsAt"]) == t.at(3) and pd.Timestamp(alert["endsAt"]) == t.at(2) + GAP

    wait_until(lambda: notifications(receiver, name), 15, "Alertmanager's notification")
    time.sleep(QUIET_S)
    (note,) = notifications(receiver, name)
    assert note["status"] == "firing" and [a["labels"]["kpi"] for a in note["alerts"]] == ["cpu"]

    before = ledger_rows(p)
    again = daily.push_day(p, t.day)["sinks"]["alertmanager"]
    assert (again["sent"], again["updated"], again["unchanged"]) == (0, 0, 1)
    time.sleep(QUIET_S)
    assert len(notifications(receiver, name)) == 1 and ledger_rows(p) == before
    (row,) = before
    assert row["status"] == "firing" and row["attempts"] == 1 and json.loads(row["labels"]) == alert["labels"]


def test_an_extended_incident_keeps_one_alert_with_its_first_labels_and_a_later_end(am, tmp_path):
    receiver, am_url = am
    name, t = f"KpiguardTest{uuid.uuid4().hex[:8]}", Recent()
    p = params_for(tmp_path, alertmanager={"url": am_url}, alertname=name)
    write_day(tmp_path / "scores", t.day, {"cpu": {t.at(6): 4.5, t.at(5): 4.5}})  # 1.5× its threshold: warning
    (first,) = daily.day_incidents(p, t.day)
    assert daily.push_day(p, t.day)["sinks"]["alertmanager"]["sent"] == 1
    (cpu,) = am_alerts(am_url, name)
    assert cpu["labels"]["severity"] == "warning"

    # A later run: cpu goes on, far worse (3×: critical), and mem joins; the incident's id changes.
    write_day(tmp_path / "scores", t.day, {"cpu": {t.at(6): 4.5, t.at(5): 4.5, t.at(1): 9.0}, "mem": {t.at(2): 6.0}})
    (grown,) = daily.day_incidents(p, t.day)
    assert grown["id"] != first["id"] and grown["kpis"] == ["cpu", "mem"]
    sink = daily.push_day(p, t.day)["sinks"]["alertmanager"]
    assert (sink["sent"], sink["updated"], sink["unchanged"]) == (1, 1, 0)  # mem is new; cpu continues
    later, mem = am_alerts(am_url, name)
    assert later["labels"] == cpu["labels"] and later["fingerprint"] == cpu["fingerprint"]
    assert pd.Timestamp(later["endsAt"]) == t.at(1) + GAP > pd.Timestamp(cpu["endsAt"])
    assert pd.Timestamp(later["startsAt"]) == t.at(6) and later["annotations"]["incident"] == grown["id"]
    assert mem["labels"]["severity"] == "critical" and pd.Timestamp(mem["startsAt"]) == t.at(2)
    assert {r["incident_key"] for r in ledger_rows(p)} == {first["id"]}  # the key it was first sent with
    wait_until(lambda: len(notifications(receiver, name)) >= 2, 15, "Alertmanager's notifications")
    time.sleep(QUIET_S)
    by_kpi = [n["alerts"][0]["labels"]["kpi"] for n in notifications(receiver, name)]
    assert sorted(by_kpi) == ["cpu", "mem"]  # one notification each: the longer cpu alert is not news


def test_a_sink_answering_500_fails_clearly_marks_nothing_sent_and_the_next_run_sends_once(am, tmp_path, capsys):
    _, am_url = am
    name, t = f"KpiguardTest{uuid.uuid4().hex[:8]}", Recent()
    write_day(tmp_path / "scores", t.day, {"cpu": {t.at(2): 6.0}})
    with http_receiver(status=500, body="upstream broken") as down:
        p = params_for(tmp_path, alertmanager={"url": down.url}, alertname=name)
        with pytest.raises(AlertError) as failed:
            daily.push_day(p, t.day)
        message = str(failed.value)
        assert f"alertmanager sink {down.url}/api/v2/alerts" in message and "rule 'sink_reachable'" in message
        assert "HTTP 500" in message and "upstream broken" in message and "2 attempt(s)" in message
        assert "resends the undelivered alert(s) on the next run" in message
        assert len(down.posts) == 2  # alerts.max_attempts
        assert failed.value.summary["sinks"]["alertmanager"]["sent"] == 0
        (row,) = ledger_rows(p)
        assert row["status"] is None and row["delivered_at"] is None and row["attempts"] == 2

        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params(tmp_path, alertmanager={"url": down.url},
                                                                         alertname=name)))
        code = cli.main(["alert", "--date", t.day, "--params", str(tmp_path / "params.yaml")])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        (line,) = err.splitlines()
        assert line.startswith("kpiguard alert: error: alertmanager sink") and "HTTP 500" in line

    p = params_for(tmp_path, alertmanager={"url": am_url}, alertname=name)
    assert daily.push_day(p, t.day)["sinks"]["alertmanager"]["sent"] == 1
    assert [a["labels"]["kpi"] for a in am_alerts(am_url, name)] == ["cpu"]
    assert daily.push_day(p, t.day)["sinks"]["alertmanager"]["sent"] == 0
    (row,) = ledger_rows(p)
    assert row["status"] == "firing" and row["attempts"] == 5 and row["last_error"] is None  # 2 + 2 failed, 1 ok


@pytest.mark.parametrize("status, rule, posts", [(400, "sink_accepts", 1), (None, "sink_reachable", 0)])
def test_a_refused_payload_or_no_server_is_a_clear_error(tmp_path, status, rule, posts):
    t = Recent()
    write_day(tmp_path / "scores", t.day, {"cpu": {t.at(2): 6.0}})
    with http_receiver(status=status or 200, body='{"error": "bad alert"}') as refusing:
        url = refusing.url if status else f"http://127.0.0.1:{closed_port()}"
        p = params_for(tmp_path, alertmanager={"url": url})
        with pytest.raises(AlertError, match=f"rule '{rule}'") as failed:
            daily.push_day(p, t.day)
        assert len(refusing.posts) == posts  # a 400 is not retried: the payload would not change
    assert url in str(failed.value) and ("HTTP 400" in str(failed.value) if status else "ConnectionError" in str(failed.value))


# -- the webhook ------------------------------------------------------------------------------------
def test_the_webhook_posts_an_incident_once_not_again_as_it_continues_and_once_when_it_is_over(tmp_path, ledger_url):
    t = Recent()
    write_day(tmp_path / "scores", t.day, {"cpu": {t.at(4): 6.0, t.at(3): 9.0}})
    with http_receiver() as hook, env_vars({"KPIGUARD_TEST_HOOK_AUTH": "Bearer s3cret"}):
        p = params_for(tmp_path, ledger_url, webhook={"url": hook.url + "/services/T0/B0", "auth_header_env":
                                                      "KPIGUARD_TEST_HOOK_AUTH"}, report_url="https://r.example/{day}")
        (incident,) = daily.day_incidents(p, t.day)
        pushed = daily.push_day(p, t.day)
        assert pushed["sinks"]["webhook"]["sent"] == 1 and "s3cret" not in json.dumps(pushed)
        (post,) = hook.posts
        assert post["path"] == "/services/T0/B0" and post["headers"]["Authorization"] == "Bearer s3cret"
        body = post["json"]
        assert body["status"] == "firing" and body["incident"] == incident
        assert body["report_url"] == f"https://r.example/{t.day}"
        assert incident["id"] in body["text"] and "cpu: observed 250 vs expected 100 (90 – 110)" in body["text"]
        assert f"<https://r.example/{t.day}|Report>" in body["text"] and "\n" not in body["text"]

        before = ledger_rows(p)
        assert daily.push_day(p, t.day)["sinks"]["webhook"]["unchanged"] == 1
        assert len(hook.posts) == 1 and ledger_rows(p) == before

        write_day(tmp_path / "scores", t.day, {"cpu": {t.at(4): 6.0, t.at(3): 9.0, t.at(1): 7.0}, "mem": {t.at(2): 6.0}})
        (grown,) = daily.day_incidents(p, t.day)
        sink = daily.push_day(p, t.day)["sinks"]["webhook"]
        assert (sink["sent"], sink["updated"], sink["incidents"]["updated"]) == (0, 1, [grown["id"]])
        assert len(hook.posts) == 1
        (row,) = ledger_rows(p)
        assert (row["incident_key"], json.loads(row["kpis"])) == (incident["id"], ["cpu", "mem"])

        over = t.at(1) + GAP + pd.Timedelta("1min")
        sink = daily.push_day(p, t.day, now=over)["sinks"]["webhook"]
        assert sink["resolved"] == 1 and len(hook.posts) == 2
        resolved = hook.posts[1]["json"]
        assert resolved["status"] == "resolved" and resolved["incident"] == grown and "is over" in resolved["text"]
        assert daily.push_day(p, t.day, now=over)["sinks"]["webhook"]["unchanged"] == 1
        assert len(hook.posts) == 2 and ledger_rows(p)[0]["status"] == "resolved"


def test_a_firing_incident_gets_its_resolved_post_from_a_later_push_without_it(tmp_path):
    t = Recent()
    write_day(tmp_path / "scores", t.day, {"cpu": {t.at(2): 6.0}})
    with http_receiver() as hook:
        p = params_for(tmp_path, webhook={"url": hook.url})
        daily.push_day(p, t.day)
        sink = alerts.push(p, [], now=t.at(2) + GAP)["sinks"]["webhook"]  # the next day's push: nothing new
        assert sink["resolved"] == 1 and [b["status"] for b in hook.bodies()] == ["firing", "resolved"]
        quiet = params_for(tmp_path, webhook={"url": hook.url, "send_resolved": False})
        write_day(tmp_path / "scores", t.day, {"mem": {t.at(2): 6.0}})  # an incident over when first pushed
        daily.push_day(quiet, t.day, now=t.at(2) + GAP)
        assert [b["status"] for b in hook.bodies()] == ["firing", "resolved", "resolved"]


def test_concurrent_pushes_post_an_incident_once(tmp_path, ledger_url):
    t = Recent()
    write_day(tmp_path / "scores", t.day, {"cpu": {t.at(2): 6.0}, "mem": {t.at(1): 6.0}})
    with http_receiver() as hook:
        hook.delay_s = 1.0  # both runs are inside a delivery at once
        p = params_for(tmp_path, ledger_url, webhook={"url": hook.url})
        alerts.push(p, [], now=pd.Timestamp.now(tz="UTC"))  # the table exists before the race
        results, errors = [], []

        def run():
            try:
                results.append(daily.push_day(p, t.day)["sinks"]["webhook"])
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors
        (incident,) = daily.day_incidents(p, t.day)
        assert [b["incident"]["id"] for b in hook.bodies()] == [incident["id"]]  # exactly once
        assert sorted(r["sent"] for r in results) == [0, 0, 1]
        assert sum(r["busy"] + r["unchanged"] for r in results) == 2


def test_a_missing_auth_variable_sends_nothing_and_says_which(tmp_path):
    t = Recent()
    write_day(tmp_path / "scores", t.day, {"cpu": {t.at(2): 6.0}})
    with http_receiver() as hook, env_vars({"KPIGUARD_TEST_NO_SUCH_AUTH": None}):
        p = params_for(tmp_path, webhook={"url": hook.url, "auth_header_env": "KPIGUARD_TEST_NO_SUCH_AUTH"})
        with pytest.raises(AlertError, match="rule 'auth_header_env'.*KPIGUARD_TEST_NO_SUCH_AUTH"):
            daily.push_day(p, t.day)
        assert hook.posts == []


# -- the CLI ----------------------------------------------------------------------------------------
def test_alert_without_a_sink_sends_nothing_and_says_so(tmp_path, capsys):
    t = Recent()
    write_day(tmp_path / "scores", t.day, {"cpu": {t.at(2): 6.0}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw_params(tmp_path)))
    code = cli.main(["alert", "--date", t.day, "--params", str(tmp_path / "params.yaml")])
    out = capsys.readouterr()
    assert code == 1 and "no sink configured" in out.out and "no alert sink configured" in out.err
    assert not (tmp_path / "alerts").exists()  # no sink: not even the ledger is created


def test_score_pushes_each_scored_day_and_an_alert_failure_keeps_the_partition(tmp_path, monkeypatch, capsys):
    """kpiguard score with a small real bundle (tests/bundles.py) on today's points, one of them a spike."""
    from tests.bundles import make_bundle
    from tests.test_score_guards import kpi_rows, model_of

    bundle = make_bundle(tmp_path / "bundle", "diff_z")[0]
    monkeypatch.setattr(score, "load_model", lambda _params, _uri: model_of(bundle))
    t = Recent()
    rows = kpi_rows(t.day)
    rows.loc[(rows["kpi_id"] == "kpi_0") & (rows["timestamp"] == t.at(2)), "value"] += 60.0
    rows.to_csv(tmp_path / "in.csv", index=False)
    with http_receiver() as hook:
        raw = raw_params(tmp_path, webhook={"url": hook.url})
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
        argv = ["score", "--date", t.day, "--input", f"csv:{tmp_path / 'in.csv'}", "--params", str(tmp_path / "params.yaml")]
        assert cli.main(argv) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        posted = [b["incident"] for b in hook.bodies()]
        assert any("kpi_0" in i["kpis"] and i["start"] <= t.at(2).isoformat() <= i["end"] for i in posted)
        assert f"score: alert {t.day}: " in out and f"webhook {hook.url}: {len(posted)} sent" in out

        hook.status = 500
        first = score.read_meta(str(tmp_path / "scores"), t.day)["scored_at"]
        code = cli.main([*argv, "-S", f"alerts.ledger=sqlite:///{tmp_path / 'fresh.db'}"])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err
        (line,) = [x for x in err.splitlines() if x.startswith("kpiguard score: error:")]
        assert "HTTP 500" in line and "the scores are written" in line and f"kpiguard alert --date {t.day}" in line
        assert score.read_meta(str(tmp_path / "scores"), t.day)["scored_at"] >= first  # written again, kept
