"""Incident sinks: Alertmanager and a generic (Slack-compatible) webhook, each sent exactly once.

    push(params, found, now=...)      the incident records of :func:`pipeline.batch.incidents.incidents`

Every configured sink (``alerts.alertmanager.url``, ``alerts.webhook.url``; none by default) gets:

- **Alertmanager** (``POST /api/v2/alerts``): one alert per KPI of an incident, labelled ``alertname``,
  ``kpi``, ``detector``, ``severity`` ("critical" at ``alerts.critical_severity`` times the KPI's
  threshold or more, else "warning") and the static ``alerts.labels``. ``startsAt`` is the KPI's first
  flagged point, ``endsAt`` its last plus ``score.incident_gap``: after that quiet time the incident is
  over, so Alertmanager resolves the alert itself and nobody has to send "resolved". Alertmanager knows
  an alert by its labels, so an incident that continues keeps the labels it was first sent with (its
  severity bucket may grow); each push that extends it re-sends the alert with the later ``endsAt``.
- **Webhook**: one post per incident, ``{"text": <one Slack paragraph>, "status": "firing" | "resolved",
  "incident": <record>, "report_url": ...}``, with the ``Authorization`` header read from the
  environment variable ``alerts.webhook.auth_header_env``. A continuing incident is not posted again;
  with ``alerts.webhook.send_resolved`` it gets one more post, status "resolved", at the first push after
  it is over (now past its last point + ``score.incident_gap``). An incident already over when first
  pushed (a day scored after the fact) is posted once, status "resolved".

**The ledger** (``alerts.ledger``, a SQLAlchemy URL: SQLite by default, PostgreSQL where several workers
push) records per sink and alert what was delivered: the labels first sent, the start and end last
delivered, the status, when, and how many HTTP attempts it took. An incident *continues* one in the
ledger when they share a KPI and overlap or lie at most ``score.incident_gap`` apart: its id may have
changed (the id hashes its start and KPIs, and a growing incident gains KPIs), so it is matched by KPI
and time, and keeps the ledger's key. Before each delivery the alert's row is claimed in a transaction
(a unique key per sink and alert, and a version compared and set), so two concurrent runs never send it
twice; a row is written as delivered only once the sink accepted it. A sink that stays down after
``alerts.max_attempts`` (connection errors, 5xx, 429; ``retry_backoff_s`` doubling) or refuses the
payload (another 4xx) leaves its alerts undelivered in the ledger, and :class:`AlertError` says so after
the other sinks were served: the next run sends them.
"""
from __future__ import annotations

import abc
import datetime as dt
import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from pipeline.data.contract import utc_timestamp
from pipeline.errors import AlertError
from pipeline.io.storage import shown_url
from pipeline.params import AlertParams, Params

log = logging.getLogger(__name__)

ALERTMANAGER, WEBHOOK = "alertmanager", "webhook"
ALERTS_API = "/api/v2/alerts"
FIRING, RESOLVED = "firing", "resolved"
OUTCOMES = ("sent", "updated", "unchanged", "resolved", "busy")
ERROR_BODY_BYTES = 300  # of a refusing sink's answer, quoted in the error
CLAIM_MARGIN_S = 60.0  # a claim older than one delivery's worst case plus this was left by a dead run

