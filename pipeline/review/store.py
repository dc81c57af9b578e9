"""The review store: people's verdicts on incidents, the anomalies they report as missed, and the days
they have reviewed. SQLite by default (``reviews.store``: ``sqlite:///reviews.db``), PostgreSQL in a
deployment, through SQLAlchemy.

Append-only: a new verdict on an incident does not overwrite the old one, it is a new row, and the
latest per (incident, KPI) is the one that counts (:meth:`ReviewStore.verdicts`), so who changed their
mind, and when, stays on record. Every write is one transaction. Each verdict row keeps the pattern of
the alarm it was given on (direction, severity, peak time: schema version 2), from which
:mod:`pipeline.data.review_mutes` suggests mute rules; the rules a reviewer confirms are kept here too, and
lifting one disables it rather than deleting it.

The schema is the code's: :data:`SCHEMA_VERSION` and :data:`MIGRATIONS` (one function per version,
applied in order inside one transaction, recorded in ``kpiguard_review_schema``). A store written by a
newer kpiguard is refused rather than guessed at.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from pipeline.data import review_mutes as mutes_mod
from pipeline.data.review_labels import FALSE_ALARM, VERDICTS
from pipeline.data.review_mutes import RULE_ROWS as MUTE_ROWS
from pipeline.errors import ReviewError

METADATA = sa.MetaData()
SCHEMA = sa.Table("kpiguard_review_schema", METADATA, sa.Column("version", sa.Integer, primary_key=True))


def _verdict_table(metadata: sa.MetaData, *added: sa.Column) -> sa.Table:
    return sa.Table(
        "kpiguard_review_verdicts", metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("incident_id", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        sa.Column("kpi_id", sa.String(512), nullable=False),
        # the KPI's span in the incident when the verdict was given: the labels do not depend on re-scoring
        sa.Column("start_at", sa.DateTime, nullable=False),
        sa.Column("end_at", sa.DateTime, nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        *added,
        sa.Index("ix_kpiguard_review_verdicts_incident", "incident_id", "kpi_id"),
    )


def _pattern_columns() -> list[sa.Column]:
    """Schema version 2: the pattern of the alarm a verdict was given on (pipeline.data.review_mutes); rows
    written before it have none, and never suggest a mute."""
    return [sa.Column("direction", sa.String(8)), sa.Column("severity", sa.Float), sa.Column("peak_at", sa.DateTime)]


VERDICT_ROWS = _verdict_table(METADATA, *_pattern_columns())
MISS_ROWS = sa.Table(
    "kpiguard_review_misses", METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kpi_id", sa.String(512), nullable=False),
    sa.Column("start_at", sa.DateTime, nullable=False),
    sa.Column("end_at", sa.DateTime, nullable=False),
    sa.Column("note", sa.Text),
    sa.Column("reviewer", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
DAY_ROWS = sa.Table(
    "kpiguard_review_days", METADATA,
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("reviewer", sa.String(128), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)


def _v1(conn) -> None:
    # the verdicts as version 1 had them: version 2 adds its columns to existing stores and new ones alike
    METADATA.create_all(conn, tables=[MISS_ROWS, DAY_ROWS])
    _verdict_table(sa.MetaData()).create(conn)


def _v2(conn) -> None:
    for column in _pattern_columns():
        conn.execute(sa.text(f"ALTER TABLE {VERDICT_ROWS.name} ADD COLUMN {column.name} "
                             f"{column.type.compile(conn.dialect)}"))
    MUTE_ROWS.create(conn)


MIGRATIONS = {1: _v1, 2: _v2}  # version -> the step that brings the schema from version - 1 to it
SCHEMA_VERSION = max(MIGRATIONS)


class ReviewStore:
    """The store at ``url`` (a SQLAlchemy URL), created or migrated to :data:`SCHEMA_VERSION` on open."""

    def __init__(self, url: str):
        parsed = sa.engine.make_url(url)
        self.shown = self.shown_url(url)
        try:
            if parsed.drivername.startswith("sqlite") and parsed.database not in (None, "", ":memory:"):
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = sa.create_engine(parsed)
            self._migrate()
        except (SQLAlchemyError, OSError) as exc:
            raise self.error(exc, "review_store_reachable") from None

    @staticmethod
    def shown_url(url: str) -> str:
        """``url`` with its password hidden: what messages and exported files may show."""
        return sa.engine.make_url(url).render_as_string(hide_password=True)

    def __enter__(self) -> ReviewStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if hasattr(self, "engine"):
            self.engine.dispose()

    def error(self, exc: Exception, rule: str = "review_store_writable") -> ReviewError:
        reason = getattr(exc, "orig", None) or exc
        return ReviewError(f"review store {self.shown} (reviews.store)", rule,
                           f"{type(reason).__name__}: {' '.join(str(reason).split())[:300]}; nothing was written")

    def _migrate(self) -> None:
        for attempt in (1, 2):  # a second process may create the tables between our check and our CREATE
            try:
                with self.engine.begin() as conn:
                    SCHEMA.create(conn, checkfirst=True)
                    found = conn.execute(sa.select(sa.func.max(SCHEMA.c.version))).scalar() or 0
                    if found > SCHEMA_VERSION:
                        raise ReviewError(f"review store {self.shown} (reviews.store)", "review_schema_version",
                                          f"it has schema version {found}, this kpiguard knows up to "
                                          f"{SCHEMA_VERSION}: upgrade kpiguard rather than write to it")
                    for version in range(found + 1, SCHEMA_VERSION + 1):
                        MIGRATIONS[version](conn)
                        conn.execute(sa.insert(SCHEMA).values(version=version))
                return
            except (IntegrityError, sa.exc.OperationalError, sa.exc.ProgrammingError):
                if attempt == 2:
                    raise

    @property
    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(SCHEMA.c.version))).scalar() or 0)

    # -- writes ---------------------------------------------------------------------------------
    def add_verdict(self, incident: dict, verdict: str, reviewer: str, note: str | None = None,
                    kpi: str | None = None, day_incidents: list[dict] | None = None,
                    start=None, end=None) -> dict:
        """Record ``verdict`` on ``incident`` (a record of :func:`pipeline.batch.incidents.incidents`),
        on all its KPIs or on ``kpi`` only. ``day_incidents``, the day's incidents: when every one of them
        then has a verdict, the day counts as reviewed (:meth:`mark_reviewed`).

        ``start`` / ``end``: the anomaly's own extent where the reviewer sees it differ from the alarms'
        (an alarm raised after the anomaly began, or ending before it did); it must overlap the incident's
        span on each KPI it applies to. The verdict's label then covers it instead of the alarms' span, so
        the labels say when the anomaly began, not when the detector noticed."""
        if verdict not in VERDICTS:
            raise ReviewError(f"incident {incident.get('id')}", "verdict_known",
                              f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        spans = {k["kpi_id"]: k for k in incident.get("per_kpi") or []}
        if kpi is not None and kpi not in spans:
            raise ReviewError(f"incident {incident['id']}", "kpi_in_incident",
                              f"KPI {kpi!r} is not one of its KPIs ({', '.join(spans)})")
        chosen = {name: k for name, k in spans.items() if kpi is None or name == kpi}
        extent = None
        if start is not None or end is not None:
            extent = parse_range(start, end, f"the extent of incident {incident['id']}")
            for name, k in chosen.items():
                if extent[1] < _utc(k["start"]) or extent[0] > _utc(k["end"]):
                    raise ReviewError(f"incident {incident['id']}", "extent_overlaps_incident",
                                      f"{extent[0].isoformat()} – {extent[1].isoformat()} does not overlap its span "
                                      f"on {name} ({k['start']} – {k['end']})")
        day = _day(incident["start"])
        now = _now()
        rows = [{"incident_id": incident["id"], "day": day, "kpi_id": name,
                 "start_at": _db(extent[0] if extent else k["start"]), "end_at": _db(extent[1] if extent else k["end"]),
                 "verdict": verdict, "note": note, "reviewer": _reviewer(reviewer), "created_at": now,
                 **_pattern(k)}
                for name, k in chosen.items()]
        try:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(VERDICT_ROWS), rows)
                if day_incidents is not None:
                    answered = set(conn.execute(sa.select(VERDICT_ROWS.c.incident_id).where(
                        VERDICT_ROWS.c.day == day).distinct()).scalars())
                    if {i["id"] for i in day_incidents if _day(i["start"]) == day} <= answered:
                        self._mark(conn, day, reviewer, now)
        except SQLAlchemyError as exc:
            raise self.error(exc) from None
        return {"incident": incident["id"], "verdict": verdict, "kpis": [r["kpi_id"] for r in rows], "day": day}

    def add_miss(self, kpi: str, start, end, reviewer: str, note: str | None = None) -> dict:
        """Record an anomaly the detector missed: ``kpi`` over ``[start, end]`` (UTC; naive is UTC)."""
        start_at, end_at = parse_range(start, end, f"missed anomaly on {kpi!r}")
        if not str(kpi).strip():
            raise ReviewError("missed anomaly", "kpi_given", "the KPI is empty")
        try:
            with self.engine.begin() as conn:
                new = conn.execute(sa.insert(MISS_ROWS).values(
                    kpi_id=str(kpi), start_at=_db(start_at), end_at=_db(end_at), note=note,
                    reviewer=_reviewer(reviewer), created_at=_now())).inserted_primary_key[0]
        except SQLAlchemyError as exc:
            raise self.error(exc) from None
        return {"miss": int(new), "kpi": str(kpi), "start": start_at.isoformat(), "end": end_at.isoformat()}

    def mark_reviewed(self, day, reviewer: str) -> dict:
        """Say the whole ``day`` was reviewed: what has no verdict and no reported miss on it is normal."""
        day = _day(day)
        try:
            with self.engine.begin() as conn:
                self._mark(conn, day, reviewer, _now())
        except SQLAlchemyError as exc:
            raise self.error(exc) from None
        return {"day": day, "reviewed": True}

    def add_mute(self, kpi: str, direction: str, window_from: str, window_to: str, max_severity,
                 reviewer: str, note: str | None = None, incidents: list[str] | None = None) -> dict:
        """Confirm a mute rule (:mod:`pipeline.data.review_mutes`): ``kpi`` moving ``direction`` between
        ``window_from`` and ``window_to`` (``HH:MM``, UTC), up to ``max_severity``. ``incidents``: the
        dismissed incidents it is made from (a suggestion's), each with a verdict on ``kpi``.

        Refused (ReviewError) for a KPI without a false alarm in the store, since a rule mutes a
        pattern somebody dismissed (rule ``mute_kpi_dismissed``), for an incident with no verdict on it
        (``mute_incidents_known``), and for a rule that an active one already is (``mute_rule_new``)."""
        rule = mutes_mod.checked_rule(kpi, direction, window_from, window_to, max_severity)
        where = f"mute rule on {rule['kpi_id']!r}"
        incidents = list(dict.fromkeys(i.strip() for i in incidents or [] if i and i.strip()))
        values = {"kpi_id": rule["kpi_id"], "direction": rule["direction"], "from_time": rule["from"],
                  "to_time": rule["to"], "max_severity": rule["max_severity"], "reviewer": _reviewer(reviewer),
                  "note": note, "created_at": _now(), "incident_ids": json.dumps(incidents)}
        try:
            with self.engine.begin() as conn:
                on_kpi = set(conn.execute(sa.select(VERDICT_ROWS.c.incident_id).where(
                    VERDICT_ROWS.c.kpi_id == rule["kpi_id"], VERDICT_ROWS.c.verdict == FALSE_ALARM)).scalars())
                if not on_kpi:
                    dismissed = sorted(set(conn.execute(sa.select(VERDICT_ROWS.c.kpi_id).where(
                        VERDICT_ROWS.c.verdict == FALSE_ALARM)).scalars()))
                    raise ReviewError(where, "mute_kpi_dismissed",
                                      f"no false alarm on KPI {rule['kpi_id']!r} was ever dismissed, so there is no "
                                      f"pattern to mute; KPIs with dismissals: {', '.join(dismissed[:10]) or 'none'}")
                unknown = [i for i in incidents if i not in on_kpi]
                if unknown:
                    raise ReviewError(where, "mute_incidents_known",
                                      f"incidents {', '.join(unknown)} have no false-alarm verdict on "
                                      f"{rule['kpi_id']!r} (--incidents names the dismissals the rule is made of)")
                same = conn.execute(sa.select(MUTE_ROWS.c.id).where(
                    MUTE_ROWS.c.disabled_at.is_(None), MUTE_ROWS.c.kpi_id == rule["kpi_id"],
                    MUTE_ROWS.c.direction == rule["direction"], MUTE_ROWS.c.from_time == rule["from"],
                    MUTE_ROWS.c.to_time == rule["to"], MUTE_ROWS.c.max_severity == rule["max_severity"])).first()
                if same is not None:
                    raise ReviewError(where, "mute_rule_new", f"active rule #{same[0]} is this rule already")
                new = conn.execute(sa.insert(MUTE_ROWS).values(**values)).inserted_primary_key[0]
        except SQLAlchemyError as exc:
            raise self.error(exc) from None
        return mutes_mod.rule_record({**values, "id": int(new), "disabled_at": None, "disabled_by": None})

    def disable_mute(self, rule_id, reviewer: str) -> dict:
        """Lift mute rule ``rule_id``: it stays on record, disabled, and mutes nothing from now on."""
        try:
            number = int(str(rule_id).lstrip("#"))
        except ValueError:
            raise ReviewError(f"mute rule {rule_id!r}", "mute_rule_known", "a rule id is a number, as "
                              "`kpiguard review mutes` lists them") from None
        try:
            with self.engine.begin() as conn:
                row = conn.execute(sa.select(MUTE_ROWS).where(MUTE_ROWS.c.id == number)).mappings().first()
                if row is None:
                    raise ReviewError(f"mute rule #{number}", "mute_rule_known",
                                      "there is no such rule; `kpiguard review mutes` lists them")
                if row["disabled_at"] is not None:
                    raise ReviewError(f"mute rule #{number}", "mute_rule_active",
                                      f"it was lifted already, at {row['disabled_at']:%Y-%m-%d %H:%M} UTC by "
                                      f"{row['disabled_by']}")
                done = {"disabled_at": _now(), "disabled_by": _reviewer(reviewer)}
                conn.execute(sa.update(MUTE_ROWS).where(MUTE_ROWS.c.id == number, MUTE_ROWS.c.disabled_at.is_(None))
                             .values(**done))
        except SQLAlchemyError as exc:
            raise self.error(exc) from None
        return mutes_mod.rule_record({**dict(row), **done})

    @staticmethod
    def _mark(conn, day: str, reviewer: str, now: dt.datetime) -> None:
        if conn.execute(sa.select(DAY_ROWS.c.day).where(DAY_ROWS.c.day == day)).first() is None:
            conn.execute(sa.insert(DAY_ROWS).values(day=day, reviewer=_reviewer(reviewer), created_at=now))

    # -- reads ----------------------------------------------------------------------------------
    def verdicts(self, latest: bool = True) -> pd.DataFrame:
        """Verdict rows (``latest``: the last per incident and KPI), oldest first; times UTC."""
        frame = self._read(VERDICT_ROWS)
        if latest and len(frame):
            frame = frame.drop_duplicates(["incident_id", "kpi_id"], keep="last").reset_index(drop=True)
        return frame

    def misses(self) -> pd.DataFrame:
        return self._read(MISS_ROWS)

    def mute_rules(self, active: bool = True) -> list[dict]:
        """The mute rules (``active``: those not lifted), oldest first, as :mod:`pipeline.data.review_mutes` takes them."""
        try:
            with self.engine.connect() as conn:
                query = sa.select(MUTE_ROWS).order_by(MUTE_ROWS.c.id)
                if active:
                    query = query.where(MUTE_ROWS.c.disabled_at.is_(None))
                return [mutes_mod.rule_record(dict(r)) for r in conn.execute(query).mappings().all()]
        except SQLAlchemyError as exc:
            raise self.error(exc, "review_store_reachable") from None

    def reviewed_days(self) -> list[str]:
        return sorted(self._read(DAY_ROWS)["day"].astype(str)) if self._count(DAY_ROWS) else []

    def _count(self, table: sa.Table) -> int:
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar())
        except SQLAlchemyError as exc:
            raise self.error(exc, "review_store_reachable") from None

    def _read(self, table: sa.Table) -> pd.DataFrame:
        order = table.c.id if "id" in table.c else table.c.day
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.select(table).order_by(order)).mappings().all()
        except SQLAlchemyError as exc:
            raise self.error(exc, "review_store_reachable") from None
        frame = pd.DataFrame([dict(r) for r in rows], columns=[c.name for c in table.c])
        for column in ("start_at", "end_at", "created_at", "peak_at"):
            if column in frame:
                frame[column] = pd.to_datetime(frame[column]).dt.tz_localize("UTC") if len(frame) else \
                    pd.Series(dtype="datetime64[ns, UTC]")
        return frame


def _pattern(kpi_incident: dict) -> dict:
    """The verdict row's columns of the alarm's pattern (schema version 2)."""
    severity = kpi_incident.get("severity")
    peak = kpi_incident.get("peak_at")
    return {"direction": mutes_mod.direction_of(kpi_incident),
            "severity": float(severity) if severity is not None else None,
            "peak_at": _db(peak) if peak is not None else None}


def parse_range(start, end, what: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(start, end) as UTC timestamps, or a ReviewError (rule ``time_range``) naming ``what``."""
    try:
        start_at, end_at = _utc(start), _utc(end)
    except (TypeError, ValueError) as exc:
        raise ReviewError(what, "time_range", f"start {start!r} / end {end!r}: not a timestamp ({exc}); "
                          "give ISO times such as 2026-01-28T10:00:00Z") from None
    if end_at < start_at:
        raise ReviewError(what, "time_range", f"end {end_at.isoformat()} is before start {start_at.isoformat()}")
    return start_at, end_at


def _utc(value) -> pd.Timestamp:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError("empty")
    stamp = pd.Timestamp(value)
    if pd.isna(stamp):
        raise ValueError("empty")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _day(value) -> str:
    return _utc(value).date().isoformat()


def _db(value) -> dt.datetime:
    """A naive UTC datetime: what both SQLite and PostgreSQL's ``timestamp`` keep as given."""
    return _utc(value).tz_convert(None).to_pydatetime()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _reviewer(name: str) -> str:
    name = str(name or "").strip()
    if not name:
        raise ReviewError("review", "reviewer_given", "say who reviews (--reviewer NAME, or the page's name field)")
    return name[:128]
