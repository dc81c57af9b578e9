"""Reviews as labels: the rules that turn verdicts, reported misses and reviewed days into a label set,
and the merge of that set into unlabelled KPI rows. Pure functions of frames.

The label set (:func:`label_spans`) is a table of spans ``kpi_id, start, end, label, origin``, both ends
inclusive, ``kpi_id`` None for a reviewed day (every KPI):

- ``confirmed`` → 1 over the incident KPI's span;
- ``false_alarm`` → 0 over it;
- a reported miss → 1 over its range;
- a reviewed day → 0 over the day (what nobody flagged on a day somebody reviewed is normal).

Merged (:func:`apply_labels`) into rows without labels: a row covered by a span with label 1 is 1 (an
anomaly someone reported is not undone by another's dismissal of an overlapping alarm), a row covered only
by label-0 spans is 0, and a row no span covers is *unreviewed*: it is not labelled, so it is left out of
the labelled frame (and counted), never guessed. A source with its own labels keeps them: they win.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from models.frame import KPI_ID, LABEL, TIMESTAMP

CONFIRMED, FALSE_ALARM = "confirmed", "false_alarm"  # the verdicts a reviewer gives (pipeline/review)
VERDICTS = (CONFIRMED, FALSE_ALARM)
MISSED, REVIEWED_DAY = "missed", "reviewed_day"
SPAN_COLUMNS = ("kpi_id", "start", "end", "label", "origin")
ONE_DAY = pd.Timedelta(days=1)
SPANS_FILE, SUMMARY_FILE = "spans.parquet", "labels.json"  # the exported label set (kpiguard review export)


def label_spans(verdicts: pd.DataFrame, misses: pd.DataFrame, reviewed_days: list[str]) -> pd.DataFrame:
    """The label set of the store's contents (latest verdicts, misses, reviewed days), sorted."""
    parts = []
    if len(verdicts):
        parts.append(pd.DataFrame({
            "kpi_id": verdicts["kpi_id"].astype(str), "start": verdicts["start_at"], "end": verdicts["end_at"],
            "label": (verdicts["verdict"] == CONFIRMED).astype("int8"), "origin": verdicts["verdict"].astype(str)}))
        unknown = set(verdicts["verdict"]) - {CONFIRMED, FALSE_ALARM}
        if unknown:
            raise ValueError(f"unknown verdicts in the store: {sorted(unknown)}")
    if len(misses):
        parts.append(pd.DataFrame({"kpi_id": misses["kpi_id"].astype(str), "start": misses["start_at"],
                                   "end": misses["end_at"], "label": np.int8(1), "origin": MISSED}))
    if reviewed_days:
        starts = pd.to_datetime(pd.Series(sorted(reviewed_days))).dt.tz_localize("UTC")
        parts.append(pd.DataFrame({"kpi_id": None, "start": starts, "end": starts + ONE_DAY - pd.Timedelta(1, "ns"),
                                   "label": np.int8(0), "origin": REVIEWED_DAY}))
    if not parts:
        return empty_spans()
    spans = pd.concat(parts, ignore_index=True)
    spans["kpi_id"] = spans["kpi_id"].astype("string")
    spans["label"] = spans["label"].astype("int8")
    spans["start"] = pd.to_datetime(spans["start"], utc=True).astype("datetime64[ns, UTC]")
    spans["end"] = pd.to_datetime(spans["end"], utc=True).astype("datetime64[ns, UTC]")
    return spans.sort_values(["start", "end", "kpi_id", "origin"], na_position="first",
                             kind="stable").reset_index(drop=True)[list(SPAN_COLUMNS)]


def empty_spans() -> pd.DataFrame:
    return pd.DataFrame({"kpi_id": pd.Series(dtype="string"), "start": pd.Series(dtype="datetime64[ns, UTC]"),
                         "end": pd.Series(dtype="datetime64[ns, UTC]"), "label": pd.Series(dtype="int8"),
                         "origin": pd.Series(dtype="string")})