METADATA = sa.MetaData()
LEDGER = sa.Table(
    "kpiguard_alert_ledger", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("sink", sa.String(32), nullable=False),
    # webhook: the incident key; Alertmanager: "<incident key>/<hash of the KPI>" (one alert per KPI)
    sa.Column("alert_key", sa.String(128), nullable=False),
    sa.Column("incident_key", sa.String(64), nullable=False),  # the id the incident was first sent with
    sa.Column("kpis", sa.Text, nullable=False),  # JSON list
    sa.Column("labels", sa.Text),  # JSON: Alertmanager's labels, as first sent
    sa.Column("start_at", sa.DateTime(timezone=True), nullable=False),  # last delivered (or, undelivered, tried)
    sa.Column("end_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.String(16)),  # None: never delivered; firing; resolved
    sa.Column("payload", sa.Text),  # JSON: the incident record last delivered (the webhook's resolved post)
    sa.Column("delivered_at", sa.DateTime(timezone=True)),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),  # HTTP attempts, all runs
    sa.Column("last_error", sa.Text),
    sa.Column("version", sa.Integer, nullable=False, default=0),  # compared and set by every write
    sa.Column("claim", sa.String(32)),  # the run delivering it now
    sa.Column("claimed_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("sink", "alert_key", name="uq_kpiguard_alert_ledger_sink_key"),
    sa.Index("ix_kpiguard_alert_ledger_sink_end", "sink", "end_at"),
)


# -- the public API ------------------------------------------------------------------------------
def push(params: Params, found: list[dict], *, now: pd.Timestamp, report_url: str | None = None) -> dict:
    """Send ``found`` (incident records) to every configured sink; what each did, JSON-ready.

    ``now``: the incidents whose last point plus ``score.incident_gap`` is before it are over.
    ``report_url``: the report's address for every incident; None: ``alerts.report_url`` with each
    incident's start day, when set. Per sink: ``url``, counts ``sent`` (first deliveries), ``updated``
    (continuing: later end, earlier start or more KPIs), ``unchanged``, ``resolved`` (over since the last
    push), ``busy`` (another run is delivering it now) of its alerts (Alertmanager: per KPI; webhook: per
    incident), and ``incidents``: the incident ids of each. Raises :class:`AlertError` (with the
    summary) when a sink could not be served, after the ledger recorded what was delivered.
    """
    cfg, now = params.alerts, utc_timestamp(now)
    sinks = cfg.sinks()
    result = {"now": now.isoformat(), "incidents": len(found), "sinks": {}}
    if not sinks:
        return result
    gap = pd.Timedelta(params.score.incident_gap)
    found = sorted(found, key=lambda i: (pd.Timestamp(i["start"]), i["id"]))
    ledger = Ledger(cfg)
    failures = []
    try:
        result["ledger"] = ledger.shown
        for name in sinks:
            sink = (AlertmanagerSink if name == ALERTMANAGER else WebhookSink)(cfg, ledger, gap, now, report_url)
            try:
                result["sinks"][name] = sink.push(found)
            except AlertError as exc:
                result["sinks"][name] = {**sink.summary(), "error": str(exc)}
                failures.append(exc)
    finally:
        ledger.close()
    if len(failures) == 1:
        exc = failures[0]
        raise AlertError(exc.source, exc.rule, exc.detail, summary=result)
    if failures:
        raise AlertError(" and ".join(e.source for e in failures), "sink_delivers",
                         "; ".join(f"{e.source}: {e.detail}" for e in failures), summary=result)
    return result


def enabled(params: Params) -> bool:
    """True when any sink is configured (``kpiguard score`` then pushes each day it scored)."""
    return bool(params.alerts.sinks())


# -- the ledger ----------------------------------------------------------------------------------
class Ledger:
    """The table of what was delivered (:data:`LEDGER`), created when absent."""

    def __init__(self, cfg: AlertParams):
        url = sa.engine.make_url(cfg.ledger)
        self.shown = url.render_as_string(hide_password=True)
        # A claim outlives the slowest delivery (every attempt timing out, every back-off waited).
        self.lease = dt.timedelta(seconds=cfg.max_attempts * cfg.timeout_s + CLAIM_MARGIN_S
                                  + sum(cfg.retry_backoff_s * 2 ** i for i in range(cfg.max_attempts - 1)))
        try:
            if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(url)
            try:
                METADATA.create_all(self.engine)
            except SQLAlchemyError:  # another run created it between the check and the CREATE
                METADATA.create_all(self.engine)
        except (SQLAlchemyError, OSError) as exc:
            raise self.error(exc, "ledger_reachable") from None

    def error(self, exc: Exception, rule: str = "ledger_writable") -> AlertError:
        reason = getattr(exc, "orig", None) or exc
        return AlertError(f"alert ledger {self.shown} (alerts.ledger)", rule,
                          f"{type(reason).__name__}: {' '.join(str(reason).split())[:ERROR_BODY_BYTES]}; nothing "
                          "more was sent (what was delivered before is recorded); fix the database and rerun")

    def close(self) -> None:
        if hasattr(self, "engine"):
            self.engine.dispose()

    def rows(self, sink: str, clause) -> list[dict]:
        try:
            with self.engine.connect() as conn:
                found = conn.execute(sa.select(LEDGER).where(LEDGER.c.sink == sink, clause)).mappings().all()
        except SQLAlchemyError as exc:
            raise self.error(exc, "ledger_reachable") from None
        return [{**r, "kpis": json.loads(r["kpis"]), "labels": json.loads(r["labels"]) if r["labels"] else None,
                 "payload": json.loads(r["payload"]) if r["payload"] else None,
                 "start_at": utc_timestamp(r["start_at"]), "end_at": utc_timestamp(r["end_at"])} for r in found]

    def claim(self, sink: str, alert, row: dict | None) -> tuple[str | None, dict | None]:
        """(claim token, row) when this run may deliver ``alert`` now; (None, None) when another run is."""
        token, stamp = uuid.uuid4().hex, _wall()
        try:
            with self.engine.begin() as conn:
                if row is None:
                    values = {"sink": sink, "alert_key": alert.key, "incident_key": alert.incident_key,
                              "kpis": json.dumps(alert.kpis), "start_at": _db(alert.start), "end_at": _db(alert.end),
                              "attempts": 0, "version": 0, "claim": token, "claimed_at": stamp}
                    conn.execute(sa.insert(LEDGER).values(**values))
                    return token, {**values, "status": None, "labels": None, "payload": None}
                stale = stamp - self.lease
                done = conn.execute(sa.update(LEDGER).where(
                    LEDGER.c.id == row["id"], LEDGER.c.version == row["version"],
                    sa.or_(LEDGER.c.claim.is_(None), LEDGER.c.claimed_at < stale)).values(claim=token, claimed_at=stamp))
                return (token, row) if done.rowcount == 1 else (None, None)
        except IntegrityError:  # another run inserted it first: it is delivering it
            return None, None
        except SQLAlchemyError as exc:
            raise self.error(exc) from None

    def delivered(self, sink: str, key: str, token: str, attempts: int, values: dict) -> None:
        self._finish(sink, key, token, {**values, "delivered_at": _wall(), "last_error": None,
                                        "attempts": LEDGER.c.attempts + attempts})

    def undelivered(self, sink: str, key: str, token: str, attempts: int, error: str) -> None:
        self._finish(sink, key, token, {"attempts": LEDGER.c.attempts + attempts, "last_error": error})

    def _finish(self, sink: str, key: str, token: str, values: dict) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.update(LEDGER).where(LEDGER.c.sink == sink, LEDGER.c.alert_key == key,
                                                     LEDGER.c.claim == token)
                             .values(**values, claim=None, claimed_at=None, version=LEDGER.c.version + 1))
        except SQLAlchemyError as exc:
            raise self.error(exc) from None

    def note(self, row: dict, values: dict) -> bool:
        """Record what needs no delivery (a later end not re-posted, an incident now over); False when
        another run changed the row since it was read."""
        try:
            with self.engine.begin() as conn:
                done = conn.execute(sa.update(LEDGER).where(LEDGER.c.id == row["id"], LEDGER.c.version == row["version"],
                                                            LEDGER.c.claim.is_(None))
                                    .values(**values, version=LEDGER.c.version + 1))
        except SQLAlchemyError as exc:
            raise self.error(exc) from None
        return done.rowcount == 1


