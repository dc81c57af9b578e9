"""Scoring that refuses to mislead: the checks ``kpiguard score`` and the scoring DAG run around the model.

- **Untrained KPIs** (:func:`require_trained`): a KPI with no training statistics under the served model
  (absent from its ``norm_stats.json``) would be normalised by its own statistics and judged by the
  global threshold of other KPIs: a DataError, rule ``kpi_trained``, unless ``score.allow_untrained_kpis``
  (then a warning, and the KPIs in the day's ``_meta.json`` as ``untrained_kpis``).
- **Training range** (:func:`training_range_check`): a day that starts more than
  ``score.training_range_tolerance`` after the end of the data the model was fitted on, or before its
  start, is scored by a model that never saw anything like it: a warning, and
  ``training_range: {start, end, outside, days_outside}`` in ``_meta.json``.
- **Alarm rate** (:func:`alarm_check`): the day's share of flagged points against the share
  ``evaluate.alarm_budget`` stands for (alarm points per KPI per day, over each KPI's points per day at
  its trained interval); more than ``score.mismatch_factor`` times it is a mismatch (a warning), and more
  than ``score.max_alarm_fraction`` fails the run after the partitions are written
  (:func:`enforce_max_alarm_fraction`, rule ``max_alarm_fraction``): the evidence stays, the exit code says no.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from models.frame import KPI_ID, TIMESTAMP
from pipeline.data.prep import infer_interval
from pipeline.errors import DataError
from pipeline.params import Params

log = logging.getLogger(__name__)

DAY = pd.Timedelta(days=1)
MAX_LISTED = 20  # KPIs named in a message; the count is always given


@dataclass(frozen=True)
class Served:
    """What the served model knows about the KPIs it scored: its training range, each KPI's sampling
    interval (trained; a KPI it never saw: its observed one), and the KPIs it has no statistics for.
    A plain dict in the scoring DAG's staging files (:meth:`to_dict`, :meth:`from_dict`)."""

    training_range: tuple[pd.Timestamp, pd.Timestamp] | None = None
    interval_s: dict[str, float] = field(default_factory=dict)
    untrained: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        start_end = None if self.training_range is None else [t.isoformat() for t in self.training_range]
        return {"training_range": start_end, "interval_s": dict(self.interval_s), "untrained": list(self.untrained)}

    @classmethod
    def from_dict(cls, raw: dict) -> "Served":
        bounds = raw.get("training_range")
        return cls(None if bounds is None else (pd.Timestamp(bounds[0]), pd.Timestamp(bounds[1])),
                   {str(k): float(v) for k, v in (raw.get("interval_s") or {}).items()},
                   tuple(raw.get("untrained") or ()))

    @classmethod
    def merge(cls, parts: list["Served"]) -> "Served":
        """One from those of disjoint sets of KPIs scored by one model (the DAG's shards)."""
        ranges = [p.training_range for p in parts if p.training_range is not None]
        return cls(ranges[0] if ranges else None, {k: v for p in parts for k, v in p.interval_s.items()},
                   tuple(sorted({k for p in parts for k in p.untrained})))


def served(model, rows: pd.DataFrame) -> Served:
    """:class:`Served` for canonical ``rows`` about to be scored by ``model`` (a loaded pyfunc; one without
    a bundle is described as knowing nothing)."""
    bundle = getattr(model, "bundle", None)
    norm = bundle.norm if bundle is not None else {}
    intervals, untrained = {}, []
    for kpi, ts in rows.groupby(rows[KPI_ID].astype(str), sort=True)[TIMESTAMP]:
        if kpi in norm:
            intervals[kpi] = norm[kpi].interval_s
            continue
        untrained.append(kpi)
        if ts.nunique() > 1:
            intervals[kpi] = infer_interval(ts.sort_values()).total_seconds()
    return Served(getattr(bundle, "training_range", None), intervals, tuple(untrained))


def _listed(kpis) -> str:
    kpis = list(kpis)
    more = f" and {len(kpis) - MAX_LISTED} more" if len(kpis) > MAX_LISTED else ""
    return ", ".join(kpis[:MAX_LISTED]) + more


def require_trained(params: Params, facts: Served, info: dict, input_spec: str) -> None:
    """DataError (rule ``kpi_trained``) when a KPI has no training statistics under the model, unless
    ``score.allow_untrained_kpis``: then a warning."""
    if not facts.untrained:
        return
    which = (f"model {info.get('model')} version {info['version']}" if info.get("version")
             else f"model {info.get('uri')}")
    kpis = f"{len(facts.untrained)} KPI(s) ({_listed(facts.untrained)})"
    if params.score.allow_untrained_kpis:
        log.warning("%s have no training statistics under %s: scored with their own normalisation and the "
                    "global threshold (score.allow_untrained_kpis)", kpis, which)
        return
    raise DataError(input_spec, "kpi_trained",
                    f"{kpis} have no training statistics under {which}: it would normalise them by their own "
                    "statistics and judge them by a threshold fitted on other KPIs. Train on this data "
                    f"(kpiguard ingest -S data.train={input_spec}, then make run / dvc repro, which registers "
                    "the new model), or score them anyway with -S score.allow_untrained_kpis=true")


