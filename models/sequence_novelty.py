"""Sequence novelty: how new the current behaviour is, given everything the KPI did before.

A cheap, streaming detector built for NAB's kind of data (one KPI at a time, anomalies that are new
*patterns* as often as big values), in the spirit of Numenta's HTM detector without its network. Per
KPI, four causal channels:

- **transition novelty** (what HTM's raw anomaly score measures: was this input predicted from the one
  before?). The value is quantised into ``buckets`` buckets spanning the KPI's train + validation
  range (values beyond it get buckets of their own, up to one range beyond either edge), and the
  channel is ``-log p(b_t | b_{t-1})`` with ``p = (n(b_{t-1} -> b_t) + a) / (n(b_{t-1}) + 5 a)``,
  where ``n`` counts the KPI's transitions *before* ``t`` in the scored frame and ``a =
  pseudo_count``. It is averaged over ``offsets`` quantisations shifted by a fraction of a bucket, so
  a value on a bucket edge is not novel by accident (as HTM's overlapping encodings). A KPI keeps
  learning as it streams: a pattern seen often stops being novel.
- **time-of-day novelty** (HTM's NAB model also encodes the time of day): the same count with the
  point's bin of the day (``day_bins`` equal bins from midnight, UTC) as the context instead of the
  previous bucket, on a coarser quantisation (``daily_buckets``): a level the KPI never had at this
  hour is new even when it is ordinary at other hours.
- **nearest earlier window**: the Euclidean distance from the last ``match_length`` values to the
  closest window of the same length that ended at least ``exclusion`` points earlier and at most
  ``match_history`` points back (the left matrix profile, in normalised units), so a shape the KPI
  never made before scores high even when every value is ordinary.
- **new extreme**: the value leaves the KPI's range so far (train + validation, then the frame's own
  running minimum and maximum) by more than ``extreme_tolerance`` of that range: HTM's "spatial
  anomaly" rule. Such a point scores the maximum surprise (``MAX_SURPRISE``), whatever the others say.

The first three channels (``channels`` chooses among them; ``extreme_tolerance: null`` turns the rule
off) are calibrated per KPI, each with NAB's anomaly likelihood
(:class:`models.calibration.LikelihoodCalibration`, fitted on the train + validation channel values),
and the score is the largest of the three surprises. The output is therefore already on the pipeline's
calibrated scale (``-log10`` of a tail probability, 5 = NAB's red zone): params.yaml sets this
detector's ``evaluate.calibration_by_detector`` to ``none`` so it is not calibrated twice.

Everything is vectorised per KPI: counts of earlier transitions are group-wise cumulative counts,
and the nearest earlier windows are blocks of matrix products. The score at ``t`` uses rows up to
``t`` of its KPI only; ``causal=True`` takes the same path.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from models.base import Detector
from models.checks import StateError, blame, mapping, number
from models.calibration import MAX_SURPRISE, Calibration, make_calibration
from models.configs.sequence_novelty import SequenceNoveltyConfig
from models.frame import KPI_ID, MISSING, TIMESTAMP, VALUE, kpi_slices

PRIOR_OUTCOMES = 5  # the pseudo-count is spread as if a bucket had this many possible successors


def earlier_counts(keys: np.ndarray) -> np.ndarray:
    """How often each key occurred before each position (0 at its first occurrence)."""
    return pd.Series(keys).groupby(keys, sort=False).cumcount().to_numpy()


def novelty(x: np.ndarray, lo: float, hi: float, buckets: int, offsets: int, pseudo_count: float,
            context: np.ndarray | None = None) -> np.ndarray:
    """``-log p(b_t | c_t)`` from the (context, bucket) pairs before ``t``, averaged over ``offsets``
    quantisations shifted by a fraction of a bucket. ``c_t`` is the previous point's bucket (a
    transition) when ``context`` is None, else ``context[t]`` (non-negative integers)."""
    width = max(hi - lo, 1e-6) / buckets
    levels = 3 * buckets + 1  # buckets from one range below ``lo`` to one range above ``hi``
    out = np.zeros(x.size)
    for shift in np.arange(offsets) / offsets:
        b = np.clip(np.floor((x - lo) / width + shift), -buckets, 2 * buckets).astype(np.int64) + buckets
        ctx = np.r_[0, b[:-1]] if context is None else context.astype(np.int64)
        p = (earlier_counts(ctx * levels + b) + pseudo_count) / (earlier_counts(ctx) + PRIOR_OUTCOMES * pseudo_count)
        out -= np.log(np.minimum(p, 1.0))
    return out / offsets


def day_bins(timestamps: pd.Series, bins: int) -> np.ndarray:
    """Each point's bin of the (UTC) day, ``bins`` equal bins from midnight."""
    ts = timestamps.dt
    return ((ts.hour * 60 + ts.minute).to_numpy() * bins) // 1440