# -- what a sink is asked to deliver -------------------------------------------------------------
@dataclass
class Alert:
    """One alert of one sink: an incident (webhook) or one KPI of it (Alertmanager)."""

    key: str
    incident_key: str
    kpis: list[str]
    start: pd.Timestamp
    end: pd.Timestamp
    record: dict  # the incident record
    kpi: dict | None = None  # its per_kpi entry (Alertmanager)

    def merge(self, other: Alert) -> None:
        """Two records of one ledger alert (a rescored day that split an incident): one alert spanning both."""
        self.start, self.end = min(self.start, other.start), max(self.end, other.end)
        self.kpis = list(dict.fromkeys([*self.kpis, *other.kpis]))
        if other.record["severity"] > self.record["severity"]:
            self.record, self.kpi = other.record, other.kpi


class _Sink(abc.ABC):
    """What both sinks share: the ledger, the clock, the counts; each says where it posts and how an
    incident splits into its alerts."""

    name = ""

    def __init__(self, cfg: AlertParams, ledger: Ledger, gap: pd.Timedelta, now: pd.Timestamp,
                 report_url: str | None):
        self.cfg, self.ledger, self.gap, self.now, self.report_url = cfg, ledger, gap, now, report_url
        self.url = self.endpoint()
        self.counts = {k: 0 for k in OUTCOMES}
        self.ids: dict[str, list[str]] = {k: [] for k in OUTCOMES}

    @abc.abstractmethod
    def endpoint(self) -> str: ...

    def summary(self) -> dict:
        return {"url": shown_url(self.url), **self.counts,
                "incidents": {k: list(dict.fromkeys(v)) for k, v in self.ids.items()}}

    def count(self, outcome: str, alert: Alert) -> None:
        self.counts[outcome] += 1
        self.ids[outcome].append((alert.record or {}).get("id") or alert.incident_key)

    def over_since(self, seen: set[str]) -> list[Alert]:
        """The ledger's firing alerts that are over now and not in this push (nothing new of them came)."""
        rows = self.ledger.rows(self.name, sa.and_(LEDGER.c.status == FIRING,
                                                   LEDGER.c.end_at <= _db(self.now - self.gap)))
        return [(Alert(r["alert_key"], r["incident_key"], r["kpis"], r["start_at"], r["end_at"], r["payload"]), r)
                for r in rows if r["alert_key"] not in seen]

    @abc.abstractmethod
    def push(self, found: list[dict]) -> dict: ...

    def alerts(self, found: list[dict]) -> tuple[list[Alert], dict[str, dict]]:
        """The alerts of ``found`` keyed as the ledger knows them, and the ledger's rows of those keys."""
        if found:
            cutoff = min(pd.Timestamp(i["start"]) for i in found) - self.gap
            recent = self.ledger.rows(self.name, LEDGER.c.end_at >= _db(cutoff))
        else:
            recent = []
        keys = incident_keys(recent, found, self.gap)
        wanted: dict[str, Alert] = {}
        for incident in found:
            for alert in self.split(incident, keys[incident["id"]]):
                if alert.key in wanted:
                    wanted[alert.key].merge(alert)
                else:
                    wanted[alert.key] = alert
        rows = {r["alert_key"]: r for r in self.ledger.rows(self.name, LEDGER.c.incident_key.in_(sorted(set(keys.values()))))
                } if keys else {}
        return list(wanted.values()), rows

    @abc.abstractmethod
    def split(self, incident: dict, incident_key: str) -> list[Alert]: ...

    def over(self, end: pd.Timestamp) -> bool:
        return self.now >= end + self.gap

    def url_of(self, record: dict) -> str | None:
        if self.report_url is not None:
            return self.report_url
        template = self.cfg.report_url
        return template.format(day=pd.Timestamp(record["start"]).date().isoformat()) if template else None

    def post(self, body, headers: dict | None = None) -> int:
        """POST ``body`` as JSON with bounded retries; the attempts it took, or :class:`_Undelivered`."""
        import requests

        last = ""
        for attempt in range(1, self.cfg.max_attempts + 1):
            if attempt > 1:
                time.sleep(self.cfg.retry_backoff_s * 2 ** (attempt - 2))
            try:
                with requests.post(self.url, json=body, headers=headers, timeout=self.cfg.timeout_s,
                                   allow_redirects=False, stream=True) as resp:
                    if resp.status_code < 300:
                        return attempt
                    text = " ".join(resp.raw.read(ERROR_BODY_BYTES, decode_content=True)
                                    .decode("utf-8", "replace").split())
                    last = f"HTTP {resp.status_code} {resp.reason}: {text or '(empty body)'}"
                    if resp.status_code < 500 and resp.status_code != 429:  # the payload, not the server: no retry
                        raise _Undelivered(attempt, "sink_accepts", f"refused the alert ({last})")
            except requests.RequestException as exc:
                last = f"{type(exc).__name__}: {' '.join(str(exc).split())[:ERROR_BODY_BYTES]}"
        raise _Undelivered(self.cfg.max_attempts, "sink_reachable",
                           f"no success in {self.cfg.max_attempts} attempt(s) of at most {self.cfg.timeout_s:g}s "
                           f"(back-off {self.cfg.retry_backoff_s:g}s, doubling); last: {last}")

    def failed(self, exc: _Undelivered) -> AlertError:
        what = (f"{self.counts['sent'] + self.counts['updated']} alert(s) delivered before are recorded" if
                self.counts["sent"] + self.counts["updated"] else "nothing was delivered to it")
        return AlertError(f"{self.name} sink {shown_url(self.url)}", exc.rule,
                          f"{exc.detail}; {what}, and the ledger ({self.ledger.shown}) resends the undelivered "
                          "alert(s) on the next run (kpiguard alert --date D, or the next scoring run)")


