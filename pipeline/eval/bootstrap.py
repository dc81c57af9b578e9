"""Segment bootstrap: how much an F1 figure would move on another draw of the same kind of incidents.

The resampling unit is a labelled segment, not a point: the points of one anomaly are detected or
missed together, so resampling points would pretend to far more independent evidence than a test
split holds (AIOps 2018 has a few thousand segments over some four million points). Each KPI's
segments are drawn with replacement within that KPI, so every resample keeps each KPI's number of
segments; false positives are held fixed, since the segments are what is resampled.

The draws depend only on the number of segments per KPI and the seed, and segments are defined by
the labels (and the gaps), never by the alarms: two detectors scored on the same labels get the
same draws, so the difference of their resampled F1s is a paired comparison.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.eval import metrics as M

__all__ = ["BOOTSTRAP_METRICS", "SegmentOutcomes", "segment_outcomes", "segment_draws", "bootstrap_f1",
           "interval"]

BOOTSTRAP_METRICS = ("aiops_f1", "point_f1", "point_adjusted_f1")


@dataclass(frozen=True)
class SegmentOutcomes:
    """One entry per labelled segment, in time order, grouped by KPI.

    ``kpi``: the int code of the segment's KPI (the ordinal of its series in the input, so codes are
    non-decreasing; a KPI without segments has no entry). ``tp``: points the metric credits in the
    segment; ``fn``: its points not credited. ``fp``: false-positive points over all KPIs.
    ``2 TP / (2 TP + fp + FN)`` with ``TP = tp.sum()``, ``FN = fn.sum()`` is the metric.
    """

    kpi: np.ndarray
    tp: np.ndarray
    fn: np.ndarray
    fp: int

    def __post_init__(self) -> None:
        if not (self.kpi.shape == self.tp.shape == self.fn.shape) or self.kpi.ndim != 1:
            raise ValueError(f"kpi, tp and fn must be 1-D of one length, got shapes {self.kpi.shape}, "
                             f"{self.tp.shape}, {self.fn.shape}")
        if self.kpi.size and np.any(np.diff(self.kpi) < 0):
            raise ValueError("segments must be grouped by KPI: kpi codes must be non-decreasing")


def segment_outcomes(labels, alarms, missing=None, series_ids=None, *, metric: str = "aiops_f1",
                     delay: int = 7) -> SegmentOutcomes:
    """Per-segment outcomes of ``metric`` (one of :data:`BOOTSTRAP_METRICS`), with the arguments
    and segments of :mod:`pipeline.eval.metrics`.

    * ``aiops_f1``: the published rule's segments (a gap splits a segment); a segment detected in its
      first ``delay + 1`` points credits all its points, otherwise none.
    * ``point_adjusted_f1``: its events (a gap does not split one); detected anywhere: all points.
    * ``point_f1``: the same events as ``point_adjusted_f1``, as the incidents to resample; each
      credits its alarmed points.
    """
    if metric not in BOOTSTRAP_METRICS:
        raise ValueError(f"unknown bootstrap metric {metric!r}; choose one of {', '.join(BOOTSTRAP_METRICS)}")
    aiops = metric == "aiops_f1"
    ev = M._event_table(labels, alarms, missing, series_ids, "aiops" if aiops else "bridged",
                        delay if aiops else None)
    size = ev.size.astype(np.int64)
    if metric == "point_f1":
        # Every observed point of a bridged event is labelled, so its alarms are its true positives.
        tp = ev.hits.astype(np.int64)
    else:
        tp = np.where(ev.detected, size, 0)
    return SegmentOutcomes(kpi=ev.series.astype(np.int64), tp=tp, fn=size - tp, fp=int(ev.fp))


def segment_draws(n_segments_per_kpi: np.ndarray, draws: int = 200, seed: int = 0) -> np.ndarray:
    """``(draws, total segments)`` int indices into the segments laid out KPI by KPI: each draw
    resamples each KPI's segments with replacement within that KPI. A KPI with no segment takes no
    column and no random number, so it changes nothing. Depends only on the counts and the seed."""
    counts = np.asarray(n_segments_per_kpi)
    if counts.ndim != 1 or (counts.size and (not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0)):
        raise ValueError(f"n_segments_per_kpi must be a 1-D array of counts >= 0, got {counts!r}")
    if int(draws) < 1:
        raise ValueError(f"draws must be >= 1, got {draws}")
    counts = counts.astype(np.int64)
    owner = np.repeat(np.arange(counts.size), counts)  # the KPI of each column
    offset = np.r_[0, np.cumsum(counts)[:-1]][owner] if counts.size else np.zeros(0, np.int64)
    if owner.size == 0:
        return np.zeros((int(draws), 0), dtype=np.int64)
    rng = np.random.default_rng(seed)
    return offset + rng.integers(0, counts[owner], size=(int(draws), owner.size))


def _resampled_f1(outcomes: SegmentOutcomes, idx: np.ndarray) -> np.ndarray:
    """F1 of each row of segment indices ``idx``, FP held fixed; NaN where undefined."""
    tp = outcomes.tp[idx].sum(axis=1)
    fn = outcomes.fn[idx].sum(axis=1)
    den = 2 * tp + outcomes.fp + fn
    return np.where(den > 0, 2 * tp / np.where(den > 0, den, 1), np.nan)


def bootstrap_f1(outcomes: SegmentOutcomes, draws: int = 200, seed: int = 0) -> np.ndarray:
    """``(draws,)`` F1 of each resample of :func:`segment_draws` (false positives held fixed); NaN
    where it is undefined (no segment and no false positive)."""
    counts = np.bincount(outcomes.kpi) if outcomes.kpi.size else np.zeros(0, np.int64)
    return _resampled_f1(outcomes, segment_draws(counts, draws, seed))


def interval(values: np.ndarray, level: float = 0.9) -> tuple[float, float] | None:
    """Percentile interval holding the central ``level`` of ``values``, NaNs left out; None when no
    value is left."""
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    v = np.asarray(values, dtype=float).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return None
    lo, hi = np.percentile(v, [50.0 * (1 - level), 50.0 * (1 + level)])
    return float(lo), float(hi)