def training_range_check(params: Params, day: pd.Timestamp, facts: Served) -> dict:
    """``training_range`` of a day's ``_meta.json``: the model's range, whether the day is outside it, and
    how many days it starts outside it (0: inside; a day within the tolerance after the end is not
    ``outside`` but still counts its days)."""
    if facts.training_range is None:  # a bundle from before the range was recorded
        return {"start": None, "end": None, "outside": False, "days_outside": None}
    start, end = facts.training_range
    tolerance = pd.Timedelta(params.score.training_range_tolerance)
    if day < start.normalize():
        days, outside = (start.normalize() - day) / DAY, True
    else:
        days = max((day - end) / DAY, 0.0)
        outside = day - end > tolerance
    return {"start": start.isoformat(), "end": end.isoformat(), "outside": bool(outside),
            "days_outside": round(float(days), 2)}


def alarm_check(params: Params, rows: pd.DataFrame, flagged: pd.Series, facts: Served) -> dict:
    """``alarm_check`` of a day's ``_meta.json`` for its scored ``rows`` (``flagged``: their alarms).

    ``budget_fraction``: ``evaluate.alarm_budget`` alarm points per KPI per day, as a share of each scored
    KPI's points per day at its interval (at most 1), averaged over the scored KPIs."""
    scored = len(rows)
    fraction = float(flagged.sum()) / scored if scored else None
    intervals = [facts.interval_s[k] for k in pd.unique(rows[KPI_ID].astype(str)) if k in facts.interval_s]
    budget = (sum(min(params.evaluate.alarm_budget * s / DAY.total_seconds(), 1.0) for s in intervals)
              / len(intervals) if intervals else None)
    ratio = fraction / budget if fraction is not None and budget else None
    factor = params.score.mismatch_factor
    return {"alarm_fraction": fraction, "budget_fraction": budget, "ratio": ratio, "factor": factor,
            "mismatch": bool(ratio is not None and ratio > factor)}


def day_checks(params: Params, day: pd.Timestamp, rows: pd.DataFrame, flagged: pd.Series, facts: Served) -> dict:
    """The guards' keys of one day's ``_meta.json``, each finding logged as a warning."""
    when = day.date().isoformat()
    rng = training_range_check(params, day, facts)
    if rng["outside"]:
        side = "before the start" if day < pd.Timestamp(rng["start"]) else "after the end"
        log.warning("%s starts %s days %s of the model's training data (%s to %s; score.training_range_tolerance "
                    "%s): its scores may mean little", when, f"{rng['days_outside']:g}", side, rng["start"],
                    rng["end"], params.score.training_range_tolerance)
    alarms = alarm_check(params, rows, flagged, facts)
    if alarms["mismatch"]:
        log.warning("%s flagged %.1f%% of its scored points, %.0fx the alarm budget (%.2f%%: evaluate.alarm_budget "
                    "%g per KPI per day; score.mismatch_factor %g): the model and this data may not match",
                    when, 100 * alarms["alarm_fraction"], alarms["ratio"], 100 * alarms["budget_fraction"],
                    params.evaluate.alarm_budget, alarms["factor"])
    untrained = sorted(set(facts.untrained) & set(rows[KPI_ID].astype(str)))
    return {"training_range": rng, "alarm_check": alarms, "untrained_kpis": untrained}


def enforce_max_alarm_fraction(params: Params, partitions: list[dict], source: str) -> None:
    """DataError (rule ``max_alarm_fraction``) naming each day that flagged more than
    ``score.max_alarm_fraction`` of its points; called once the partitions are written."""
    limit = params.score.max_alarm_fraction
    if limit is None:
        return
    over = [p for p in partitions if (p["alarm_check"]["alarm_fraction"] or 0.0) > limit]
    if not over:
        return
    days = "; ".join(f"{p['date']}: {p['anomalies']:,} of {p['rows']:,} scored points flagged "
                     f"({p['alarm_check']['alarm_fraction']:.1%})" for p in over)
    raise DataError(source, "max_alarm_fraction",
                    f"{days}: more than score.max_alarm_fraction {limit:g} ({limit:.1%}). The partitions are written "
                    f"for inspection ({', '.join(p['path'] for p in over)}); check the data against the model "
                    "(its training range and KPIs in each day's _meta.json), or raise score.max_alarm_fraction")