class _Undelivered(Exception):
    def __init__(self, attempts: int, rule: str, detail: str):
        super().__init__(detail)
        self.attempts, self.rule, self.detail = attempts, rule, detail


def incident_keys(rows: list[dict], found: list[dict], gap: pd.Timedelta) -> dict[str, str]:
    """Each incident's ledger key: the key of the ledger incident it continues (a KPI in common, and
    overlapping or at most ``gap`` apart), else its own id. ``found`` in start order, so an incident of
    this push continues an earlier one of the same push too (a range of days pushed at once)."""
    spans: dict[str, list] = {}
    for r in rows:
        kpis, start, end = spans.setdefault(r["incident_key"], [set(), r["start_at"], r["end_at"]])
        spans[r["incident_key"]] = [kpis | set(r["kpis"]), min(start, r["start_at"]), max(end, r["end_at"])]
    keys = {}
    for incident in found:
        kpis, start, end = set(incident["kpis"]), pd.Timestamp(incident["start"]), pd.Timestamp(incident["end"])
        continues = [k for k, (ks, s, e) in spans.items() if kpis & ks and start <= e + gap and end >= s - gap]
        key = min(continues, key=lambda k: (spans[k][1], k)) if continues else incident["id"]
        ks, s, e = spans.get(key, [set(), start, end])
        spans[key] = [ks | kpis, min(s, start), max(e, end)]
        keys[incident["id"]] = key
    return keys


