"""`kpiguard serve`: the day's report with verdict buttons, in a real headless Chromium against the real
server (a `kpiguard serve` subprocess on 127.0.0.1, stopped by PID), and the guards on its writes."""
from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest

from pipeline.batch import daily
from pipeline.data.review_labels import apply_labels, read_export
from pipeline.params import load_params
from pipeline.review import service
from pipeline.review.store import ReviewStore
from tests.conftest import REPO
from tests.servers import start_process, stop_process, wait_until
from tests.test_cli_report import DAY, write_day

TOKEN = "s3cret-review-token"
STARTED = re.compile(r"kpiguard serve: .* at (http://\S+/) ")
# cpu 10:00-10:10 with mem 10:20 is one incident, cpu 15:00 another (tests/test_cli_report.py)
FLAGGED = {"cpu": [120, 121, 122, 180], "mem": [124]}


class Site:
    """A scored day with its report, a review store, and the overrides that point kpiguard at them."""

    def __init__(self, root: Path):
        self.root = root
        self.store = f"sqlite:///{root / 'reviews.db'}"
        self.overrides = [f"score.output={root / 'scores'}", f"score.reports={root / 'reports'}",
                          f"reviews.store={self.store}", f"paths.labels={root / 'labels'}"]
        self.params = load_params(REPO / "params.yaml", self.overrides)

    def command(self, *extra: str) -> list[str]:
        sets = [arg for override in self.overrides for arg in ("-S", override)]
        return [sys.executable, "-m", "pipeline.cli", "serve", "--params", str(REPO / "params.yaml"), *sets, *extra]

    def env(self, token: str | None = TOKEN) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "KPIGUARD_REVIEW_TOKEN"}
        env["PYTHONPATH"] = str(REPO)
        if token is not None:
            env["KPIGUARD_REVIEW_TOKEN"] = token
        return env

    def stored(self) -> tuple[int, int, list[str]]:
        """All verdict rows (not only the latest), misses and reviewed days: what a refusal must not change."""
        with ReviewStore(self.store) as store:
            return len(store.verdicts(latest=False)), len(store.misses()), store.reviewed_days()


class Server:
    def __init__(self, proc: subprocess.Popen, log: Path, url: str):
        self.proc, self.log, self.url = proc, log, url
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.origin = f"http://{parts.netloc}"

    def request(self, method: str, path: str, body: bytes | str | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict, str]:
        """(status, headers, body text) of one request, with exactly the headers given (and Host)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read().decode()
        finally:
            conn.close()

    def write(self, path: str, fields: dict, **headers: str) -> tuple[int, dict]:
        """POST ``fields`` as JSON with the token, as the page does; ``headers`` replace or (None) drop."""
        sent = {"Content-Type": "application/json", "X-Kpiguard-Token": TOKEN, "Origin": self.origin, **headers}
        status, _, text = self.request("POST", path, json.dumps(fields),
                                       {k: v for k, v in sent.items() if v is not None})
        return status, json.loads(text)


def start_server(site: Site, name: str) -> Server:
    log = site.root / f"{name}.log"
    proc = start_process(site.command("--port", "0"), log, env=site.env(), cwd=site.root)
    found: list[str] = []

    def started() -> bool:
        found[:] = STARTED.findall(log.read_text()) if log.exists() else []
        return bool(found)

    try:
        wait_until(started, 60, "kpiguard serve", proc=proc, log_path=log)
    except Exception:
        stop_process(proc)
        raise
    return Server(proc, log, found[0])


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    site = Site(tmp_path_factory.mktemp("review-site"))
    write_day(site.root / "scores", FLAGGED)
    daily.build_day_report(site.params, DAY)
    return site


@pytest.fixture(scope="module")
def server(site) -> Server:
    running = start_server(site, "serve")
    try:
        yield running
    finally:
        stop_process(running.proc)


def incidents(site: Site) -> list[dict]:
    return json.loads((site.root / "reports" / f"{DAY}.json").read_text())["incidents"]


def rows_labelled_one(site: Site) -> tuple[set[tuple[str, str]], int]:
    """(kpi, HH:MM) of the day's rows that the exported label set makes anomalous, and the rows labelled."""
    exported, _ = read_export(service.export(site.params)["path"])
    scored, _ = daily.read_day(site.params, DAY)
    labelled, _ = apply_labels(scored[["kpi_id", "timestamp", "value"]], exported)
    ones = labelled[labelled["label"] == 1]
    return {(k, pd.Timestamp(t).strftime("%H:%M")) for k, t in zip(ones["kpi_id"], ones["timestamp"])}, len(labelled)


