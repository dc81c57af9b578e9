"""Mute rules: a false alarm the reviewers dismissed again and again stops paging, once one of them says so.

As with Elastic ML's custom rules and OpenSearch AD's suppression rules, a rule describes a *pattern*
of an alarm, not a time range: a KPI, a direction and a time of day (UTC), plus the severity up to which
it applies, so a much larger excursion at the same hour still alerts.

- The **pattern** of a KPI incident (one KPI's part of an incident record,
  :func:`pipeline.batch.incidents.incidents`): its ``kpi_id``; its direction, "up" when the value observed
  at its peak is above ``expected``, "down" when below, "any" when ``expected`` is unknown (or equal);
  and its span's time of day, ``start`` – ``end`` widened by ``reviews.mute_tolerance`` on both sides.
- A **suggestion** (:func:`suggestions`): two or more latest ``false_alarm`` verdicts on one KPI and
  direction, given on different days, whose widened windows overlap: the union of those windows, and
  the highest severity among them (rounded up to 2 decimals). It mutes nothing.
- A **rule**, confirmed by a reviewer (``kpiguard review mute``, kept in the review store), mutes a KPI
  incident of its KPI whose direction is its own (a rule "any" takes every direction; a KPI incident
  "any" only such a rule), whose span lies within its window, and whose severity is at most its
  ``max_severity`` (:func:`mute_matches`). An incident is muted when every one of its KPIs is
  (:func:`apply_mutes`); muted incidents are reported apart and not alerted.

Windows are arcs of the day in whole minutes: ``from`` and ``to`` are ``HH:MM``, ``from`` after ``to``
wraps past midnight (22:30 – 01:00), ``to`` 24:00 with ``from`` 00:00 is the whole day, and both ends
are inclusive. Pure functions of dicts and frames, so the rules are tested exactly.

The rules live in the review store (``reviews.store``), in :data:`RULE_ROWS`, which the store's schema
version 2 creates and :class:`pipeline.review.store.ReviewStore` writes. They are defined here, below
both of their users, because the batch reports and alerts read them too (:func:`read_active_rules`),
read-only: a store that does not exist yet, or has no rules table yet, simply has no rules.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from pipeline.data.contract import utc_timestamp
from pipeline.data.review_labels import FALSE_ALARM
from pipeline.errors import ReviewError

UP, DOWN, ANY = "up", "down", "any"
DIRECTIONS = (UP, DOWN, ANY)
DAY_MINUTES = 24 * 60
DAY_SECONDS = DAY_MINUTES * 60
_CLOCK = re.compile(r"(\d{1,2}):(\d{2})")

RULE_ROWS = sa.Table(
    "kpiguard_review_mutes", sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kpi_id", sa.String(512), nullable=False),
    sa.Column("direction", sa.String(8), nullable=False),
    sa.Column("from_time", sa.String(5), nullable=False),  # HH:MM, UTC
    sa.Column("to_time", sa.String(5), nullable=False),
    sa.Column("max_severity", sa.Float, nullable=False),
    sa.Column("reviewer", sa.String(128), nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("incident_ids", sa.Text, nullable=False),  # JSON list: the dismissed incidents it was made from
    # soft delete: a lifted rule stays on record, with who lifted it and when
    sa.Column("disabled_at", sa.DateTime),
    sa.Column("disabled_by", sa.String(128)),
)


# -- patterns -------------------------------------------------------------------------------------
def direction_of(kpi_incident: dict) -> str:
    """"up", "down" or "any" (unknown expected value, or observed exactly as expected)."""
    if kpi_incident.get("direction") in DIRECTIONS:  # a stored verdict's pattern already says
        return kpi_incident["direction"]
    observed, expected = kpi_incident.get("observed"), kpi_incident.get("expected")
    if observed is None or expected is None or observed == expected:
        return ANY
    return UP if observed > expected else DOWN


def window_of(start, end, tolerance: str | pd.Timedelta) -> tuple[int, int]:
    """(from, to) in minutes of the day of the span ``start`` – ``end`` widened by ``tolerance`` on both
    sides, rounded outwards to whole minutes; (0, 1440) when it covers the whole day."""
    start, end, tolerance = utc_timestamp(start), utc_timestamp(end), pd.Timedelta(tolerance)
    first, last = (start - tolerance).floor("min"), (end + tolerance).ceil("min")
    if last - first >= pd.Timedelta(days=1):
        return 0, DAY_MINUTES
    return int(_seconds_of_day(first) // 60), int(_seconds_of_day(last) // 60)


def _length(start: int, end: int) -> int:
    """Minutes from ``start`` to ``end`` along the day (``end`` 1440: to midnight)."""
    if end == DAY_MINUTES:
        return DAY_MINUTES - start
    return (end - start) % DAY_MINUTES


# -- matching -------------------------------------------------------------------------------------
def mute_matches(rule: dict, kpi_incident: dict) -> bool:
    """Whether ``rule`` (``kpi_id``, ``direction``, ``from``, ``to``, ``max_severity``) mutes ``kpi_incident``
    (``kpi_id``, ``start``, ``end``, ``severity`` and ``observed`` / ``expected`` or ``direction``)."""
    if str(rule["kpi_id"]) != str(kpi_incident["kpi_id"]):
        return False
    if rule["direction"] != ANY and rule["direction"] != direction_of(kpi_incident):
        return False
    severity = kpi_incident.get("severity")
    if severity is None or not float(severity) <= float(rule["max_severity"]):  # NaN never matches
        return False
    return within(kpi_incident["start"], kpi_incident["end"], clock_minutes(rule["from"]), clock_minutes(rule["to"]))


def within(start, end, window_from: int, window_to: int) -> bool:
    """Whether the span ``start`` – ``end`` lies, by time of day, in the window (minutes, both inclusive)."""
    start, end = utc_timestamp(start), utc_timestamp(end)
    span = (end - start).total_seconds()
    window = _length(window_from, window_to) * 60
    if window_from == 0 and window_to == DAY_MINUTES:
        return span < DAY_SECONDS  # the whole day, though not a span longer than a day
    offset = (_seconds_of_day(start) - window_from * 60) % DAY_SECONDS
    return offset + span <= window


def apply_mutes(found: list[dict], rules: Iterable[dict]) -> tuple[list[dict], list[dict]]:
    """(kept, muted) of the incident records ``found``, both in their order. A muted record is the incident
    with ``muted_by``: the rules that mute it (each KPI's first matching rule, in rule order), without
    duplicates. An incident some of whose KPIs match and others do not is kept unchanged: it still
    alerts, on all of them."""
    rules = list(rules)
    kept, muted = [], []
    for incident in found:
        per_kpi = incident.get("per_kpi") or []
        matched = [next((r for r in rules if mute_matches(r, k)), None) for k in per_kpi]
        if rules and per_kpi and all(matched):
            by_id = {r["id"]: r for r in matched}
            muted.append({**incident, "muted_by": [rule_summary(r) for r in by_id.values()]})
        else:
            kept.append(incident)
    return kept, muted


def rule_summary(rule: dict) -> dict:
    """The part of a rule a report shows beside what it muted."""
    return {k: rule.get(k) for k in ("id", "kpi_id", "direction", "from", "to", "max_severity", "reviewer", "note")}


def describe(rule: dict) -> str:
    """``#3 cpu up 02:00–03:00, severity ≤ 2.5 (ann)``: one line naming a rule."""
    who = f" ({rule['reviewer']})" if rule.get("reviewer") else ""
    number = f"#{rule['id']} " if rule.get("id") is not None else ""
    return (f"{number}{rule['kpi_id']} {rule['direction']} {rule['from']}–{rule['to']} UTC, "
            f"severity ≤ {rule['max_severity']:g}{who}")


# -- suggestions ----------------------------------------------------------------------------------
def suggestions(verdicts: pd.DataFrame, rules: Iterable[dict], tolerance: str | pd.Timedelta) -> list[dict]:
    """The mute rules the latest verdicts (:meth:`ReviewStore.verdicts`) suggest, most dismissals first.

    Per KPI and direction, the windows (:func:`window_of`) of its latest ``false_alarm`` verdicts are
    joined where they overlap; each joined window holding dismissals of two days or more is a suggestion:
    ``kpi_id``, ``direction``, ``from``, ``to``, ``max_severity``, ``days``, ``incidents`` and ``verdicts``
    (the verdict row ids) it comes from, and ``command``, the ``kpiguard review mute`` that confirms it.
    Verdict rows without a pattern (``direction`` or ``severity`` empty: given before schema version 2)
    take no part; a suggestion whose every dismissal an active rule already mutes is left out."""
    rules = [r for r in rules if r.get("disabled_at") is None]
    if verdicts.empty or "direction" not in verdicts:
        return []
    dismissed = verdicts[(verdicts["verdict"] == FALSE_ALARM) & verdicts["direction"].notna()
                         & verdicts["severity"].notna()]
    found = []
    for (kpi, direction), part in dismissed.groupby(["kpi_id", "direction"], sort=True):
        members = [{"row": int(r.id), "incident": str(r.incident_id), "day": str(r.day), "kpi_id": str(kpi),
                    "direction": str(direction), "start": r.start_at, "end": r.end_at, "severity": float(r.severity),
                    "window": window_of(r.start_at, r.end_at, tolerance)} for r in part.itertuples(index=False)]
        for (start, end), group in _joined(members):
            if len({m["day"] for m in group}) < 2:
                continue
            if rules and all(any(mute_matches(rule, m) for rule in rules) for m in group):
                continue
            suggestion = {"kpi_id": str(kpi), "direction": str(direction), "from": clock_text(start),
                          "to": clock_text(end), "max_severity": _ceil2(max(m["severity"] for m in group)),
                          "days": sorted({m["day"] for m in group}),
                          "incidents": list(dict.fromkeys(m["incident"] for m in group)),
                          "verdicts": [m["row"] for m in group]}
            found.append({**suggestion, "command": command(suggestion)})
    return sorted(found, key=lambda s: (-len(s["verdicts"]), s["kpi_id"], s["direction"], s["from"]))


def _joined(members: list[dict]) -> list[tuple[tuple[int, int], list[dict]]]:
    """The windows of ``members`` joined where they overlap or touch, each with the members in it."""
    pieces = []  # linear pieces of the day, [a, b] in minutes; a window past midnight is two
    for i, m in enumerate(members):
        start, end = m["window"]
        length = _length(start, end)
        if start + length <= DAY_MINUTES:
            pieces.append([start, start + length, {i}])
        else:
            pieces += [[start, DAY_MINUTES, {i}], [0, start + length - DAY_MINUTES, {i}]]
    pieces.sort(key=lambda p: (p[0], p[1]))
    merged: list[list] = []
    for piece in pieces:
        if merged and piece[0] <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], piece[1])
            merged[-1][2] |= piece[2]
        else:
            merged.append(piece)
    if len(merged) > 1 and merged[0][0] == 0 and merged[-1][1] == DAY_MINUTES:  # one window across midnight
        last = merged.pop()
        if last[0] <= merged[0][1]:
            merged = [[0, DAY_MINUTES, set().union(*(p[2] for p in [last, *merged]))]]
        else:
            merged[0] = [last[0], merged[0][1], last[2] | merged[0][2]]
    out = []
    for start, end, ids in merged:
        if (start, end) != (0, DAY_MINUTES):
            end %= DAY_MINUTES  # up to midnight: 00:00, as any window past it; 24:00 is the whole day's
        out.append(((start, end), [members[i] for i in sorted(ids)]))
    return out