# -- Alertmanager ---------------------------------------------------------------------------------
class AlertmanagerSink(_Sink):
    name = ALERTMANAGER

    def endpoint(self) -> str:
        return self.cfg.alertmanager.url.rstrip("/") + ALERTS_API

    def split(self, incident: dict, incident_key: str) -> list[Alert]:
        return [Alert(f"{incident_key}/{hashlib.sha256(k['kpi_id'].encode()).hexdigest()[:16]}", incident_key,
                      [k["kpi_id"]], pd.Timestamp(k.get("start", incident["start"])),
                      pd.Timestamp(k.get("end", incident["end"])), incident, k)
                for k in incident["per_kpi"]]

    def labels(self, alert: Alert) -> dict[str, str]:
        bucket = "critical" if alert.kpi["severity"] >= self.cfg.critical_severity else "warning"
        return {**self.cfg.labels, "alertname": self.cfg.alertname, "kpi": alert.kpi["kpi_id"],
                "detector": str(alert.record.get("detector") or "unknown"), "severity": bucket}

    def push(self, found: list[dict]) -> dict:
        alerts, rows = self.alerts(found)
        for alert, row in self.over_since({a.key for a in alerts}):  # Alertmanager resolved them at endsAt
            self.count("resolved" if self.ledger.note(row, {"status": RESOLVED}) else "busy", alert)
        todo = []  # (alert, row, outcome, token)
        for alert in alerts:
            row = rows.get(alert.key)
            if row is not None and row["status"] is not None:
                start, end = min(alert.start, row["start_at"]), max(alert.end, row["end_at"])
                if (start, end) == (row["start_at"], row["end_at"]):
                    if row["status"] == FIRING and self.over(end):  # Alertmanager resolved it at endsAt
                        self.count("resolved" if self.ledger.note(row, {"status": RESOLVED}) else "busy", alert)
                    else:
                        self.count("unchanged", alert)
                    continue
                alert.start, alert.end = start, end
            token, claimed = self.ledger.claim(self.name, alert, row)
            if token is None:
                self.count("busy", alert)
                continue
            outcome = "sent" if claimed["status"] is None else "updated"
            todo.append((alert, claimed, outcome, token))
        if not todo:
            return self.summary()
        bodies = [self.body(alert, row["labels"] or self.labels(alert)) for alert, row, _, _ in todo]
        try:
            attempts = self.post(bodies)
        except _Undelivered as exc:
            for alert, _, _, token in todo:
                self.ledger.undelivered(self.name, alert.key, token, exc.attempts, exc.detail)
            raise self.failed(exc) from None
        for (alert, _, outcome, token), body in zip(todo, bodies):
            self.ledger.delivered(self.name, alert.key, token, attempts, {
                "incident_key": alert.incident_key, "kpis": json.dumps(alert.kpis), "labels": json.dumps(body["labels"]),
                "start_at": _db(alert.start), "end_at": _db(alert.end), "payload": json.dumps(alert.record),
                "status": RESOLVED if self.over(alert.end) else FIRING})
            self.count(outcome, alert)
        return self.summary()

    def body(self, alert: Alert, labels: dict[str, str]) -> dict:
        record, k, url = alert.record, alert.kpi, self.url_of(alert.record)
        values = {"expected": k.get("expected"), "expected_low": k.get("expected_low"),
                  "expected_high": k.get("expected_high"), "observed": k.get("observed")}
        annotations = {"summary": kpi_line(k), "description": description(record, k, url), "incident": record["id"],
                       **{name: repr(float(v)) for name, v in values.items() if v is not None},
                       "peak_at": k["peak_at"], **({"report_url": url} if url else {})}
        return {"labels": labels, "annotations": annotations, "startsAt": alert.start.isoformat(),
                "endsAt": (alert.end + self.gap).isoformat(), **({"generatorURL": url} if url else {})}


