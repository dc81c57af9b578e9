"""Incidents: what the on-call engineer triages, built from one day's scored points.

An anomaly span (:func:`anomaly_spans`) is a run of consecutive flagged points of one KPI, and one real
anomaly shows as many of them: a score that dips under its threshold for a point
splits a span in two, and KPIs that share a cause spike at the same minute. So:

- spans of one KPI at most ``gap`` apart (the next span's first flagged point at most ``gap`` after the
  previous one's last) join into one **KPI incident**;
- KPI incidents of several KPIs that overlap in time or lie at most ``gap`` apart form one **incident**.
  Joining chains: A near B and B near C is one incident, even when A and C are far apart.

``gap`` is ``score.incident_gap``. Each incident names the KPIs in it and, per KPI at its peak point
(its highest calibrated score in the incident), the value observed and the value expected there with
its band, in the KPI's units: the scores' ``expected``, ``expected_low`` and ``expected_high`` columns
where the partition has them (``expected_from`` "model"). Where it does not (partitions written before
those columns) or the model left all three NaN at that point, the band is the 5 %, 50 % and 95 %
quantiles of the KPI's own non-flagged values of the day in the ``BAND_WINDOW`` before the point
(``expected_from`` "day_quantiles"): what the KPI did just before, not a forecast; with fewer than
``BAND_MIN_POINTS`` such values it is unknown (``None``).
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from models.frame import KPI_ID, TIMESTAMP, VALUE

SCORE, THRESHOLD, IS_ANOMALY = "score", "threshold", "is_anomaly"
SPAN_COLUMNS = ("kpi_id", "start", "end", "points", "peak_score", "threshold", "severity")
EXPECTED = ("expected", "expected_low", "expected_high")
# The fallback band (partitions without EXPECTED): long enough to hold a couple of dozen points at the
# usual 5-minute interval, short enough that a daily cycle has not moved far in it.
BAND_WINDOW = pd.Timedelta("2h")
BAND_QUANTILES = (0.5, 0.05, 0.95)  # expected, expected_low, expected_high
BAND_MIN_POINTS = 6
KPI_INCIDENT_COLUMNS = ("kpi_id", "start", "end", "spans", "points", "peak_score", "severity")


def anomaly_spans(scored: pd.DataFrame) -> pd.DataFrame:
    """Contiguous runs of flagged points per KPI, most severe first.

    A span is a maximal run of consecutive rows of one KPI (in timestamp order) with ``is_anomaly``;
    runs never continue across KPIs. Columns: ``kpi_id``, ``start`` / ``end`` (timestamps of the first
    and last flagged point), ``points``, ``peak_score`` (highest calibrated score in the span),
    ``threshold`` (the KPI's threshold at that point, on the same calibrated scale) and ``severity``:
    how many times over its threshold the peak is, ``peak_score / threshold`` with the threshold in
    force at the peak point (1 = exactly at threshold). Ratios are meaningless for a threshold <= 0,
    so there severity is ``peak_score - threshold + 1``, which also reads 1 at the threshold.
    Ties in severity are ordered by KPI and start.
    """
    if scored.empty or not scored[IS_ANOMALY].any():
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in SPAN_COLUMNS})
    frame = scored.sort_values([KPI_ID, TIMESTAMP], kind="stable").reset_index(drop=True)
    flag = frame[IS_ANOMALY].to_numpy(dtype=bool)
    ids = frame[KPI_ID].to_numpy()
    new_kpi = np.r_[True, ids[1:] != ids[:-1]]
    starts = flag & (new_kpi | ~np.r_[False, flag[:-1]])
    flagged = frame[flag].assign(span=np.cumsum(starts)[flag])
    by_span = flagged.groupby("span", sort=True)
    peaks = flagged.loc[by_span[SCORE].idxmax().to_numpy()]
    peak, threshold = peaks[SCORE].to_numpy(float), peaks[THRESHOLD].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):  # np.where computes the ratio for threshold 0 too
        severity = np.where(threshold > 0, peak / threshold, peak - threshold + 1)
    spans = pd.DataFrame({
        "kpi_id": peaks[KPI_ID].to_numpy(),
        "start": by_span[TIMESTAMP].min().array,
        "end": by_span[TIMESTAMP].max().array,
        "points": by_span.size().to_numpy(),
        "peak_score": peak,
        "threshold": threshold,
        "severity": severity,
    })
    return (spans.sort_values(["severity", "kpi_id", "start"], ascending=[False, True, True], kind="stable")
            .reset_index(drop=True))


def span_records(spans: pd.DataFrame) -> list[dict]:
    """:func:`anomaly_spans` as JSON-ready records (ISO timestamps)."""
    return [{"kpi_id": str(s.kpi_id), "start": s.start.isoformat(), "end": s.end.isoformat(),
             "points": int(s.points), "peak_score": float(s.peak_score), "threshold": float(s.threshold),
             "severity": float(s.severity)}
            for s in spans.itertuples(index=False)]


def kpi_incidents(spans: pd.DataFrame, gap: str | pd.Timedelta) -> pd.DataFrame:
    """Spans (:func:`anomaly_spans`) of one KPI at most ``gap`` apart, joined.

    Columns: ``kpi_id``, ``start`` / ``end`` (first and last flagged point), ``spans`` and ``points``
    joined, ``peak_score`` and ``severity`` (the highest of its spans'); ordered by KPI, then start.
    """
    gap = pd.Timedelta(gap)
    if spans.empty:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in KPI_INCIDENT_COLUMNS})
    spans = spans.sort_values(["kpi_id", "start"], kind="stable").reset_index(drop=True)
    ids = spans["kpi_id"].to_numpy()
    new_kpi = np.r_[True, ids[1:] != ids[:-1]]
    labels = _chains(spans["start"], spans["end"], gap, new_kpi)
    by = spans.groupby(labels, sort=True)
    return pd.DataFrame({
        "kpi_id": by["kpi_id"].first().to_numpy(),
        "start": by["start"].min().array,
        "end": by["end"].max().array,
        "spans": by.size().to_numpy(),
        "points": by["points"].sum().to_numpy(),
        "peak_score": by["peak_score"].max().to_numpy(),
        "severity": by["severity"].max().to_numpy(),
    })


def incidents(scored: pd.DataFrame, gap: str | pd.Timedelta, detector: str | None = None,
              spans: pd.DataFrame | None = None) -> list[dict]:
    """The incidents of ``scored`` (one day's scored rows), most severe first, as JSON-ready records.

    ``spans``: :func:`anomaly_spans` of ``scored``, when the caller has them.
    Each record: ``id`` (``inc-YYYYMMDD-HHMM-`` and 8 hex digits of a hash of its start and KPIs, so
    the same scores give the same ids on every run), ``start`` / ``end`` (ISO, first and last flagged
    point of any of its KPIs), ``duration_s`` (end - start: 0 for one point in time), ``peak_score``
    (the highest calibrated surprise), ``severity`` (the highest of its spans', as spans define it),
    ``kpis`` (most severe first), ``detector``, ``spans`` and ``points`` (flagged) in it, and
    ``per_kpi``: per KPI, in the order of ``kpis``, its ``start`` / ``end`` (first and last flagged point of
    its KPI incidents in it), ``peak_at``, ``peak_score``, ``threshold`` and
    ``severity`` there, the ``observed`` value and ``expected``, ``expected_low``, ``expected_high``
    with ``expected_from`` (module docstring; ``None`` where unknown). Ordered by severity, then peak
    score (both descending), then start.
    """
    gap = pd.Timedelta(gap)
    if spans is None:
        spans = anomaly_spans(scored)
    per_kpi = kpi_incidents(spans, gap)
    if per_kpi.empty:
        return []
    per_kpi = per_kpi.sort_values(["start", "kpi_id"], kind="stable").reset_index(drop=True)
    groups = _chains(per_kpi["start"], per_kpi["end"], gap)
    scored = scored.assign(**{TIMESTAMP: pd.to_datetime(scored[TIMESTAMP], utc=True),
                              KPI_ID: scored[KPI_ID].astype(str)})
    scored = scored.sort_values([KPI_ID, TIMESTAMP], kind="stable").reset_index(drop=True)
    rows_of = {kpi: part for kpi, part in scored.groupby(KPI_ID, sort=False)}
    return most_severe_first([_incident(members, rows_of, detector)
                              for _, members in per_kpi.groupby(groups, sort=True)])


def most_severe_first(found: list[dict]) -> list[dict]:
    """Incident records by severity, then peak score (both descending), then start and id."""
    return sorted(found, key=lambda i: (-i["severity"], -i["peak_score"], pd.Timestamp(i["start"]), i["id"]))


def incident_id(start: pd.Timestamp, kpis) -> str:
    """``inc-YYYYMMDD-HHMM-<8 hex>``: readable, and the same for the same start and set of KPIs."""
    start = pd.Timestamp(start).tz_convert("UTC")
    digest = hashlib.sha256(f"{start.isoformat()}|{chr(31).join(sorted(map(str, kpis)))}".encode()).hexdigest()
    return f"inc-{start:%Y%m%d-%H%M}-{digest[:8]}"


def _incident(members: pd.DataFrame, rows_of: dict[str, pd.DataFrame], detector: str | None) -> dict:
    start, end = members["start"].min(), members["end"].max()
    kpis = []
    for kpi, own in members.groupby("kpi_id", sort=True):
        rows = rows_of[str(kpi)]
        flagged = rows[rows[IS_ANOMALY].astype(bool) & rows[TIMESTAMP].between(start, end)]
        peak = flagged.loc[flagged[SCORE].idxmax()]  # the first of equal scores: rows are in time order
        kpis.append({"kpi_id": str(kpi), "start": own["start"].min().isoformat(), "end": own["end"].max().isoformat(),
                     "peak_at": peak[TIMESTAMP].isoformat(),
                     "peak_score": float(peak[SCORE]), "threshold": float(peak[THRESHOLD]),
                     "severity": float(own["severity"].max()), "observed": _num(peak[VALUE]),
                     **expected_at(rows, peak[TIMESTAMP])})
    kpis.sort(key=lambda k: (-k["severity"], k["kpi_id"]))
    names = [k["kpi_id"] for k in kpis]
    return {"id": incident_id(start, names), "start": start.isoformat(), "end": end.isoformat(),
            "duration_s": float((end - start).total_seconds()),
            "peak_score": float(members["peak_score"].max()), "severity": float(members["severity"].max()),
            "kpis": names, "detector": detector, "spans": int(members["spans"].sum()),
            "points": int(members["points"].sum()), "per_kpi": kpis}


def expected_at(rows: pd.DataFrame, at: pd.Timestamp) -> dict:
    """``expected``, ``expected_low``, ``expected_high`` and ``expected_from`` of one KPI's ``rows`` (in
    time order) at ``at``: the model's where the rows carry them, else the day's quantile band."""
    if all(c in rows.columns for c in EXPECTED):
        model = rows.loc[rows[TIMESTAMP] == at, list(EXPECTED)].astype(float)
        if len(model) and model.iloc[0].notna().any():
            return {**{c: _num(model.iloc[0][c]) for c in EXPECTED}, "expected_from": "model"}
    before = rows[(rows[TIMESTAMP] < at) & (rows[TIMESTAMP] >= at - BAND_WINDOW) & ~rows[IS_ANOMALY].astype(bool)]
    values = before[VALUE].astype(float).dropna()
    if len(values) < BAND_MIN_POINTS:
        return {**dict.fromkeys(EXPECTED), "expected_from": None}
    band = np.quantile(values.to_numpy(), BAND_QUANTILES)
    return {**{c: float(q) for c, q in zip(EXPECTED, band)}, "expected_from": "day_quantiles"}


def _chains(start: pd.Series, end: pd.Series, gap: pd.Timedelta, breaks: np.ndarray | None = None) -> np.ndarray:
    """Chain label of each interval (sorted by start): one joins the chain before it when it starts at most
    ``gap`` after the latest end so far; ``breaks`` (True) start a new chain regardless."""
    labels = np.empty(len(start), dtype=np.int64)
    label, reach = -1, None
    for i, (s, e) in enumerate(zip(start, end)):
        if reach is None or (breaks is not None and breaks[i]) or s - reach > gap:
            label, reach = label + 1, e
        else:
            reach = max(reach, e)
        labels[i] = label
    return labels


def _num(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _dtype(column: str) -> str:
    """The dtype of a span or KPI-incident column, for the empty frames of a day without alarms."""
    return {"kpi_id": "object", "start": "datetime64[ns, UTC]", "end": "datetime64[ns, UTC]",
            "spans": "int64", "points": "int64"}.get(column, "float64")