def digest(spans: pd.DataFrame) -> str:
    """A stable hash of a label set: the same verdicts give the same digest (what a model version names)."""
    text = spans.astype(str).to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def apply_labels(frame: pd.DataFrame, spans: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """(the labelled rows of ``frame``, a summary): the label set's labels on an unlabelled frame.

    ``frame`` is canonical (``kpi_id``, ``timestamp``, ...). Its own labels win: a frame with a label
    column is returned as it is. The summary counts the rows labelled 1 and 0, the unreviewed rows left
    out, and the labelled events (runs of 1s per KPI)."""
    if LABEL in frame.columns:
        return frame, {"applied": False, "reason": "the source has its own labels (they win)"}
    if spans.empty or frame.empty:
        return frame, {"applied": False, "reason": "no reviews yet", "rows": len(frame)}
    ones = np.zeros(len(frame), dtype=bool)
    covered = np.zeros(len(frame), dtype=bool)
    stamps = pd.to_datetime(frame[TIMESTAMP], utc=True).to_numpy("datetime64[ns]").astype("int64")
    kpis = frame[KPI_ID].astype(str).to_numpy()
    for kpi, rows in _rows_by_kpi(kpis).items():
        own = spans[spans["kpi_id"].isna() | (spans["kpi_id"] == kpi)]
        if own.empty:
            continue
        t = stamps[rows]
        starts = own["start"].to_numpy("datetime64[ns]").astype("int64")
        ends = own["end"].to_numpy("datetime64[ns]").astype("int64")
        for label in (0, 1):
            pick = own["label"].to_numpy() == label
            hit = _covered(t, starts[pick], ends[pick])
            covered[rows] |= hit
            if label == 1:
                ones[rows] |= hit
    out = frame.loc[covered].copy()
    out[LABEL] = ones[covered].astype("int8")
    out = out.reset_index(drop=True)
    return out, {"applied": True, "rows": len(out), "anomalous_rows": int(ones.sum()),
                 "normal_rows": int((covered & ~ones).sum()), "unreviewed_rows": int((~covered).sum()),
                 "kpis": int(out[KPI_ID].nunique()), "events": events(out)}


def enough_events(params) -> int:
    """Reviewed events needed before the reviewed labels replace the label-free path: enough that the
    validation split (``windows.val_fraction`` of each KPI) is expected to hold ``evaluate.min_events``."""
    return math.ceil(params.evaluate.min_events / max(params.windows.val_fraction, 1e-9))


def events(frame: pd.DataFrame) -> int:
    """Runs of label 1 per KPI, in time order (a labelled event)."""
    if frame.empty or LABEL not in frame.columns:
        return 0
    ordered = frame.sort_values([KPI_ID, TIMESTAMP], kind="stable")
    label = ordered[LABEL].to_numpy() == 1
    same_kpi = ordered[KPI_ID].astype(str).to_numpy()
    starts = label & ~np.r_[False, label[:-1] & (same_kpi[1:] == same_kpi[:-1])]
    return int(starts.sum())


def _rows_by_kpi(kpis: np.ndarray) -> dict[str, np.ndarray]:
    order = np.argsort(kpis, kind="stable")
    names, first = np.unique(kpis[order], return_index=True)
    return {str(n): np.sort(order[a:b]) for n, a, b in zip(names, first, [*first[1:], len(order)])}


def _covered(t: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which of the times ``t`` lie in any of the inclusive intervals ``[starts, ends]``."""
    if starts.size == 0:
        return np.zeros(t.size, dtype=bool)
    # +1 at each start, -1 just after each end, summed over sorted boundaries: > 0 inside any interval
    edges = np.concatenate([starts, ends + 1])
    steps = np.concatenate([np.ones(starts.size, np.int64), -np.ones(ends.size, np.int64)])
    order = np.argsort(edges, kind="stable")
    edges, depth = edges[order], np.cumsum(steps[order])
    at = np.searchsorted(edges, t, side="right") - 1
    return (at >= 0) & (depth[np.clip(at, 0, None)] > 0)


def read_export(labels_dir: str | Path) -> tuple[pd.DataFrame, dict] | None:
    """(spans, summary) of an exported label set; None when there is none."""
    labels_dir = Path(labels_dir)
    if not (labels_dir / SPANS_FILE).exists():
        return None
    return (pd.read_parquet(labels_dir / SPANS_FILE),
            json.loads((labels_dir / SUMMARY_FILE).read_text()))