# -- the webhook ----------------------------------------------------------------------------------
class WebhookSink(_Sink):
    name = WEBHOOK

    def endpoint(self) -> str:
        return self.cfg.webhook.url

    def split(self, incident: dict, incident_key: str) -> list[Alert]:
        return [Alert(incident_key, incident_key, list(incident["kpis"]), pd.Timestamp(incident["start"]),
                      pd.Timestamp(incident["end"]), incident)]

    def headers(self) -> dict[str, str]:
        env = self.cfg.webhook.auth_header_env
        if env is None:
            return {}
        value = os.environ.get(env)
        if not value:
            raise AlertError(f"{self.name} sink {shown_url(self.url)}", "auth_header_env",
                             f"alerts.webhook.auth_header_env names the environment variable {env}, which is not "
                             "set (or empty); set it to the Authorization header's value, or set auth_header_env "
                             "to null; nothing was sent to this sink")
        return {"Authorization": value}

    def push(self, found: list[dict]) -> dict:
        headers = self.headers()  # a missing secret fails before anything is claimed
        alerts, rows = self.alerts(found)
        seen = set()
        for alert in alerts:
            seen.add(alert.key)
            row = rows.get(alert.key)
            if row is None or row["status"] is None:
                self.deliver(alert, row, "sent", RESOLVED if self.over(alert.end) else FIRING, headers)
                continue
            start, end = min(alert.start, row["start_at"]), max(alert.end, row["end_at"])
            kpis = list(dict.fromkeys([*row["kpis"], *alert.kpis]))
            grown = (start, end) != (row["start_at"], row["end_at"]) or len(kpis) > len(row["kpis"])
            alert.start, alert.end, alert.kpis = start, end, kpis
            if row["status"] == FIRING and self.over(end):
                self.resolve(alert, row, headers, grown)
            elif grown:  # a continuing incident: recorded, not posted again
                noted = self.ledger.note(row, {"start_at": _db(start), "end_at": _db(end), "kpis": json.dumps(kpis),
                                               "payload": json.dumps(alert.record)})
                self.count("updated" if noted else "busy", alert)
            else:
                self.count("unchanged", alert)
        for alert, row in self.over_since(seen):
            self.resolve(alert, row, headers, False)
        return self.summary()

    def resolve(self, alert: Alert, row: dict, headers: dict, grown: bool) -> None:
        if self.cfg.webhook.send_resolved:
            self.deliver(alert, row, "resolved", RESOLVED, headers)
        else:
            noted = self.ledger.note(row, {"status": RESOLVED, "start_at": _db(alert.start), "end_at": _db(alert.end),
                                           "kpis": json.dumps(alert.kpis), "payload": json.dumps(alert.record)})
            self.count("resolved" if noted else "busy", alert)
        if grown:
            self.counts["updated"] += 1
            self.ids["updated"].append(alert.record["id"])

    def deliver(self, alert: Alert, row: dict | None, outcome: str, status: str, headers: dict) -> None:
        token, _ = self.ledger.claim(self.name, alert, row)
        if token is None:
            self.count("busy", alert)
            return
        url = self.url_of(alert.record)
        body = {"text": slack_text(alert.record, status, url, self.gap), "status": status,
                "incident": alert.record, "report_url": url}
        try:
            attempts = self.post(body, headers)
        except _Undelivered as exc:
            self.ledger.undelivered(self.name, alert.key, token, exc.attempts, exc.detail)
            raise self.failed(exc) from None
        self.ledger.delivered(self.name, alert.key, token, attempts, {
            "incident_key": alert.incident_key, "kpis": json.dumps(alert.kpis), "start_at": _db(alert.start),
            "end_at": _db(alert.end), "payload": json.dumps(alert.record), "status": status})
        self.count(outcome, alert)


