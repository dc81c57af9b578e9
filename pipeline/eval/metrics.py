"""Evaluation metrics for KPI anomaly detection: pure, vectorised functions.

Conventions shared by every metric
----------------------------------
* ``labels``: 1-D array of 0/1 (or bool), 1 = anomalous point.
* ``scores``: 1-D float array, higher = more anomalous (threshold-free metrics).
* ``alarms``: 1-D bool array (thresholded metrics). A score becomes an alarm when
  ``score >= threshold``: the convention of ``sklearn.metrics.precision_recall_curve`` and of NAB,
  used by :func:`best_f1_threshold`, :func:`nab_best_threshold` and ``pipeline.eval.thresholds``.
* ``missing``: optional bool mask, True = the point was not observed (in a prepared frame: a
  timestamp that the regular grid inserted, ``pipeline.data.prep.regularise``). The label of a
  missing point is never read, and a missing point never alarms: it is neither a true nor a false
  positive nor a false negative. Where it sits relative to events depends on the metric:

  - the AIOps rule (:func:`aiops_f1`): a missing
    point is label 0 and prediction 0, as in the challenge's published evaluation, which re-grids
    each KPI at its smallest timestamp step and inserts every absent timestamp so. A gap therefore
    splits a segment, and each piece is scored as a segment of its own;
  - every other event metric (:func:`rpa_f1`, :func:`point_adjusted_f1`, NAB, VUS): a missing point
    lying between two labelled observed points of one series belongs to their event, any other
    missing point lies outside events, so a gap never splits an event and no event is wholly
    unobserved. These metrics count incidents, which a gap in monitoring does not multiply, and
    NAB's label windows are spans of time (NAB's own scorer keeps one window however many rows it
    lacks).

  NaN scores are treated as missing by the threshold-free metrics.
* ``series_ids``: optional per-point KPI id when several KPIs are concatenated. Each KPI's points
  must be contiguous and in time order. Events never extend across a change of id, so an anomaly
  at the end of one KPI and one at the start of the next remain two events.
* A metric returns ``None`` when it is undefined on the data (zero denominator, e.g. an AUC
  without both classes, or a recall without positive labels).

Every metric is listed in :data:`METRICS`; :func:`evaluate_all` computes all applicable ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

import numpy as np

__all__ = [
    "METRICS", "MetricSpec", "NAB_STANDARD", "NAB_REWARD_LOW_FP_RATE", "NAB_REWARD_LOW_FN_RATE",
    "NAB_PROFILES", "BEST_F1_METRICS",
    "point_precision", "point_recall", "point_f1", "aiops_f1", "rpa_f1", "point_adjusted_f1",
    "auc_roc", "auc_pr", "vus_pr", "vus_roc", "range_auc_volumes",
    "nab_standard", "nab_raw_scores", "nab_best_threshold", "nab_probation_length",
    "best_f1_threshold", "evaluate_all", "events",
]

# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _labels(labels: Any) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {lab.shape}")
    if lab.dtype != bool:
        bad = ~np.isin(lab, (0, 1))
        if bad.any():
            raise ValueError(f"labels must be 0/1, found {np.unique(lab[bad])[:5].tolist()}")
    return lab.astype(bool)


def _missing(missing: Any, n: int) -> np.ndarray:
    if missing is None:
        return np.zeros(n, dtype=bool)
    m = np.asarray(missing, dtype=bool)
    if m.shape != (n,):
        raise ValueError(f"missing mask has shape {m.shape}, expected ({n},)")
    return m


def _prep_alarms(labels, alarms, missing):
    lab = _labels(labels)
    al = np.asarray(alarms)
    if al.shape != lab.shape:
        raise ValueError(f"alarms shape {al.shape} != labels shape {lab.shape}")
    obs = ~_missing(missing, lab.size)
    # A missing point never raises an alarm: it was not observed.
    return lab, al.astype(bool) & obs, obs


def _prep_scores(labels, scores, missing):
    lab = _labels(labels)
    sc = np.asarray(scores, dtype=float)
    if sc.shape != lab.shape:
        raise ValueError(f"scores shape {sc.shape} != labels shape {lab.shape}")
    obs = ~_missing(missing, lab.size) & np.isfinite(sc)
    return lab, sc, obs


def _series_starts(series_ids: Any, n: int) -> np.ndarray:
    """True where a new series begins (index 0 and every change of id)."""
    start = np.zeros(n, dtype=bool)
    if n:
        start[0] = True
    if series_ids is not None:
        ids = np.asarray(series_ids)
        if ids.shape != (n,):
            raise ValueError(f"series_ids has shape {ids.shape}, expected ({n},)")
        start[1:] = ids[1:] != ids[:-1]
    return start


def events(labels: Any, series_ids: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Anomaly events as ``(starts, stops)`` index arrays (``stops`` exclusive).

    An event is a maximal run of consecutive 1-labels inside one series.
    """
    lab = _labels(labels)
    return _events(lab, _series_starts(series_ids, lab.size))