def nearest_earlier_window(x: np.ndarray, length: int, exclusion: int, history: int, block: int = 1024) -> np.ndarray:
    """Distance from the window ending at ``t`` to the closest window ending ``exclusion`` to ``history``
    points before it (0 where there is none yet)."""
    out = np.zeros(x.size)
    if x.size < length + exclusion:
        return out
    windows = np.lib.stride_tricks.sliding_window_view(x, length)  # row r ends at point r + length - 1
    sq = np.einsum("ij,ij->i", windows, windows)
    best = np.full(len(windows), np.inf)
    for a in range(exclusion, len(windows), block):
        b = min(len(windows), a + block)
        lo, hi = max(0, a - history), b - exclusion  # candidate rows of this block
        # ||u - v||^2 = |u|^2 + (|v|^2 - 2 u.v): the row's own |u|^2 is added after the minimum
        part = sq[None, lo:hi] - 2.0 * (windows[a:b] @ windows[lo:hi].T)
        # Every row of the block may use the columns [b - 1 - history, a - exclusion]; only the two
        # edges outside that band need the per-row lag mask (most of the work, when history >> block).
        mid_lo, mid_hi = min(max(lo, b - 1 - history), hi), max(min(hi, a - exclusion + 1), lo)
        nearest = np.full(b - a, np.inf)
        if mid_hi > mid_lo:
            nearest = part[:, mid_lo - lo:mid_hi - lo].min(axis=1)
        for e_lo, e_hi in ((lo, mid_lo), (max(mid_hi, mid_lo), hi)):
            if e_hi > e_lo:
                lag = np.arange(a, b)[:, None] - np.arange(e_lo, e_hi)[None, :]
                edge = np.where((lag >= exclusion) & (lag <= history), part[:, e_lo - lo:e_hi - lo], np.inf)
                nearest = np.minimum(nearest, edge.min(axis=1))
        best[a:b] = sq[a:b] + nearest
    dist = np.sqrt(np.maximum(best, 0.0))
    out[length - 1:] = np.where(np.isfinite(dist), dist, 0.0)
    return out


def new_extremes(x: np.ndarray, observed: np.ndarray, lo: float, hi: float, tolerance: float) -> np.ndarray:
    """True where an observed value leaves ``[lo, hi]`` widened by everything observed before it, by
    more than ``tolerance`` times that range."""
    seen = np.where(observed, x, np.nan)  # fmax/fmin skip NaN: interpolated points widen nothing
    prev_max = np.fmax.accumulate(np.r_[hi, seen])[:-1]
    prev_min = np.fmin.accumulate(np.r_[lo, seen])[:-1]
    margin = tolerance * (prev_max - prev_min)
    return observed & (prev_max > prev_min) & ((x > prev_max + margin) | (x < prev_min - margin))