@pytest.mark.timeout(240)
def test_a_reviewer_confirms_an_incident_in_the_browser_and_the_next_retrain_is_labelled_with_it(
        site, server, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    first, second = incidents(site)
    assert first["kpis"] == ["cpu", "mem"] and second["kpis"] == ["cpu"]
    chromium.get(f"{server.url}day/{DAY}")
    wait = WebDriverWait(chromium, 20)
    row = {inc["id"]: chromium.find_element(By.CSS_SELECTOR, f'tr[data-incident="{inc["id"]}"]')
           for inc in (first, second)}
    wait.until(lambda _: all(r.find_elements(By.CSS_SELECTOR, "button[data-verdict]") for r in row.values()))
    assert row[first["id"]].find_element(By.CSS_SELECTOR, "[data-role=verdict]").text == "no verdict"
    status = chromium.find_element(By.CSS_SELECTOR, "#kpiguard-review [data-role=status]")

    def saved(text: str) -> None:
        wait.until(lambda _: text in status.text)
        assert status.get_attribute("data-state") == "ok", status.text

    def press(incident: dict, verdict: str) -> None:
        row[incident["id"]].find_element(By.CSS_SELECTOR, f'button[data-verdict="{verdict}"]').click()

    reviewer = chromium.find_element(By.NAME, "reviewer")
    token = chromium.find_element(By.NAME, "token")
    reviewer.send_keys("alice")
    token.send_keys("not-the-token")
    press(first, "confirmed")
    wait.until(lambda _: "wrong review token" in status.text)
    assert status.get_attribute("data-state") == "error" and site.stored() == (0, 0, [])
    refused = [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"]  # and clears the log
    assert [(e["source"], "401 (Unauthorized)" in e["message"]) for e in refused] == [("network", True)]

    token.clear()
    token.send_keys(TOKEN)
    press(first, "confirmed")
    saved(f"saved: {first['id']} → confirmed")
    verdicts = ReviewStore(site.store).verdicts()
    assert sorted(zip(verdicts["kpi_id"], verdicts["verdict"], verdicts["reviewer"])) == \
        [("cpu", "confirmed", "alice"), ("mem", "confirmed", "alice")]
    assert row[first["id"]].find_element(By.CSS_SELECTOR, "[data-role=verdict]").text == "confirmed (alice)"
    exported = service.current_spans(site.params)
    assert [(s.kpi_id, s.origin, s.start.isoformat(), s.end.isoformat()) for s in exported.itertuples()] == \
        [(k["kpi_id"], "confirmed", k["start"], k["end"]) for k in sorted(first["per_kpi"], key=lambda k: k["start"])]
    ones, _ = rows_labelled_one(site)
    assert ones == {("cpu", "10:00"), ("cpu", "10:05"), ("cpu", "10:10"), ("mem", "10:20")}  # the incident's span

    form = chromium.find_element(By.CSS_SELECTOR, "#kpiguard-review form[data-role=miss]")
    for name, value in (("kpi", "disk"), ("start", f"{DAY}T12:00"), ("end", f"{DAY}T12:10"), ("note", "slow disk")):
        form.find_element(By.NAME, name).send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    saved("saved: missed anomaly #1 on disk")
    misses = ReviewStore(site.store).misses()
    assert [(m.kpi_id, m.start_at.isoformat(), m.end_at.isoformat(), m.note, m.reviewer) for m in misses.itertuples()] \
        == [("disk", f"{DAY}T12:00:00+00:00", f"{DAY}T12:10:00+00:00", "slow disk", "alice")]
    listed = chromium.find_elements(By.CSS_SELECTOR, "#kpiguard-review [data-role=misses] li")
    assert [li.text for li in listed] == [f"disk: {DAY}T12:00:00+00:00 → {DAY}T12:10:00+00:00 (alice) — slow disk"]
    assert form.find_element(By.NAME, "kpi").get_attribute("value") == ""  # the form is cleared once stored

    chromium.find_element(By.CSS_SELECTOR, "#kpiguard-review button[data-role=done]").click()
    saved(f"saved: {DAY} marked reviewed")
    press(second, "false_alarm")
    saved(f"saved: {second['id']} → false_alarm")
    assert row[second["id"]].find_element(By.CSS_SELECTOR, "[data-role=verdict]").text == "false alarm (alice)"
    assert chromium.find_element(By.CSS_SELECTOR, "#kpiguard-review [data-role=reviewed]").text == \
        "this day is marked reviewed"
    assert site.stored() == (3, 1, [DAY])

    # the reviewed day labels every row: 1 over the confirmed incident and the miss, 0 elsewhere
    ones, labelled = rows_labelled_one(site)
    assert labelled == 3 * 288
    assert ones == {("cpu", "10:00"), ("cpu", "10:05"), ("cpu", "10:10"), ("mem", "10:20"),
                    ("disk", "12:00"), ("disk", "12:05"), ("disk", "12:10")}

    chromium.refresh()  # what was stored is what the page shows on the next visit; the fields are kept
    wait.until(lambda _: "confirmed (alice)" in chromium.find_element(
        By.CSS_SELECTOR, f'tr[data-incident="{first["id"]}"] [data-role=verdict]').text)
    assert chromium.find_element(By.NAME, "token").get_attribute("value") == TOKEN
    assert [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"] == []  # no CSP, script or HTTP errors


def test_the_static_report_still_works_without_the_server(site, chromium):
    chromium.get((site.root / "reports" / f"{DAY}.html").as_uri())
    rows = chromium.find_elements("css selector", "table.incidents tbody tr[data-incident]")
    assert [r.get_attribute("data-incident") for r in rows] == [i["id"] for i in incidents(site)]
    assert all(r.is_displayed() for r in rows)
    assert chromium.find_elements("css selector", "#kpiguard-review, button") == []
    assert [e for e in chromium.get_log("browser") if e["level"] == "SEVERE"] == []


def test_the_index_lists_the_days_and_the_api_gives_the_days_review(site, server):
    status, headers, text = server.request("GET", "/")
    assert status == 200 and f'<a href="/day/{DAY}">{DAY}</a>' in text
    assert headers["X-Content-Type-Options"] == "nosniff" and "frame-ancestors 'none'" in \
        headers["Content-Security-Policy"]
    status, headers, text = server.request("GET", f"/api/day/{DAY}")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert [i["id"] for i in json.loads(text)["incidents"]] == [i["id"] for i in incidents(site)]
    status, headers, text = server.request("GET", f"/day/{DAY}")
    assert status == 200 and "script-src 'nonce-" in headers["Content-Security-Policy"]
    assert text.count('id="kpiguard-review"') == 1
    original = (site.root / "reports" / f"{DAY}.html").read_text()
    assert original.split("</h1>")[0] in text and original.split("</h1>")[1].split("</body>")[0] in text


@pytest.mark.parametrize("what,headers,body,status,message", [
    ("no token", {"X-Kpiguard-Token": None}, None, 401, "needs the review token"),
    ("a wrong token", {"X-Kpiguard-Token": "guess"}, None, 401, "wrong review token"),
    ("another site's Origin", {"Origin": "http://evil.example"}, None, 403, "Origin 'http://evil.example'"),
    ("a cross-site fetch", {"Sec-Fetch-Site": "cross-site"}, None, 403, "cross-site request"),
    ("another site's Referer", {"Origin": None, "Referer": "http://evil.example/page"}, None, 403, "Referer"),
    ("a form's text/plain body", {"Content-Type": "text/plain"}, None, 415, "not text/plain"),
    ("a form-encoded body", {"Content-Type": "application/x-www-form-urlencoded"},
     "day=2026-03-01&verdict=confirmed", 415, "application/json"),
    ("a body over 64 KiB", {}, json.dumps({"note": "x" * 70_000}), 413, "at most 65536"),
    ("another Host (DNS rebinding)", {"Host": "evil.example"}, None, 403, "Host 'evil.example'"),
])
def test_a_write_without_the_token_or_from_another_site_is_refused_and_stores_nothing(
        site, server, what, headers, body, status, message):
    fields = {"day": DAY, "incident": incidents(site)[0]["id"], "verdict": "false_alarm", "reviewer": "mallory"}
    sent = {"Content-Type": "application/json", "X-Kpiguard-Token": TOKEN, "Origin": server.origin, **headers}
    before = site.stored()
    got, _, text = server.request("POST", "/api/verdict", body or json.dumps(fields),
                                  {k: v for k, v in sent.items() if v is not None})
    assert (got, message in json.loads(text)["error"]) == (status, True), (what, text)
    assert site.stored() == before


def test_the_same_write_with_the_token_from_the_servers_own_page_is_stored(site, server):
    incident = incidents(site)[1]
    before = site.stored()
    status, answer = server.write("/api/verdict", {"day": DAY, "incident": incident["id"], "verdict": "confirmed",
                                                   "reviewer": "bob", "note": "seen in the logs"},
                                  **{"Origin": None, "Referer": f"{server.url}day/{DAY}", "Sec-Fetch-Site": "same-origin"})
    assert (status, answer["verdict"], answer["kpis"]) == (200, "confirmed", ["cpu"])
    assert site.stored()[0] == before[0] + 1


@pytest.mark.parametrize("path,fields,message", [
    ("/api/verdict", {"day": DAY, "incident": "inc-20260301-0000-00000000", "verdict": "confirmed"},
     "rule 'incident_known' failed"),
    ("/api/verdict", {"day": DAY, "incident": "{first}", "verdict": "maybe"}, "rule 'verdict_known' failed"),
    ("/api/verdict", {"day": DAY, "incident": "{first}", "verdict": "confirmed", "kpi": "disk"},
     "rule 'kpi_in_incident' failed"),
    ("/api/verdict", {"day": "2026-13-01", "incident": "{first}", "verdict": "confirmed"}, "not a date"),
    ("/api/miss", {"kpi": "cpu", "start": f"{DAY}T12:00", "end": f"{DAY}T11:00"}, "is before start"),
    ("/api/miss", {"kpi": "cpu", "start": "yesterday-ish", "end": f"{DAY}T11:00"}, "not a timestamp"),
    ("/api/miss", {"kpi": "cpu", "start": f"{DAY}T10:00", "end": f"{DAY}T11:00", "notes": "typo"},
     "unknown fields: notes"),
    ("/api/miss", {"kpi": "cpu", "start": f"{DAY}T10:00"}, "missing: end"),
    ("/api/done", {"day": ["2026-03-01"]}, "must be strings: day"),
])
def test_bad_input_is_a_400_with_the_reason_and_no_traceback(site, server, path, fields, message):
    fields = {"reviewer": "alice", **{k: v.format(first=incidents(site)[0]["id"]) if isinstance(v, str) else v
                                      for k, v in fields.items()}}
    before = site.stored()
    status, answer = server.write(path, fields)
    assert status == 400 and message in answer["error"], answer
    assert "Traceback" not in answer["error"] and site.stored() == before


def test_a_body_that_is_not_a_json_object_is_a_400(server):
    for body in ("{not json", "[1, 2]", "\xff"):
        status, _, text = server.request("POST", "/api/done", body.encode("latin-1"),
                                         {"Content-Type": "application/json", "X-Kpiguard-Token": TOKEN})
        assert status == 400 and "Traceback" not in text and json.loads(text)["error"]


@pytest.mark.parametrize("method,path", [
    ("GET", "/nowhere"), ("GET", "/day/2026-02-30"), ("GET", "/day/..%2F..%2Fparams"), ("GET", "/day/../params.yaml"),
    ("GET", "/day/2026-03-02"), ("GET", "/api/day/2026-03-02"), ("GET", f"/day/{DAY}/x"), ("POST", "/api/delete"),
])
def test_unknown_paths_and_days_are_404(server, method, path):
    status, headers, text = server.request(method, path, "{}" if method == "POST" else None,
                                           {"Content-Type": "application/json"})
    assert status == 404 and headers["Content-Type"] == "application/json" and json.loads(text)["error"]


def test_serve_without_a_token_refuses_to_start(site):
    for token in (None, ""):
        done = subprocess.run(site.command("--port", "0"), env=site.env(token), cwd=site.root, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "kpiguard serve: error:" in done.stderr and "$KPIGUARD_REVIEW_TOKEN (reviews.token_env) is unset" \
            in done.stderr and "review_token_set" in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_stops_the_server_cleanly_with_its_counts(site):
    running = start_server(site, "stopped")
    try:
        assert running.request("GET", "/")[0] == 200
        assert running.request("POST", "/api/done", "{}", {"Content-Type": "application/json"})[0] == 401
        running.proc.send_signal(signal.SIGINT)
        assert running.proc.wait(timeout=30) == 0
    finally:
        stop_process(running.proc)
    assert "serve: stopped after 2 requests" in running.log.read_text()
