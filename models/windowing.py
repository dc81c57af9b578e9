"""The one place where series become windows. Vectorised: no Python loop per window or point.

A series of ``n`` points with window ``length`` and ``stride`` gives
``1 + (n - length) // stride`` windows; window ``i`` covers points
``[i * stride, i * stride + length)``. Series shorter than one window give no windows.

Causal scoring (``Detector.score(frame, causal=True)``) goes through :func:`scores_at_window_ends`:
row ``t`` is scored from the stride-1 window of its KPI that *ends* at ``t``, and a detector that
scores every point of a window reads out :func:`last_position`, the row the window ends at.

NaN in a detector's output means "no window covers this point", and only that (the base class fills
those points, :func:`models.base.fill_uncovered`). So the scores of windows, which by construction cover
their points, must be finite: :func:`finite_window_scores` refuses NaN or infinity there (broken weights
or fitted values), rather than let them pass for points no window covers.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def n_windows(n: int, length: int, stride: int = 1) -> int:
    if length <= 0 or stride <= 0:
        raise ValueError(f"window length and stride must be positive, got {length=}, {stride=}")
    return 0 if n < length else 1 + (n - length) // stride


def sliding_windows(x: np.ndarray, length: int, stride: int = 1) -> np.ndarray:
    """Windows over the first axis of ``x``: shape ``(n_windows, length, *x.shape[1:])``.

    Returns a read-only strided view; copy it before writing.
    """
    x = np.asarray(x)
    count = n_windows(len(x), length, stride)
    if count == 0:
        return np.empty((0, length, *x.shape[1:]), dtype=x.dtype)
    view = sliding_window_view(x, length, axis=0)[::stride]  # (count, *rest, length)
    return np.moveaxis(view, -1, 1)[:count]


def window_starts(n: int, length: int, stride: int = 1) -> np.ndarray:
    """Start index of each window, aligned with :func:`sliding_windows`."""
    return np.arange(n_windows(n, length, stride)) * stride


def windows_by_kpi(values: np.ndarray, slices, length: int, stride: int = 1):
    """Windows of every KPI, concatenated, plus the row index (into ``values``) of each window's start.

    ``slices`` are the contiguous row ranges of each KPI (see ``models.frame.kpi_slices``);
    windows never cross a KPI boundary. One vectorised call per KPI, none per window.
    """
    parts, starts = [], []
    for _, sl in slices:
        w = sliding_windows(values[sl], length, stride)
        parts.append(w)
        starts.append(sl.start + window_starts(sl.stop - sl.start, length, stride))
    if not parts:
        return np.empty((0, length, *np.asarray(values).shape[1:])), np.empty(0, dtype=np.int64)
    return np.concatenate(parts), np.concatenate(starts).astype(np.int64)


def finite_window_scores(scores, what: str = "window score(s)") -> np.ndarray:
    """``scores`` as float64, every one finite; a ``RuntimeError`` saying how many are not."""
    scores = np.asarray(scores)
    bad = ~np.isfinite(scores)
    if bad.any():
        raise RuntimeError(f"{int(bad.sum())} of {scores.size} {what} are not finite (NaN or inf) on points that a "
                           "full window covers: the detector's weights or fitted values are broken")
    return scores.astype(np.float64, copy=False)


def spread_to_points(window_scores: np.ndarray, starts: np.ndarray, n: int, length: int,
                     reduce: str = "mean") -> np.ndarray:
    """Map per-point scores of windows ``(n_windows, length)`` back onto ``n`` points.

    Each point gets the mean (or max) of the scores that windows covering it assigned to it;
    points no window covers get NaN. Vectorised with ``np.add.at`` / ``np.maximum.at``.
    """
    window_scores = finite_window_scores(window_scores)
    if window_scores.ndim == 1:
        window_scores = np.repeat(window_scores[:, None], length, axis=1)
    idx = (starts[:, None] + np.arange(length)[None, :]).ravel()
    vals = window_scores.ravel()
    out = np.full(n, np.nan)
    if reduce == "mean":
        total = np.zeros(n)
        count = np.zeros(n)
        np.add.at(total, idx, vals)
        np.add.at(count, idx, 1.0)
        covered = count > 0
        out[covered] = total[covered] / count[covered]
    elif reduce == "max":
        acc = np.full(n, -np.inf)
        np.maximum.at(acc, idx, vals)
        covered = np.isfinite(acc)
        out[covered] = acc[covered]
    else:
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    return out


def covering_starts(n: int, length: int, stride: int = 1) -> np.ndarray:
    """Window starts every ``stride`` points, plus one window ending at the last point when the
    stride-aligned ones stop short of it: every point of a series of ``n >= length`` points is covered
    (which needs ``stride <= length``).

    >>> covering_starts(10, 4, 3).tolist()
    [0, 3, 6]
    >>> covering_starts(11, 4, 3).tolist()
    [0, 3, 6, 7]
    """
    if stride > length:
        raise ValueError(f"covering windows need stride <= length, got {stride=}, {length=}")
    starts = window_starts(n, length, stride)
    if len(starts) and starts[-1] != n - length:
        starts = np.append(starts, n - length)
    return starts


def windows_at(x: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """The windows of ``x`` that start at ``starts``: shape ``(len(starts), length, *x.shape[1:])`` (a copy)."""
    x = np.asarray(x)
    starts = np.asarray(starts, dtype=np.int64)
    if len(starts) == 0:
        return np.empty((0, length, *x.shape[1:]), dtype=x.dtype)
    if starts.min() < 0 or starts.max() + length > len(x):
        raise ValueError(f"windows of length {length} at starts {starts.min()}..{starts.max()} "
                         f"do not fit in {len(x)} points")
    return np.moveaxis(sliding_window_view(x, length, axis=0), -1, 1)[starts]


def covering_windows_by_kpi(values: np.ndarray, slices, length: int, stride: int = 1):
    """Like :func:`windows_by_kpi`, with :func:`covering_starts`: each KPI's tail is covered too.

    Returns ``(windows, starts)``, ``starts`` being row indices into ``values``. KPIs shorter than
    ``length`` give no window.
    """
    parts, starts = [], []
    for _, sl in slices:
        local = covering_starts(sl.stop - sl.start, length, stride)
        parts.append(windows_at(values[sl], local, length))
        starts.append(sl.start + local)
    if not parts:
        return np.empty((0, length, *np.asarray(values).shape[1:])), np.empty(0, dtype=np.int64)
    return np.concatenate(parts), np.concatenate(starts).astype(np.int64)


def sequence_window_starts(starts: np.ndarray, length: int, count: int) -> np.ndarray:
    """Starts of ``count`` back-to-back windows of ``length`` for sequences beginning at ``starts``.

    A sequence starting at ``s`` spans ``count * length`` points; its window ``j`` starts at
    ``s + j * length``. Shape ``(len(starts), count)``.

    >>> sequence_window_starts(np.array([0, 5]), 3, 2).tolist()
    [[0, 3], [5, 8]]
    """
    return np.asarray(starts, dtype=np.int64)[:, None] + length * np.arange(count, dtype=np.int64)[None, :]


def last_position(per_point):
    """The causal read-out of per-point window scores ``(k, length, ...)``: the point each window ends
    on, ``(k, ...)``. Works on numpy arrays and torch tensors alike (inside a batched ``_infer``)."""
    return per_point[:, -1]


def scores_at_window_ends(values: np.ndarray, slices, length: int,
                          score_fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Causal scores: row ``t`` gets ``score_fn`` of the stride-1 window of its KPI ending at ``t``.

    ``score_fn`` maps windows ``(k, length, *values.shape[1:])`` -- one KPI's read-only strided view,
    never copied as a whole: batch it (``TorchDetector._infer`` does) -- to one result per window,
    ``(k, ...)``. The output, float64, has one such result per row of ``values``; rows before a KPI's
    first full window (its first ``length - 1`` rows, or all of a shorter KPI) get NaN, and when no KPI
    has a full window it is ``(len(values),)`` NaN. A result at ``t`` depends only on rows
    ``t - length + 1 .. t`` of the same KPI, so a prefix of the frame gets the same results.
    """
    values = np.asarray(values)
    out = None
    for _, sl in slices:
        view = sliding_windows(values[sl], length)
        if not len(view):
            continue
        scores = finite_window_scores(score_fn(view))
        if out is None:
            out = np.full((len(values), *scores.shape[1:]), np.nan)
        out[sl.start + length - 1: sl.stop] = scores
    return np.full(len(values), np.nan) if out is None else out