# -- texts ---------------------------------------------------------------------------------------
def kpi_line(k: dict) -> str:
    """One line on one KPI of an incident: observed vs expected band, severity."""
    if k.get("expected") is None:
        band = "expected unknown"
    else:
        band = f"expected {_v(k['expected'])} ({_v(k.get('expected_low'))} – {_v(k.get('expected_high'))})"
    return f"{k['kpi_id']}: observed {_v(k.get('observed'))} vs {band}, severity {k['severity']:.1f}× its threshold"


def description(record: dict, k: dict, url: str | None) -> str:
    text = (f"kpiguard incident {record['id']} on {', '.join(record['kpis'])}: {record['points']} flagged points "
            f"in {record['spans']} spans from {_clock(record['start'])} to {_clock(record['end'])} UTC, detector "
            f"{record.get('detector') or 'unknown'}. {k['kpi_id']} peaked at {_clock(k['peak_at'])} UTC with score "
            f"{k['peak_score']:.3g} (threshold {k['threshold']:.3g}).")
    return text + (f" Report: {url}" if url else "")


def slack_text(record: dict, status: str, url: str | None, gap: pd.Timedelta) -> str:
    """One Slack paragraph (mrkdwn) on an incident: its KPIs, the worst one's values, when, the report."""
    worst = record["per_kpi"][0]
    head = (f":white_check_mark: *kpiguard* incident {record['id']} is over (no anomaly for {_gap(gap)} after "
            f"{_clock(record['end'])} UTC)" if status == RESOLVED else
            f":rotating_light: *kpiguard* incident {record['id']}")
    others = len(record["kpis"]) - 1
    also = f" (and {others} more KPI{'s' if others > 1 else ''}: {', '.join(record['kpis'][1:])})" if others else ""
    link = f" <{url}|Report>" if url else ""
    return (f"{head}: {kpi_line(worst)}{also}; from {_clock(record['start'])} to {_clock(record['end'])} UTC, "
            f"detector {record.get('detector') or 'unknown'}.{link}")


def _v(value) -> str:
    return "unknown" if value is None else f"{float(value):.4g}"


def _clock(iso: str) -> str:
    return pd.Timestamp(iso).tz_convert("UTC").strftime("%Y-%m-%d %H:%M")


def _gap(gap: pd.Timedelta) -> str:
    minutes = gap.total_seconds() / 60
    return f"{minutes:g} min"


def _db(ts: pd.Timestamp) -> dt.datetime:
    """A UTC datetime for the ledger (SQLite keeps it without offset, PostgreSQL as timestamptz)."""
    return utc_timestamp(ts).to_pydatetime()


def _wall() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
