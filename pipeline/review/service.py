"""What a reviewer does, for ``kpiguard review``, ``kpiguard serve`` and the DVC stage ``labels``:
list a day's incidents with their verdicts, give a verdict, report a missed anomaly, mark a day
reviewed, see the mute rules the dismissals suggest and confirm or lift one
(:mod:`pipeline.data.review_mutes`), and export the label set (:mod:`pipeline.data.review_labels`)
that training merges.

Incidents are looked up in the day's scored partition (the ids of its report), so a verdict on an
incident that does not exist is refused with the ids that do.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.batch import daily
from pipeline.data import review_labels as labels_mod
from pipeline.data import review_mutes as mutes_mod
from pipeline.errors import ReviewError
from pipeline.io.outputs import replace_dir_atomic
from pipeline.params import Params
from pipeline.review.store import ReviewStore


def open_store(params: Params) -> ReviewStore:
    return ReviewStore(params.reviews.store)


def day_review(params: Params, day: str, output: str | None = None) -> dict:
    """The day's incidents (most severe first), each with its latest verdicts per KPI and the mute rules
    that mute it (``muted_by``: ids; muted incidents are listed too, since they can be reviewed); whether
    the day is marked reviewed; the misses reported on it."""
    found = daily.day_incidents(params, day, output)
    with open_store(params) as store:
        verdicts, misses, days = store.verdicts(), store.misses(), store.reviewed_days()
        rules = store.mute_rules()
    muted_by = {i["id"]: [r["id"] for r in i["muted_by"]] for i in mutes_mod.apply_mutes(found, rules)[1]}
    by_incident = {i: part for i, part in verdicts.groupby("incident_id")} if len(verdicts) else {}
    day = pd.Timestamp(day).date().isoformat()
    listed = []
    for inc in found:
        part = by_incident.get(inc["id"])
        given = {} if part is None else {r["kpi_id"]: {"verdict": r["verdict"], "reviewer": r["reviewer"],
                                                        "note": r["note"], "at": r["created_at"].isoformat()}
                                         for _, r in part.iterrows()}
        listed.append({"id": inc["id"], "start": inc["start"], "end": inc["end"], "kpis": inc["kpis"],
                       "severity": inc["severity"], "peak_score": inc["peak_score"], "verdicts": given,
                       "verdict": _overall(given, inc["kpis"]), "muted_by": muted_by.get(inc["id"], [])})
    on_day = misses[(misses["start_at"].dt.date.astype(str) <= day) & (misses["end_at"].dt.date.astype(str) >= day)] \
        if len(misses) else misses
    return {"day": day, "reviewed": day in days, "incidents": listed,
            "misses": [{"kpi": r["kpi_id"], "start": r["start_at"].isoformat(), "end": r["end_at"].isoformat(),
                        "reviewer": r["reviewer"], "note": r["note"]} for _, r in on_day.iterrows()]}


def give_verdict(params: Params, day: str, incident_id: str, verdict: str, reviewer: str,
                 note: str | None = None, kpi: str | None = None, output: str | None = None,
                 start=None, end=None) -> dict:
    """Store ``verdict`` on the day's incident ``incident_id`` (all its KPIs, or ``kpi``), over the
    anomaly's own extent ``start`` – ``end`` where given (:meth:`ReviewStore.add_verdict`)."""
    found = daily.day_incidents(params, day, output)
    incident = next((i for i in found if i["id"] == incident_id), None)
    if incident is None:
        known = ", ".join(i["id"] for i in found[:10]) or "none"
        raise ReviewError(f"incident {incident_id!r} of {pd.Timestamp(day).date()}", "incident_known",
                          f"the day's report has no such incident; its incidents: {known}"
                          + (f" (and {len(found) - 10} more)" if len(found) > 10 else ""))
    with open_store(params) as store:
        return store.add_verdict(incident, verdict, reviewer, note=note, kpi=kpi, day_incidents=found,
                                 start=start, end=end)


def report_miss(params: Params, kpi: str, start, end, reviewer: str, note: str | None = None) -> dict:
    with open_store(params) as store:
        return store.add_miss(kpi, start, end, reviewer, note=note)


def mark_reviewed(params: Params, day: str, reviewer: str) -> dict:
    with open_store(params) as store:
        return store.mark_reviewed(day, reviewer)


def mute_overview(params: Params, all_rules: bool = False) -> dict:
    """The mute rules the dismissals suggest (:func:`pipeline.data.review_mutes.suggestions`, with
    ``reviews.mute_tolerance``) and the rules confirmed (active ones; ``all_rules``: lifted ones too)."""
    with open_store(params) as store:
        verdicts, rules = store.verdicts(), store.mute_rules(active=not all_rules)
    active = [r for r in rules if r["disabled_at"] is None]
    return {"tolerance": params.reviews.mute_tolerance,
            "suggestions": mutes_mod.suggestions(verdicts, active, params.reviews.mute_tolerance), "rules": rules}


def confirm_mute(params: Params, kpi: str, direction: str, window_from: str, window_to: str, max_severity,
                 reviewer: str, note: str | None = None, incidents: list[str] | None = None) -> dict:
    """Store a mute rule a reviewer confirms (:meth:`ReviewStore.add_mute`): from then on, reports list
    what it matches as muted and alerts leave it out."""
    with open_store(params) as store:
        return store.add_mute(kpi, direction, window_from, window_to, max_severity, reviewer, note=note,
                              incidents=incidents)


def lift_mute(params: Params, rule_id, reviewer: str) -> dict:
    with open_store(params) as store:
        return store.disable_mute(rule_id, reviewer)


def current_spans(params: Params) -> pd.DataFrame:
    with open_store(params) as store:
        return labels_mod.label_spans(store.verdicts(), store.misses(), store.reviewed_days())


def export(params: Params, out_dir: str | Path | None = None) -> dict:
    """Write the label set to ``out_dir`` (default ``paths.labels``): ``spans.parquet`` and ``labels.json``
    (digest, counts by origin). The same store gives the same bytes, so DVC sees no change on a rerun."""
    out_dir = Path(out_dir or params.paths.labels)
    spans = current_spans(params)
    summary = {"digest": labels_mod.digest(spans), "spans": len(spans),
               "by_origin": {str(k): int(v) for k, v in spans["origin"].value_counts().sort_index().items()},
               "kpis": int(spans["kpi_id"].dropna().nunique()),
               "store": ReviewStore.shown_url(params.reviews.store)}

    def write(tmp: Path) -> None:
        spans.to_parquet(tmp / labels_mod.SPANS_FILE, index=False)
        (tmp / labels_mod.SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")

    replace_dir_atomic(out_dir, write)
    return {**summary, "path": str(out_dir)}


def _overall(given: dict, kpis: list[str]) -> str | None:
    verdicts = {given[k]["verdict"] for k in kpis if k in given}
    if not verdicts:
        return None
    if len(verdicts) == 1 and len(given) >= len(kpis):
        return verdicts.pop()
    return "mixed" if len(verdicts) > 1 else "partial"