def command(rule: dict) -> str:
    """The ``kpiguard review mute`` that confirms ``rule`` (a suggestion)."""
    import shlex

    parts = ["kpiguard", "review", "mute", "--kpi", rule["kpi_id"], "--direction", rule["direction"],
             "--from", rule["from"], "--to", rule["to"], "--max-severity", repr(float(rule["max_severity"]))]  # every digit: the bound must not shrink
    if rule.get("incidents"):
        parts += ["--incidents", ",".join(rule["incidents"])]
    return " ".join(shlex.quote(p) for p in parts)


def _ceil2(value: float) -> float:
    """Rounded up to 2 decimals, so that what the rule was made of stays within its bound."""
    return math.ceil(round(value * 100, 6)) / 100


# -- checked input --------------------------------------------------------------------------------
def clock_minutes(text: str, field: str = "from", where: str = "mute rule", end: bool = True) -> int:
    """Minutes of the day of ``HH:MM`` (``24:00`` only where ``end``); a ReviewError (rule
    ``mute_time_of_day``) naming ``field`` otherwise."""
    m = _CLOCK.fullmatch(str(text).strip()) if text is not None else None
    minutes = int(m[1]) * 60 + int(m[2]) if m and int(m[2]) < 60 else None
    if minutes is None or minutes > DAY_MINUTES or (minutes == DAY_MINUTES and not end):
        raise ReviewError(where, "mute_time_of_day", f"{field} {text!r} is not a time of day HH:MM (UTC, 00:00 – "
                          f"{'24:00' if end else '23:59'})")
    return minutes