class SequenceNovelty(Detector):
    name = "sequence_novelty"
    config_class = SequenceNoveltyConfig
    config: SequenceNoveltyConfig

    def __init__(self, config=None, train_config=None):
        super().__init__(config, train_config)
        self.ranges: dict[str, tuple[float, float]] = {}
        self.calibrations: dict[str, Calibration] = {}

    def _fit_core(self, train: pd.DataFrame, val: pd.DataFrame | None) -> None:
        # Calibrate on train + validation as one history per KPI, so validation starts with its context.
        history = train if val is None else (pd.concat([train, val], ignore_index=True)
                                             .sort_values([KPI_ID, TIMESTAMP], kind="stable", ignore_index=True))
        values, missing = history[VALUE].to_numpy(np.float64), history[MISSING].to_numpy(bool)
        self.ranges = {}
        for kpi, sl in kpi_slices(history):
            seen = values[sl][~missing[sl]]
            if seen.size:
                self.ranges[kpi] = (float(seen.min()), float(seen.max()))
        channels = self._channels(history)
        ids = history[KPI_ID].to_numpy()
        self.calibrations = {name: make_calibration(self.config.calibration_config()).fit(raw, ids, missing)
                             for name, raw in channels.items() if name in self.config.channels}

    def _score_core(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        # Every channel and the likelihood stream forward: causal in both modes.
        channels = self._channels(frame)
        ids = frame[KPI_ID].to_numpy()
        surprise = np.maximum.reduce([cal.transform(channels[name], ids) for name, cal in self.calibrations.items()])
        return np.where(channels["extreme"], MAX_SURPRISE, surprise)

    def _channels(self, frame: pd.DataFrame) -> dict[str, np.ndarray]:
        cfg = self.config
        values, missing = frame[VALUE].to_numpy(np.float64), frame[MISSING].to_numpy(bool)
        out = {"novelty": np.zeros(len(frame)), "daily": np.zeros(len(frame)), "match": np.zeros(len(frame)),
               "extreme": np.zeros(len(frame), dtype=bool)}
        for kpi, sl in kpi_slices(frame):
            x = values[sl]
            lo, hi = self.ranges.get(kpi) or self._head_range(x, missing[sl])
            if "novelty" in cfg.channels:
                out["novelty"][sl] = novelty(x, lo, hi, cfg.buckets, cfg.offsets, cfg.pseudo_count)
            if "daily" in cfg.channels:
                out["daily"][sl] = novelty(x, lo, hi, cfg.daily_buckets, cfg.offsets, cfg.pseudo_count,
                                           context=day_bins(frame[TIMESTAMP].iloc[sl], cfg.day_bins))
            if "match" in cfg.channels:
                out["match"][sl] = nearest_earlier_window(x, cfg.match_length, cfg.exclusion or cfg.match_length,
                                                          cfg.match_history)
            if cfg.extreme_tolerance is not None:
                out["extreme"][sl] = new_extremes(x, ~missing[sl], lo, hi, cfg.extreme_tolerance)
        return out

    def _head_range(self, x: np.ndarray, missing: np.ndarray) -> tuple[float, float]:
        """A KPI never seen in training: the range of its first ``unseen_head`` observed points."""
        head = x[~missing][: self.config.unseen_head]
        head = head if head.size else x[: self.config.unseen_head]
        return float(head.min()), float(head.max())

    def _fitted_scalars(self) -> dict[str, Any]:
        return {"ranges": {k: list(v) for k, v in self.ranges.items()},
                "calibrations": {name: c.to_dict() for name, c in self.calibrations.items()}}

    def _load_fitted_scalars(self, scalars: dict[str, Any]) -> None:
        self.ranges = {}
        for kpi, pair in mapping(scalars.get("ranges"), "ranges").items():
            if not isinstance(pair, list) or len(pair) != 2:
                raise StateError(f"ranges.{kpi}", f"must be a [low, high] pair, got {pair!r}")
            low, high = (number(v, f"ranges.{kpi}") for v in pair)
            if low > high:
                raise StateError(f"ranges.{kpi}", f"low {low} is above high {high}")
            self.ranges[str(kpi)] = (low, high)
        self.calibrations = {}
        for name, d in mapping(scalars.get("calibrations"), "calibrations").items():
            with blame(f"calibrations.{name}"):
                self.calibrations[name] = Calibration.from_dict(d)
        if set(self.calibrations) != set(self.config.channels):
            raise ValueError(f"sequence_novelty: saved calibrations {sorted(self.calibrations)}, the config's "
                             f"channels are {sorted(self.config.channels)}")