def _events(lab: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prev_in = np.r_[False, lab[:-1]] & ~start
    next_in = np.r_[lab[1:] & ~start[1:], False]
    return np.flatnonzero(lab & ~prev_in), np.flatnonzero(lab & ~next_in) + 1


def _series_last(start: np.ndarray) -> np.ndarray:
    """Index of the last point of each point's series."""
    n = start.size
    ends = np.r_[start[1:], True] if n else start
    return np.minimum.accumulate(np.where(ends, np.arange(n), n)[::-1])[::-1]


def _aiops_labels(lab: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """Labels under the AIOps rule: a missing point is label 0, so a gap splits a segment."""
    return lab & obs


def _bridged_labels(lab: np.ndarray, obs: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Labels of the observed points, and 1 at each missing point whose nearest observed points
    before and after it in its series are both labelled: a gap inside an event stays in it."""
    n = lab.size
    if n == 0 or obs.all():
        return lab & obs
    idx = np.arange(n)
    first = np.maximum.accumulate(np.where(start, idx, 0))  # start of each point's series
    prev = np.maximum.accumulate(np.where(obs, idx, -1))
    nxt = np.minimum.accumulate(np.where(obs, idx, n)[::-1])[::-1]
    lab_obs = lab & obs
    inside = ((prev >= first) & lab_obs[np.maximum(prev, 0)]
              & (nxt <= _series_last(start)) & lab_obs[np.minimum(nxt, n - 1)])
    return np.where(obs, lab_obs, inside)


def _event_labels(lab: np.ndarray, obs: np.ndarray, start: np.ndarray, rule: str) -> np.ndarray:
    """Per-point event membership under ``rule``: "aiops" (gaps split) or "bridged" (gaps kept)."""
    if rule == "aiops":
        return _aiops_labels(lab, obs)
    if rule == "bridged":
        return _bridged_labels(lab, obs, start)
    raise ValueError(f"unknown event rule {rule!r}")


def _prefix(mask: np.ndarray) -> np.ndarray:
    """Prefix counts: the number of True in [a, b) is ``c[b] - c[a]``."""
    return np.r_[0, np.cumsum(mask, dtype=np.int64)]


def _segment_max(values: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """max(values[a:b]) for sorted, disjoint, non-empty [a, b) ranges, in one reduceat."""
    if starts.size == 0:
        return np.empty(0)
    padded = np.r_[values, -np.inf]  # so that a stop equal to len(values) is a valid index
    return np.maximum.reduceat(padded, np.ravel(np.column_stack([starts, stops])))[::2]


def _f1(tp: float, fp: float, fn: float) -> float | None:
    # 2TP / (2TP + FP + FN) equals 2PR/(P+R), and stays defined when no alarm is raised.
    den = 2 * tp + fp + fn
    return None if den == 0 else float(2 * tp / den)


# --------------------------------------------------------------------------------------------
# point-wise metrics
# --------------------------------------------------------------------------------------------


def _point_counts(labels, alarms, missing):
    lab, al, obs = _prep_alarms(labels, alarms, missing)
    tp = int(np.sum(al & lab))
    fp = int(np.sum(al & ~lab))
    fn = int(np.sum(~al & lab & obs))
    return tp, fp, fn


def point_precision(labels, alarms, missing=None) -> float | None:
    """Point-wise precision TP / (TP + FP) over observed points; None without alarms."""
    tp, fp, _ = _point_counts(labels, alarms, missing)
    return None if tp + fp == 0 else tp / (tp + fp)


def point_recall(labels, alarms, missing=None) -> float | None:
    """Point-wise recall TP / (TP + FN) over observed points; None without positive labels."""
    tp, _, fn = _point_counts(labels, alarms, missing)
    return None if tp + fn == 0 else tp / (tp + fn)


def point_f1(labels, alarms, missing=None) -> float | None:
    """Point-wise F1 = 2TP / (2TP + FP + FN) over observed points."""
    return _f1(*_point_counts(labels, alarms, missing))


# --------------------------------------------------------------------------------------------
# event-adjusted F1 scores (AIOps 2018, point-adjusted, revised point-adjusted)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventTable:
    """One row per event, in time order (``series``: the ordinal of the event's series run)."""

    starts: np.ndarray
    stops: np.ndarray
    series: np.ndarray
    size: np.ndarray      # observed points
    hits: np.ndarray      # alarms anywhere in the event
    detected: np.ndarray  # alarm in the detection window
    fp: int               # alarms outside every event


def _event_table(labels, alarms, missing, series_ids, rule: str, delay: int | None) -> EventTable:
    """The events of ``rule`` ("aiops" or "bridged", see the module docstring) with their observed
    size and detection flag, plus the point-wise false positives.

    An event is detected when an alarm lies in its first ``delay + 1`` grid points (clipped at its
    end), or anywhere in it when ``delay`` is None. Under the AIOps rule every point of a segment
    is observed; a bridged event's size counts its observed points only.
    """
    lab, al, obs = _prep_alarms(labels, alarms, missing)
    start = _series_starts(series_ids, lab.size)
    ev_lab = _event_labels(lab, obs, start, rule)
    starts, stops = _events(ev_lab, start)
    c_obs, c_al = _prefix(obs), _prefix(al)
    until = stops if delay is None else np.minimum(starts + int(delay) + 1, stops)
    return EventTable(starts=starts, stops=stops, series=(np.cumsum(start) - 1)[starts],
                      size=c_obs[stops] - c_obs[starts], hits=c_al[stops] - c_al[starts],
                      detected=(c_al[until] - c_al[starts]) > 0, fp=int(np.sum(al & ~ev_lab)))


def aiops_f1(labels, alarms, missing=None, series_ids=None, delay: int = 7) -> float | None:
    """F1 of the 2018 AIOps challenge (KPI anomaly detection), micro-averaged over all KPIs,
    exactly as its published evaluation computes it.

    Per KPI, the evaluation re-grids the series at its smallest timestamp step and inserts every
    absent timestamp as label 0 and prediction 0; here those are the ``missing`` points (the grid
    of ``pipeline.data.prep.regularise``), so they are label 0 and never alarm whatever the arrays
    hold. A segment is a maximal run of 1s on that grid: a gap splits a segment, and each piece
    needs its own alarm. A segment is detected when an alarm lies in its first ``delay + 1`` grid
    points (clipped at the segment end; ``get_range_proba`` of the published scripts): then all its
    points are true positives, otherwise all are false negatives, and its later alarms count for
    nothing (not false positives either). Alarms outside segments are false positives point-wise.
    F1 is computed once on all KPIs concatenated; ``series_ids`` keeps a segment from running
    across two KPIs.

    The very first version of the challenge's ``evaluation.py`` looked for the early alarm in
    ``predict[pos:pos+delay+1]`` without clipping at the segment end and left an undetected
    segment's late alarms as true positives; the later ``get_range_proba``, which the task
    definition follows, is what is implemented.
    """
    ev = _event_table(labels, alarms, missing, series_ids, "aiops", delay)
    return _f1(int(ev.size[ev.detected].sum()), ev.fp, int(ev.size[~ev.detected].sum()))


def point_adjusted_f1(labels, alarms, missing=None, series_ids=None) -> float | None:
    """Legacy point-adjusted F1 (PA-F1; Xu et al., Donut, WWW 2018).

    An event counts as fully detected -- all its observed points true positives -- as soon as any
    alarm lies anywhere in it (a gap does not split an event: see the module docstring). This is
    known to be inflated: a random detector reaches a high PA-F1 on data with long events (Kim et
    al., AAAI 2022, "Towards a rigorous evaluation of time-series anomaly detection"). Reported for
    comparison with published work only; prefer :func:`rpa_f1`, :func:`aiops_f1` or :func:`vus_pr`.
    """
    ev = _event_table(labels, alarms, missing, series_ids, "bridged", None)
    return _f1(int(ev.size[ev.detected].sum()), ev.fp, int(ev.size[~ev.detected].sum()))


def rpa_f1(labels, alarms, missing=None, series_ids=None) -> float | None:
    """Revised point-adjusted F1: true positives and false negatives are counted per event.

    An event is detected when any alarm falls inside it (a gap does not split an event: see the
    module docstring). With E events of which TP_e are detected, and FP_p alarm points outside
    events: precision = TP_e / (TP_e + FP_p), recall = TP_e / E,
    F1 = 2PR / (P + R) = 2 TP_e / (2 TP_e + FP_p + (E - TP_e)).
    A long event detected once weighs as much as a short one, so long events no longer inflate
    the score the way they do in :func:`point_adjusted_f1`.
    """
    ev = _event_table(labels, alarms, missing, series_ids, "bridged", None)
    tp = int(ev.detected.sum())
    return _f1(tp, ev.fp, int(ev.detected.size - tp))


# --------------------------------------------------------------------------------------------
# threshold-free point-wise metrics
# --------------------------------------------------------------------------------------------


def auc_roc(labels, scores, missing=None) -> float | None:
    """Area under the ROC curve over observed points (``sklearn.metrics.roc_auc_score``)."""
    lab, sc, obs = _prep_scores(labels, scores, missing)
    y = lab[obs]
    if y.all() or not y.any():
        return None
    from sklearn.metrics import (
        roc_auc_score,  # here, not at the top: params validation imports METRICS
    )

    return float(roc_auc_score(y, sc[obs]))


def auc_pr(labels, scores, missing=None) -> float | None:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation;
    ``sklearn.metrics.average_precision_score``), over observed points."""
    lab, sc, obs = _prep_scores(labels, scores, missing)
    y = lab[obs]
    if not y.any():
        return None
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, sc[obs]))


# --------------------------------------------------------------------------------------------
# VUS: volume under the range-ROC / range-PR surfaces
# --------------------------------------------------------------------------------------------

VUS_THRESHOLDS = 250  # the reference implementation's default ``thre``


def range_auc_volumes(labels, scores, missing=None, series_ids=None,
                      sliding_window: int | None = None,
                      n_thresholds: int = VUS_THRESHOLDS) -> tuple[float, float] | None:
    """(VUS-ROC, VUS-PR): volumes under the range-AUC surfaces.

    Paparrizos, Boniol, Palpanas, Tsay, Elmore, Franklin, "Volume Under the Surface: a new
    accuracy evaluation measure for time-series anomaly detection", PVLDB 15(11), 2022.
    Re-implementation of ``metricor.RangeAUC_volume_opt`` from TheDatumOrg/VUS (PyPI ``vus``
    0.0.6, ``vus/utils/metrics.py``; the package itself is not used because it requires
    tensorflow, tsfresh, stumpy, tslearn, arch ...). For every buffer length ``w`` in
    ``0..sliding_window``:

    * labels are extended by ``w // 2`` points on each side of every event with a ramp
      ``sqrt(1 - d / w)`` at distance ``d`` (overlaps summed, then capped at 1);
    * ``n_thresholds`` thresholds are taken at evenly spaced ranks of the sorted scores
      (``score_sorted[linspace(0, n-1, n_thresholds).astype(int)]``; 250 by default, as the
      reference), a point alarms when ``score >= threshold``;
    * TP = sum of extended labels over alarms, P' = (P + labelled mass covered by alarms) / 2,
      recall = min(TP / P', 1), existence = share of (buffer-merged) events holding an alarm,
      TPR = recall * existence, FPR = (#alarms - TP) / (n - P'), precision = TP / #alarms;
    * range-AUC-ROC is the trapezoid under (FPR, TPR) from (0, 0) to (1, 1); range-AUC-PR is
      the step sum of (TPR_j - TPR_{j-1}) * precision_j, as in ``RangeAUC_volume_opt``.

    VUS-ROC / VUS-PR are the means over the ``sliding_window + 1`` buffer lengths. Identical to
    the reference (to float rounding) when there is no ``missing`` mask and no ``series_ids``;
    beyond it: missing points are never alarms and are left out of every count (a gap does not
    split an event, and an event never observed is dropped: module docstring), and ramps and event
    merging stop at series boundaries.

    ``sliding_window``: the largest buffer. The reference uses the series' period (ACF); the
    default here, when None, is the median event length (as in the ``get_sliding_window`` helper
    some VUS derivatives ship), since this function only sees labels and scores. Pass the period
    explicitly when it is known (e.g. 288 for a daily cycle at 5-minute sampling).

    Cost: O(n log n) once, then O(n) per buffer length, all vectorised (100k points with a
    buffer of 100 takes about a second). Returns None without positive or without negative
    observed points.
    """
    lab, sc, obs = _prep_scores(labels, scores, missing)
    n_full = lab.size
    start = _series_starts(series_ids, n_full)
    # Events keep their span across gaps, and one never observed is not there (module docstring).
    lab = _bridged_labels(lab, obs, start)
    ev_s, ev_e = _events(lab, start)
    n = int(obs.sum())
    P = int(np.sum(lab & obs))
    if P == 0 or P == n:
        return None
    if sliding_window is None:
        sliding_window = int(np.median(ev_e - ev_s))
    W = int(sliding_window)
    if W < 0:
        raise ValueError(f"sliding_window must be >= 0, got {W}")
    T = int(n_thresholds)
    if T < 1:
        raise ValueError(f"n_thresholds must be >= 1, got {T}")

    s_obs = sc[obs]
    order = np.argsort(-s_obs, kind="stable")
    thr = s_obs[order][np.linspace(0, n - 1, T).astype(int)]  # non-increasing
    n_pred = n - np.searchsorted(np.sort(s_obs), thr, side="left")  # #(score >= thr) >= 1
    at = n_pred - 1  # prefix position in descending-score order
    tp_orig = np.cumsum(lab[obs][order])[at]  # labelled points among the alarms

    # Series bounds of each event, so that ramps and merges stop at KPI boundaries.
    sid = np.cumsum(start) - 1
    s_first = np.flatnonzero(start)
    s_stop = np.r_[s_first[1:], n_full]
    lo, hi = s_first[sid[ev_s]], s_stop[sid[ev_s]]
    same_series = np.r_[False, sid[ev_s[1:]] == sid[ev_s[:-1]]]
    masked = np.where(obs, sc, -np.inf)  # a missing point can never be an alarm
    obs_idx = np.flatnonzero(obs)[order]
    base = lab.astype(float)

    auc = np.empty(W + 1)
    ap = np.empty(W + 1)
    for w in range(W + 1):  # one vectorised pass per buffer length
        h = w // 2
        ext = base
        if h > 0:
            d = np.arange(1, h + 1)
            right = (ev_e - 1)[:, None] + d  # first h points after each event
            left = ev_s[:, None] - d  # last h points before each event
            ramp = np.sqrt(1.0 - d / w)
            ramp = np.broadcast_to(ramp, right.shape)
            ok_r, ok_l = right < hi[:, None], left >= lo[:, None]
            idx = np.r_[right[ok_r], left[ok_l]]
            val = np.r_[ramp[ok_r], ramp[ok_l]]
            ext = np.minimum(base + np.bincount(idx, weights=val, minlength=n_full), 1.0)
        tp = np.cumsum(ext[obs_idx])[at]
        n_labels = P + tp - tp_orig  # P plus the ramp mass that the alarms cover
        # Events whose buffers touch are merged, as in the reference's ``new_sequence``.
        new = ~(same_series & np.r_[False, (ev_e[:-1] - 1 + h) >= (ev_s[1:] - h)])
        g_start = np.maximum(ev_s - h, lo)[new]
        g_stop = np.minimum(np.maximum.reduceat(ev_e - 1 + h, np.flatnonzero(new)) + 1,
                            hi[new])
        g_max = np.sort(_segment_max(masked, g_start, g_stop))
        existence = g_max.size - np.searchsorted(g_max, thr, side="left")
        p_new = (P + n_labels) / 2
        tpr = np.minimum(tp / p_new, 1.0) * existence / g_max.size
        fpr = (n_pred - tp) / (n - p_new)
        prec = tp / n_pred
        x = np.r_[0.0, fpr, 1.0]
        y = np.r_[0.0, tpr, 1.0]
        auc[w] = np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2)
        ap[w] = np.sum(np.diff(np.r_[0.0, tpr]) * prec)
    return float(auc.mean()), float(ap.mean())


def vus_pr(labels, scores, missing=None, series_ids=None, sliding_window: int | None = None,
           n_thresholds: int = VUS_THRESHOLDS) -> float | None:
    """VUS-PR, the volume under the range-PR surface; see :func:`range_auc_volumes`."""
    out = range_auc_volumes(labels, scores, missing, series_ids, sliding_window, n_thresholds)
    return None if out is None else out[1]


def vus_roc(labels, scores, missing=None, series_ids=None, sliding_window: int | None = None,
            n_thresholds: int = VUS_THRESHOLDS) -> float | None:
    """VUS-ROC, the volume under the range-ROC surface; see :func:`range_auc_volumes`."""
    out = range_auc_volumes(labels, scores, missing, series_ids, sliding_window, n_thresholds)
    return None if out is None else out[0]


# --------------------------------------------------------------------------------------------
# NAB score
# --------------------------------------------------------------------------------------------

# config/profiles.json of numenta/NAB, "standard" profile. The file also lists tnWeight, which
# NAB's scorer never uses: true negatives score 0 (A_TN = 0).
NAB_STANDARD = {"tpWeight": 1.0, "fpWeight": 0.11, "fnWeight": 1.0}
# The two other profiles of config/profiles.json: false positives cost twice as much, or a missed
# window twice as much. Any of them can be passed as ``profile`` to the NAB functions below.
NAB_REWARD_LOW_FP_RATE = {"tpWeight": 1.0, "fpWeight": 0.22, "fnWeight": 1.0}
NAB_REWARD_LOW_FN_RATE = {"tpWeight": 1.0, "fpWeight": 0.11, "fnWeight": 2.0}
NAB_PROFILES = {"standard": NAB_STANDARD, "reward_low_FP_rate": NAB_REWARD_LOW_FP_RATE,
                "reward_low_FN_rate": NAB_REWARD_LOW_FN_RATE}
NAB_PROBATION_PERCENT = 0.15


def nab_probation_length(n: int, percent: float = NAB_PROBATION_PERCENT) -> int:
    """NAB's probationary period: ``min(floor(percent * n), percent * 5000)`` leading rows
    (``getProbationPeriod`` in nab/util.py): 15 % of the series, at most 750 rows."""
    return int(min(math.floor(percent * n), percent * 5000))


def _scaled_sigmoid(x: np.ndarray) -> np.ndarray:
    # NAB sweeper.scaledSigmoid: 2*sigmoid(-5x) - 1, and -1 from 3 window-lengths on.
    x = np.asarray(x, dtype=float)
    return np.where(x >= 3.0, -1.0, 2.0 / (1.0 + np.exp(np.minimum(5.0 * x, 700.0))) - 1.0)


def _nab_windows(labels_or_windows: Any, n: int, miss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the label windows, ends inclusive, from 0/1 labels (a gap does not split a
    window: module docstring) or (start, end) index pairs."""
    arr = np.asarray(labels_or_windows)
    if arr.ndim == 1 and arr.size > 0:  # per-point 0/1 labels
        if arr.size != n:
            raise ValueError(f"NAB labels have {arr.size} points but the series has {n} "
                             "(pass windows as a list of (start, end) pairs)")
        start = _series_starts(None, n)
        s, e = _events(_bridged_labels(_labels(arr), ~miss, start), start)
        return s, e - 1
    arr = arr.astype(np.int64).reshape(-1, 2)  # (start, end) pairs
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    if arr.size and (np.any(arr[:, 1] < arr[:, 0]) or np.any(arr[1:, 0] <= arr[:-1, 1])
                     or arr[0, 0] < 0 or arr[-1, 1] >= n):
        raise ValueError("NAB windows must be disjoint (start, end) index pairs inside the series")
    return arr[:, 0], arr[:, 1]


def _nab_unpack(item: Sequence, n_name: str = "alarms"):
    if len(item) not in (3, 4):
        raise ValueError(f"each NAB series is (labels_or_windows, {n_name}, probation[, missing])")
    lw, values, probation = item[0], np.asarray(item[1]), item[2]
    miss = _missing(item[3] if len(item) == 4 else None, values.size)
    n = values.size
    p = nab_probation_length(n) if probation is None else int(probation)
    ws, we = _nab_windows(lw, n, miss)
    return ws, we, values, miss, p


def _nab_locate(idx: np.ndarray, ws: np.ndarray, we: np.ndarray):
    """Index of the last window starting at or before each point, and whether the point is in it."""
    k = np.searchsorted(ws, idx, side="right") - 1
    if ws.size == 0:
        return k, np.zeros(idx.size, dtype=bool)
    return k, (k >= 0) & (idx <= we[np.maximum(k, 0)])


def _nab_fp_weights(idx: np.ndarray, ws: np.ndarray, we: np.ndarray, fp_w: float) -> np.ndarray:
    """Signed weight of a false positive at each index (all outside windows): NAB scales the
    A_FP penalty by the sigmoid of the distance past the closest preceding window, relative to
    that window's length; with no preceding window the full -A_FP applies."""
    k = np.searchsorted(ws, idx, side="right") - 1
    out = np.full(idx.size, -fp_w)
    has = k >= 0
    kk = k[has]
    width = (we[kk] - ws[kk] + 1).astype(float)
    # NAB divides by (width - 1); for a one-point window it would divide by zero, and the
    # earlier NAB scorer used a relative distance of 2.0 there, kept here.
    rel = np.where(width > 1, (idx[has] - we[kk]) / np.maximum(width - 1, 1), 2.0)
    out[has] = _scaled_sigmoid(rel) * fp_w
    return out


def _nab_tp_weights(idx: np.ndarray, ws: np.ndarray, we: np.ndarray, k: np.ndarray,
                    tp_w: float) -> np.ndarray:
    # Position -(right - i + 1) / width runs from -1 (first point) to -1/width (last point);
    # dividing by scaledSigmoid(-1) makes the earliest possible detection worth exactly A_TP.
    width = (we[k] - ws[k] + 1).astype(float)
    pos = -(we[k] - idx + 1) / width
    return _scaled_sigmoid(pos) * tp_w / _scaled_sigmoid(np.array(-1.0))


def nab_raw_scores(series: Sequence[Sequence], profile: dict | None = None
                   ) -> tuple[float, int]:
    """Raw NAB score summed over series, and the number of scored windows.

    ``series``: iterable of ``(labels_or_windows, alarms, probation[, missing])`` per KPI, where
    ``labels_or_windows`` is a 0/1 array (windows = runs of 1) or a list of inclusive
    ``(start, end)`` index pairs, ``probation`` the number of leading points not scored (None:
    NAB's rule, :func:`nab_probation_length`).
    """
    prof = dict(NAB_STANDARD if profile is None else profile)
    tp_w, fp_w, fn_w = prof["tpWeight"], prof["fpWeight"], prof["fnWeight"]
    total, n_windows = 0.0, 0
    for item in series:  # one vectorised pass per series
        ws, we, alarms, miss, p = _nab_unpack(item)
        counted = we >= p  # NAB scores a window if any of its points is past probation
        idx = np.flatnonzero(alarms.astype(bool) & ~miss)
        idx = idx[idx >= p]
        k, inside = _nab_locate(idx, ws, we)
        # Only the earliest detection of a window counts (it has the largest reward).
        kin, first = np.unique(k[inside], return_index=True)
        tp = _nab_tp_weights(idx[inside][first], ws, we, kin, tp_w).sum()
        detected = np.zeros(ws.size, dtype=bool)
        detected[kin] = True
        fn = -fn_w * np.sum(counted & ~detected)
        fp = _nab_fp_weights(idx[~inside], ws, we, fp_w).sum()
        total += float(tp + fn + fp)
        n_windows += int(counted.sum())
    return total, n_windows


def _nab_normalise(raw: float, n_windows: int, prof: dict) -> float | None:
    # NAB runner.normalize: 100 * (raw - null) / (perfect - null) with corpus totals; the null
    # detector never alarms (-A_FN per window), the perfect one alarms at each window's start.
    if n_windows == 0:
        return None
    null = -prof["fnWeight"] * n_windows
    perfect = prof["tpWeight"] * n_windows
    return 100.0 * (raw - null) / (perfect - null)


def nab_standard(series: Sequence[Sequence], profile: dict | None = None) -> float | None:
    """NAB score, standard profile (A_TP=1, A_FP=0.11, A_FN=1, A_TN=0), normalised over a corpus.

    Lavin & Ahmad, "Evaluating real-time anomaly detection algorithms -- the Numenta Anomaly
    Benchmark", ICMLA 2015; scoring as in numenta/NAB ``nab/sweeper.py`` and
    ``runner.normalize``:

    * inside a label window only the earliest detection counts, rewarded
      ``A_TP * sigma(pos) / sigma(-1)`` with ``sigma(x) = 2/(1+exp(5x)) - 1`` and
      ``pos = -(end - i + 1) / width`` (1.0 at the window start, ~0 at its end);
    * a window without detection costs ``-A_FN``;
    * every alarm outside windows costs ``A_FP * sigma((i - end_prev) / (width_prev - 1))``
      (close behind a window it costs little, from 3 window-lengths on the full -A_FP); before
      the first window, the full ``-A_FP``;
    * the first ``probation`` points of each series are not scored at all (default 15 %, at most
      750 rows, as NAB); a window ending inside probation is not scored either;
    * raw scores are summed over the corpus, then normalised
      ``100 * (raw - null) / (perfect - null)`` with null = ``-A_FN * #windows`` (no alarm) and
      perfect = ``A_TP * #windows``: 0 for the null detector, 100 for the perfect one.

    ``series``: see :func:`nab_raw_scores` (alarms per series). ``missing`` points never alarm.
    Returns None when the corpus has no scored window.
    """
    prof = dict(NAB_STANDARD if profile is None else profile)
    raw, n_windows = nab_raw_scores(series, prof)
    return _nab_normalise(raw, n_windows, prof)


def nab_best_threshold(series: Sequence[Sequence], profile: dict | None = None
                       ) -> tuple[float, float | None]:
    """The single corpus-wide threshold maximising :func:`nab_standard` on the given data.

    ``series``: ``(labels_or_windows, scores, probation[, missing])`` per KPI. Exact sweep over
    every distinct score (as NAB's ``sweeper.calcScoreByThreshold``), vectorised: as the
    threshold falls, each newly admitted point changes the corpus score by its FP weight, or, in a
    window, by the gain of the window's earliest admitted detection. Returns ``(threshold,
    normalised score)`` with alarms ``score >= threshold``; when no alarm at all is best, the
    threshold is just above the largest score. The caller chooses the data: tuning on the test
    split is optimistic (NAB itself reports scores at the corpus-optimal threshold).
    """
    prof = dict(NAB_STANDARD if profile is None else profile)
    tp_w, fp_w, fn_w = prof["tpWeight"], prof["fpWeight"], prof["fnWeight"]
    all_scores, all_delta = [], []
    n_windows = 0
    top = -np.inf
    for item in series:  # one vectorised pass per series
        ws, we, sc, miss, p = _nab_unpack(item, "scores")
        sc = sc.astype(float)
        miss = miss | ~np.isfinite(sc)
        if (~miss).any():
            top = max(top, float(sc[~miss].max()))
        counted = we >= p
        n_windows += int(counted.sum())
        idx = np.flatnonzero(~miss)
        idx = idx[idx >= p]
        k, inside = _nab_locate(idx, ws, we)
        out = idx[~inside]
        all_scores.append(sc[out])
        all_delta.append(_nab_fp_weights(out, ws, we, fp_w))
        # In a window, sorted by falling score, the window's value is the reward of the
        # earliest index admitted so far; its running minimum is taken per window by shifting
        # each window's indices below all earlier windows' (exact integer arithmetic).
        ii, kk = idx[inside], k[inside]
        o = np.lexsort((-sc[ii], kk))
        ii, kk = ii[o], kk[o]
        big = sc.size + 1
        earliest = np.minimum.accumulate(ii - kk * big) + kk * big
        value = _nab_tp_weights(earliest, ws, we, kk, tp_w)
        first = np.r_[True, kk[1:] != kk[:-1]]
        prev = np.where(first, -fn_w, np.r_[0.0, value[:-1]])
        all_scores.append(sc[ii])
        all_delta.append(value - prev)
    if n_windows == 0:
        raise ValueError("no scored label window in the corpus: the NAB score is undefined")
    s = np.concatenate(all_scores)
    dlt = np.concatenate(all_delta)
    null = -fn_w * n_windows
    if s.size == 0:
        return float(np.nextafter(top, np.inf)), _nab_normalise(null, n_windows, prof)
    o = np.argsort(-s, kind="stable")
    s, cum = s[o], null + np.cumsum(dlt[o])
    last = np.r_[s[1:] != s[:-1], True]  # evaluate once all tied points are admitted
    cand_thr, cand_raw = s[last], cum[last]
    best = int(np.argmax(cand_raw))  # first maximum = highest threshold
    if cand_raw[best] <= null:
        return float(np.nextafter(top, np.inf)), _nab_normalise(null, n_windows, prof)
    return float(cand_thr[best]), _nab_normalise(float(cand_raw[best]), n_windows, prof)


# --------------------------------------------------------------------------------------------
# best-F1 threshold
# --------------------------------------------------------------------------------------------

BEST_F1_METRICS = ("point_f1", "aiops_f1", "rpa_f1", "point_adjusted_f1")


def best_f1_threshold(labels, scores, missing=None, metric: str = "point_f1",
                      series_ids=None, delay: int = 7) -> tuple[float, float]:
    """Threshold maximising an F1 metric, and that F1: ``(threshold, f1)``; alarms are
    ``score >= threshold``, and the F1 is exactly ``metric(labels, scores >= threshold, missing,
    series_ids)`` (a NaN score never alarms, as ``score >= threshold`` is False for it).

    Exact over every distinct observed score (no grid), vectorised by sorting: the point-wise
    counts TP(t), FP(t) come from ``searchsorted`` on the sorted positive / negative scores
    (the same curve as ``sklearn.metrics.precision_recall_curve``); for the event metrics each
    event (as the metric defines it: a gap splits a segment for ``aiops_f1`` only) is detected
    from the threshold equal to the largest score in its detection window (first ``delay + 1``
    points for ``aiops_f1``, the whole event otherwise), so TP(t) is a cumulative sum over events
    sorted by that score. Ties in F1 go to the highest threshold.
    ``metric``: one of :data:`BEST_F1_METRICS`. Raises ValueError without positive labels.
    """
    if metric not in BEST_F1_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(BEST_F1_METRICS)}")
    lab, sc, can_alarm = _prep_scores(labels, scores, missing)
    obs = ~_missing(missing, lab.size)  # labels are read here; NaN scores only never alarm
    if not np.any(lab & obs):
        raise ValueError("best_f1_threshold needs at least one observed positive label")
    if not can_alarm.any():
        raise ValueError("best_f1_threshold needs at least one observed, finite score")
    cand = np.unique(sc[can_alarm])[::-1]  # every distinct score, highest first
    neg = np.sort(sc[can_alarm & ~lab])
    fp = neg.size - np.searchsorted(neg, cand, side="left")
    if metric == "point_f1":
        pos = np.sort(sc[can_alarm & lab])
        tp = pos.size - np.searchsorted(pos, cand, side="left")
        fn = int(np.sum(lab & obs)) - tp
    else:
        start = _series_starts(series_ids, lab.size)
        ev_s, ev_e = _events(_event_labels(lab, obs, start, "aiops" if metric == "aiops_f1"
                                           else "bridged"), start)
        c_obs = _prefix(obs)
        size = c_obs[ev_e] - c_obs[ev_s]
        until = np.minimum(ev_s + int(delay) + 1, ev_e) if metric == "aiops_f1" else ev_e
        d = _segment_max(np.where(can_alarm, sc, -np.inf), ev_s, until)
        o = np.argsort(d)
        d_sorted = d[o]
        # weight: points for aiops / PA, one per event for rpa
        w = np.ones(size.size) if metric == "rpa_f1" else size.astype(float)
        w_cum = np.r_[0.0, np.cumsum(w[o])]
        first_ge = np.searchsorted(d_sorted, cand, side="left")
        tp = w_cum[-1] - w_cum[first_ge]
        fn = w_cum[-1] - tp
    den = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, den, out=np.zeros(cand.size), where=den > 0)
    best = int(np.argmax(f1))
    return float(cand[best]), float(f1[best])


# --------------------------------------------------------------------------------------------
# registry and evaluate_all
# --------------------------------------------------------------------------------------------


def _split_series(series_ids, n: int) -> list[slice]:
    start = np.flatnonzero(_series_starts(series_ids, n))
    stop = np.r_[start[1:], n]
    return [slice(a, b) for a, b in zip(start, stop, strict=True)]


def _nab_from_arrays(labels, alarms, missing=None, series_ids=None, probation=None, **_):
    lab = _labels(labels)
    miss = _missing(missing, lab.size)
    al = np.asarray(alarms, dtype=bool)
    return nab_standard([(lab[s], al[s], probation, miss[s])
                         for s in _split_series(series_ids, lab.size)])


@dataclass(frozen=True)
class MetricSpec:
    """How to call a metric.

    ``needs``: "scores" (threshold-free) or "alarms" (thresholded). ``per_series``: the metric
    depends on series boundaries (it takes ``series_ids``; for NAB, per-series inputs, which
    ``compute`` builds from ``series_ids``). ``compute(labels, values, missing, series_ids,
    **options)`` has the same signature for every metric; ``fn`` is the public function.
    """

    fn: Callable[..., Any]
    needs: Literal["scores", "alarms"]
    per_series: bool
    description: str
    compute: Callable[..., float | None]


def _plain(fn):
    return lambda labels, values, missing=None, series_ids=None, **_: fn(labels, values, missing)


def _with_series(fn, *keys):
    def call(labels, values, missing=None, series_ids=None, **opts):
        return fn(labels, values, missing, series_ids, **{k: opts[k] for k in keys if k in opts})
    return call


def _vus_call(which):
    def call(labels, values, missing=None, series_ids=None, vus_window=None, **_):
        out = range_auc_volumes(labels, values, missing, series_ids, vus_window)
        return None if out is None else out[which]
    return call


METRICS: dict[str, MetricSpec] = {
    "point_precision": MetricSpec(point_precision, "alarms", False, "point-wise precision",
                                  _plain(point_precision)),
    "point_recall": MetricSpec(point_recall, "alarms", False, "point-wise recall",
                               _plain(point_recall)),
    "point_f1": MetricSpec(point_f1, "alarms", False, "point-wise F1", _plain(point_f1)),
    "aiops_f1": MetricSpec(aiops_f1, "alarms", True, "AIOps 2018 delay-adjusted F1",
                           _with_series(aiops_f1, "delay")),
    "rpa_f1": MetricSpec(rpa_f1, "alarms", True, "revised point-adjusted F1 (event TP/FN)",
                         _with_series(rpa_f1)),
    "point_adjusted_f1": MetricSpec(point_adjusted_f1, "alarms", True,
                                    "legacy PA-F1 (inflated; comparison only)",
                                    _with_series(point_adjusted_f1)),
    "nab_standard": MetricSpec(nab_standard, "alarms", True, "NAB score, standard profile",
                               _nab_from_arrays),
    "auc_roc": MetricSpec(auc_roc, "scores", False, "ROC AUC", _plain(auc_roc)),
    "auc_pr": MetricSpec(auc_pr, "scores", False, "average precision", _plain(auc_pr)),
    "vus_roc": MetricSpec(vus_roc, "scores", True, "volume under the range-ROC surface",
                          _vus_call(0)),
    "vus_pr": MetricSpec(vus_pr, "scores", True, "volume under the range-PR surface",
                         _vus_call(1)),
}


def evaluate_all(labels, scores=None, alarms=None, missing=None, series_ids=None, *,
                 delay: int = 7, vus_window: int | None = None,
                 nab_probation: int | None = None) -> dict[str, float | None]:
    """Every metric of :data:`METRICS` that applies: score-based ones when ``scores`` is given,
    alarm-based ones when ``alarms`` is given; None for the others and for undefined values
    (e.g. no positive label: AUCs and VUS are None).

    ``delay``: AIOps delay; ``vus_window``: VUS maximum buffer (None: median event length);
    ``nab_probation``: leading points per series not scored by NAB (None: NAB's 15 % rule).
    """
    opts = {"delay": delay, "vus_window": vus_window, "probation": nab_probation}
    out: dict[str, float | None] = {}
    for name, spec in METRICS.items():
        values = scores if spec.needs == "scores" else alarms
        out[name] = None if values is None else spec.compute(labels, values, missing,
                                                             series_ids, **opts)
    return out