def clock_text(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def checked_rule(kpi, direction, window_from, window_to, max_severity) -> dict:
    """``kpi_id``, ``direction``, ``from``, ``to`` (``HH:MM``) and ``max_severity`` as given, checked; a
    ReviewError naming the field and the rule it broke otherwise."""
    kpi = str(kpi or "").strip()
    where = f"mute rule on {kpi!r}" if kpi else "mute rule"
    if not kpi:
        raise ReviewError(where, "kpi_given", "the KPI is empty (--kpi)")
    if direction not in DIRECTIONS:
        raise ReviewError(where, "mute_direction_known", f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
    start = clock_minutes(window_from, "from", where, end=False)
    end = clock_minutes(window_to, "to", where)
    if end == DAY_MINUTES and start != 0:
        end = 0  # to midnight, the same minute
    try:
        bound = float(max_severity)
    except (TypeError, ValueError):
        bound = math.nan
    if not math.isfinite(bound) or bound < 0:
        raise ReviewError(where, "mute_severity_bound", f"max_severity {max_severity!r} is not a number >= 0 "
                          "(a KPI incident at most this many times its threshold is muted)")
    return {"kpi_id": kpi, "direction": direction, "from": clock_text(start), "to": clock_text(end),
            "max_severity": bound}


# -- the stored rules -------------------------------------------------------------------------------
def rule_record(row: dict) -> dict:
    """A row of :data:`RULE_ROWS` as the functions above take it (ISO times, UTC)."""
    return {"id": int(row["id"]), "kpi_id": row["kpi_id"], "direction": row["direction"], "from": row["from_time"],
            "to": row["to_time"], "max_severity": float(row["max_severity"]), "reviewer": row["reviewer"],
            "note": row["note"], "created_at": _iso(row["created_at"]),
            "incidents": json.loads(row["incident_ids"] or "[]"), "disabled_at": _iso(row.get("disabled_at")),
            "disabled_by": row.get("disabled_by")}


def read_active_rules(url: str) -> list[dict]:
    """The active rules of the review store at ``url`` (a SQLAlchemy URL), oldest first, without creating
    or migrating anything: a SQLite file that does not exist, or a store without the rules table (schema
    version 1), has none. A store that cannot be read is a ReviewError (rule ``review_store_reachable``)."""
    parsed = sa.engine.make_url(url)
    if parsed.drivername.startswith("sqlite") and (parsed.database in (None, "", ":memory:")
                                                   or not Path(parsed.database).is_file()):
        return []  # connecting would create the file
    shown = parsed.render_as_string(hide_password=True)
    try:
        engine = sa.create_engine(parsed)
        try:
            with engine.connect() as conn:
                if not sa.inspect(conn).has_table(RULE_ROWS.name):
                    return []
                rows = conn.execute(sa.select(RULE_ROWS).where(RULE_ROWS.c.disabled_at.is_(None))
                                    .order_by(RULE_ROWS.c.id)).mappings().all()
        finally:
            engine.dispose()
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        raise ReviewError(f"review store {shown} (reviews.store)", "review_store_reachable",
                          f"{type(reason).__name__}: {' '.join(str(reason).split())[:300]}") from None
    return [rule_record(dict(r)) for r in rows]


def _iso(value) -> str | None:
    return None if value is None else utc_timestamp(value).isoformat()


def _seconds_of_day(stamp: pd.Timestamp) -> float:
    return (stamp - stamp.normalize()).total_seconds()
