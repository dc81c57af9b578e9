"""Score calibration: every detector's raw scores on one common scale, per KPI (a post-rule).

Detectors return raw scores whose scale depends on the detector and on the KPI: a reconstruction
error of 0.3 may be routine on one KPI and extraordinary on the next, so no single threshold fits a
corpus. Calibration maps each raw score to its **surprise**, ``-log10(tail probability)``: how
unlikely a score at least this high is, given the KPI's own history. 2 means "a 1-in-100 score", 5
"a 1-in-100,000 score" (NAB's red zone, ``likelihood >= 0.99999``), whatever the detector. Thresholds
(:mod:`pipeline.thresholds`) are then fitted on surprise, where one value means the same thing for
every KPI.

As Merlion's post-rules: detectors keep returning raw scores; the pipeline owns calibration, fits
it on train (and validation) raw scores only, serialises it beside the threshold (``to_dict``), and
runs the same fitted transform everywhere scores become alarms (evaluate, ``kpiguard bench``, the
served MLflow bundle behind ``kpiguard score`` and the scoring DAG, hence the daily report).

It lives in ``models/`` (numpy, pandas, :mod:`models.frame` and :mod:`models.jsonable` only; SciPy is
imported where the likelihood needs it) because one detector consumes calibrated scores itself: the
``ensemble`` (:mod:`models.ensemble`) averages its members' calibrated scores, and a detector must not
import the pipeline that runs it.

Methods (``evaluate.calibration.method`` in params.yaml)
--------------------------------------------------------
* ``none``: the raw score, unchanged (for comparison).
* ``likelihood``: NAB's *anomaly likelihood* (Ahmad, Lavin, Purdy, Agha, "Unsupervised real-time
  anomaly detection for streaming data", Neurocomputing 2017; ``nupic.algorithms.anomaly_likelihood``
  as used by NAB's HTM detector). ``a_t`` is the mean of the last ``short_window`` raw scores; its
  tail probability is taken under a Gaussian of the ``long_window`` values of ``a`` *before* ``t``
  (upper tail: only unusually high scores are surprising). Where a frame holds fewer than
  ``long_window`` earlier points (its start, or a short scoring context), the fitted per-KPI Gaussian
  of ``a`` on the calibration data, weighted by the number of points it was fitted on, fills the rest
  of the window, so a served model scoring one day with a few days of context leans on what was
  learnt in training while a long stream adapts to itself. The standard deviation is floored at
  ``min_std_ratio`` times the fitted one, so a flat stretch does not turn the slightest blip into an
  alarm (NAB floors its variance for the same reason). NAB's red-zone filter is kept: a point in the
  red zone (surprise >= ``red``) right after ``suppress_window`` points that contain one is capped at
  ``yellow``, so one event raises one alarm, not a run of them. Causal: the value at ``t`` uses rows
  up to ``t`` of its KPI only, so it streams.
* ``ecdf``: the empirical tail probability of the KPI's calibration scores, ``P(S >= s)``, linear
  between quantile knots, and past the ``tail_level`` quantile an exponential tail fitted to the
  excesses over it (peaks over threshold with shape 0), so scores beyond anything seen in training
  keep growing in surprise instead of saturating. Static, hence causal.

KPIs with fewer than ``min_points`` observed calibration scores, and KPIs never seen in fitting, use
the state fitted on all KPIs together.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from models.checks import StateError, integer, mapping, number
from models.frame import id_runs
from models.jsonable import to_jsonable

__all__ = ["Calibration", "NoCalibration", "LikelihoodCalibration", "EcdfCalibration",
           "CalibrationError", "make_calibration", "surprise", "METHODS"]

MAX_SURPRISE = 300.0   # -log10 of the smallest tail probability kept (float64 reaches 1e-308)
LN10 = math.log(10.0)


class CalibrationError(ValueError):
    """A calibration cannot be configured or fitted as asked; the message says what to change."""


def surprise(log_tail: np.ndarray) -> np.ndarray:
    """``-log10(p)`` from natural-log tail probabilities, clipped to ``[0, MAX_SURPRISE]``."""
    return np.clip(-np.asarray(log_tail, dtype=np.float64) / LN10, 0.0, MAX_SURPRISE)


def gaussian_log_tail(z: np.ndarray) -> np.ndarray:
    """``log P(Z >= z)`` for a standard normal, accurate far into the tail (no underflow)."""
    from scipy.special import log_ndtr

    return log_ndtr(-np.asarray(z, dtype=np.float64))


@dataclass
class Calibration:
    """Base: per-KPI fitted states plus a pooled fallback; subclasses fit and apply one state."""

    min_points: int = 50
    per_kpi: dict[str, dict[str, Any]] = field(default_factory=dict)
    pooled: dict[str, Any] | None = None

    method: ClassVar[str] = ""
    params: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if int(self.min_points) < 2:
            raise CalibrationError(f"calibration min_points must be >= 2, got {self.min_points}")

    # -- to implement --------------------------------------------------------------------------
    def _fit_one(self, scores: np.ndarray) -> dict[str, Any]:
        """The state of one KPI (or of all pooled) from its observed calibration scores."""
        raise NotImplementedError

    def _apply_one(self, scores: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        """Surprise of one KPI's scores, in time order."""
        raise NotImplementedError

    def _fit_inputs(self, scores: np.ndarray) -> np.ndarray:
        """What the state is fitted on (the likelihood fits on short-window means)."""
        return scores

    # -- public API ----------------------------------------------------------------------------
    def fit(self, scores, kpi_ids, missing=None) -> "Calibration":
        """Fit on raw scores of the calibration split(s) (train and validation, never test).

        ``kpi_ids`` gives each row's KPI; each KPI's rows must be contiguous and in time order.
        ``missing`` rows (interpolated points) and non-finite scores are left out of the fit.
        """
        sc = np.asarray(scores, dtype=np.float64)
        ids = np.asarray(kpi_ids).astype(str)
        if sc.ndim != 1 or ids.shape != sc.shape:
            raise CalibrationError(f"scores {sc.shape} and kpi_ids {ids.shape} must be 1-D and aligned")
        keep = np.isfinite(sc)
        if missing is not None:
            keep &= ~np.asarray(missing, dtype=bool)
        self.per_kpi, pooled = {}, []
        for kpi, sl in id_runs(ids):
            inputs = self._fit_inputs(sc[sl])[keep[sl]]
            inputs = inputs[np.isfinite(inputs)]
            pooled.append(inputs)
            if inputs.size >= self.min_points:
                self.per_kpi[kpi] = self._fit_one(inputs)
        values = np.concatenate(pooled) if pooled else np.empty(0)
        if values.size < 2:
            raise CalibrationError("calibration needs at least 2 observed, finite scores to fit on")
        self.pooled = self._fit_one(values)
        return self

    @property
    def fitted(self) -> bool:
        return self.pooled is not None

    def state_for(self, kpi_id: Any) -> dict[str, Any]:
        if self.pooled is None:
            raise CalibrationError(f"{type(self).__name__} is not fitted: call fit() first")
        return self.per_kpi.get(str(kpi_id), self.pooled)

    def transform(self, scores, kpi_ids) -> np.ndarray:
        """Calibrated scores (surprise), one per row, in the rows' order."""
        sc = np.asarray(scores, dtype=np.float64)
        ids = np.asarray(kpi_ids).astype(str)
        if ids.shape != sc.shape:
            raise CalibrationError(f"kpi_ids shape {ids.shape} != scores shape {sc.shape}")
        out = np.empty_like(sc)
        for kpi, sl in id_runs(ids):  # one vectorised pass per KPI
            out[sl] = self._apply_one(sc[sl], self.state_for(kpi))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "min_points": int(self.min_points),
                **{p: getattr(self, p) for p in self.params},
                "pooled": to_jsonable(self.pooled), "per_kpi": to_jsonable(self.per_kpi)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Calibration":
        if not isinstance(d, dict):
            raise CalibrationError(f"a saved calibration must be an object, got {type(d).__name__}")
        d = dict(d)
        method = d.pop("method", None)
        if method not in METHODS:
            raise CalibrationError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
        cls = METHODS[method]
        unknown = sorted(set(d) - {"min_points", "pooled", "per_kpi", *cls.params})
        if unknown:
            raise CalibrationError(f"unknown key(s) for calibration method {method!r}: {unknown}")
        out = cls(**d)
        # A saved state is applied as it is: check it now, not when a NaN knot turns every score NaN.
        if out.pooled is not None:
            out._check_state(mapping(out.pooled, "pooled"), "pooled")
        for kpi, state in mapping(out.per_kpi, "per_kpi").items():
            out._check_state(mapping(state, f"per_kpi.{kpi}"), f"per_kpi.{kpi}")
        return out

    def _check_state(self, state: dict[str, Any], field: str) -> None:
        """Raise :class:`models.checks.StateError` unless ``state`` is one this method can apply."""


# --------------------------------------------------------------------------------------------
@dataclass
class NoCalibration(Calibration):
    """The raw score as it is (fits nothing): the comparison row."""

    method: ClassVar[str] = "none"

    def fit(self, scores, kpi_ids, missing=None) -> "NoCalibration":
        self.pooled, self.per_kpi = {}, {}
        return self

    def transform(self, scores, kpi_ids) -> np.ndarray:
        return np.asarray(scores, dtype=np.float64).copy()


# --------------------------------------------------------------------------------------------
@dataclass
class LikelihoodCalibration(Calibration):
    """NAB's anomaly likelihood as surprise; see the module docstring."""

    short_window: int = 10       # raw scores averaged into a_t (NAB: averagingWindow = 10)
    long_window: int = 8640      # history of a_t the Gaussian is estimated on (NAB: historicWindowSize)
    min_std_ratio: float = 0.1   # the std never falls below this share of the KPI's fitted std
    red: float = 5.0             # NAB's red zone: likelihood >= 0.99999, i.e. surprise >= 5
    yellow: float = 3.0          # NAB's yellow zone: likelihood >= 0.999
    suppress_window: int = 1     # a red point within this many points after a red point is capped at yellow

    method: ClassVar[str] = "likelihood"
    params: ClassVar[tuple[str, ...]] = ("short_window", "long_window", "min_std_ratio", "red", "yellow",
                                         "suppress_window")

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("short_window", "long_window"):
            if int(getattr(self, key)) < 1:
                raise CalibrationError(f"likelihood {key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= float(self.min_std_ratio) <= 1:
            raise CalibrationError(f"likelihood min_std_ratio must be in [0, 1], got {self.min_std_ratio}")
        if not 0 <= float(self.yellow) <= float(self.red):
            raise CalibrationError(f"likelihood needs 0 <= yellow <= red, got yellow={self.yellow}, red={self.red}")
        if int(self.suppress_window) < 0:
            raise CalibrationError(f"likelihood suppress_window must be >= 0, got {self.suppress_window}")

    def _check_state(self, state: dict[str, Any], field: str) -> None:
        number(state.get("mean"), f"{field}.mean")
        number(state.get("std"), f"{field}.std", minimum=0.0)
        integer(state.get("n"), f"{field}.n", minimum=1)  # the fitted Gaussian's weight: 0 divides by zero

    def _short_means(self, scores: np.ndarray) -> np.ndarray:
        return pd.Series(scores).rolling(int(self.short_window), min_periods=1).mean().to_numpy()

    def _fit_inputs(self, scores: np.ndarray) -> np.ndarray:
        return self._short_means(scores)

    def _fit_one(self, means: np.ndarray) -> dict[str, Any]:
        return {"mean": float(np.mean(means)), "std": float(np.std(means)), "n": int(means.size)}

    def _apply_one(self, scores: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        a = self._short_means(scores)
        n_long = int(self.long_window)
        rolled = pd.Series(a).rolling(n_long, min_periods=1)
        # Statistics of the points before t (shift): a spike must not raise its own reference.
        w_mean = np.nan_to_num(rolled.mean().shift(1).to_numpy(), nan=0.0)
        w_var = np.nan_to_num(rolled.var(ddof=0).shift(1).to_numpy(), nan=0.0)
        seen = np.minimum(np.arange(a.size), n_long).astype(np.float64)
        # The fitted Gaussian, worth the points it was fitted on, fills what of the long window the
        # frame cannot: a short scoring context leans on it, a long stream outweighs it.
        prior = np.minimum(float(state["n"]), n_long - seen)
        mu0, var0 = float(state["mean"]), float(state["std"]) ** 2
        total = prior + seen
        mean = (prior * mu0 + seen * w_mean) / total
        var = (prior * (var0 + (mu0 - mean) ** 2) + seen * (w_var + (w_mean - mean) ** 2)) / total
        floor = max(float(self.min_std_ratio) * float(state["std"]), 1e-12)
        z = (a - mean) / np.maximum(np.sqrt(np.maximum(var, 0.0)), floor)
        out = surprise(gaussian_log_tail(z))
        if self.suppress_window > 0:
            red = out >= self.red
            recent = pd.Series(red.astype(np.int8)).rolling(int(self.suppress_window), min_periods=1).max()
            recent = recent.shift(1).fillna(0).to_numpy() > 0
            # NAB's filter: one event raises one red alarm, then yellow while it stays red.
            out = np.where(red & recent, np.minimum(out, self.yellow), out)
        return out


# --------------------------------------------------------------------------------------------
@dataclass
class EcdfCalibration(Calibration):
    """Empirical tail probability of the KPI's calibration scores, exponential beyond ``tail_level``."""

    knots: int = 512             # quantile knots stored per KPI (the serialised state's size)
    tail_level: float = 0.99     # above this quantile, an exponential tail fitted to the excesses

    method: ClassVar[str] = "ecdf"
    params: ClassVar[tuple[str, ...]] = ("knots", "tail_level")

    def __post_init__(self) -> None:
        super().__post_init__()
        if int(self.knots) < 2:
            raise CalibrationError(f"ecdf knots must be >= 2, got {self.knots}")
        if not 0.5 <= float(self.tail_level) < 1:
            raise CalibrationError(f"ecdf tail_level must be in [0.5, 1), got {self.tail_level}")

    def _fit_one(self, scores: np.ndarray) -> dict[str, Any]:
        levels = np.linspace(0.0, float(self.tail_level), int(self.knots))
        values = np.quantile(scores, levels)
        top = values[-1]
        excess = scores[scores > top] - top
        # Mean excess = the exponential tail's scale; a degenerate tail gets the knots' spread.
        scale = float(excess.mean()) if excess.size else 0.0
        if not scale > 0:
            spread = float(values[-1] - values[0])
            scale = spread / max(scores.size, 1) if spread > 0 else 1e-12
        return {"levels": levels.tolist(), "values": values.tolist(), "tail_scale": scale, "n": int(scores.size)}

    def _check_state(self, state: dict[str, Any], field: str) -> None:
        # np.interp needs increasing knots, and the tail's probability 1 - levels[-1] must be > 0.
        knots = {}
        for key in ("levels", "values"):
            v = state.get(key)
            if not isinstance(v, list) or len(v) < 2:
                raise StateError(f"{field}.{key}", f"must be a list of at least 2 numbers, got {v!r:.80}")
            knots[key] = np.array([number(x, f"{field}.{key}[{i}]") for i, x in enumerate(v)])
            if (np.diff(knots[key]) < 0).any():
                raise StateError(f"{field}.{key}", "must not decrease")
        if len(knots["levels"]) != len(knots["values"]):
            raise StateError(f"{field}.values", f"has {len(knots['values'])} knots, levels {len(knots['levels'])}")
        if knots["levels"][0] < 0 or not knots["levels"][-1] < 1:
            raise StateError(f"{field}.levels", "must lie in [0, 1)")
        number(state.get("tail_scale"), f"{field}.tail_scale", positive=True)
        integer(state.get("n"), f"{field}.n", minimum=0)

    def _apply_one(self, scores: np.ndarray, state: dict[str, Any]) -> np.ndarray:
        levels, values = np.asarray(state["levels"]), np.asarray(state["values"])
        # P(S >= s) between the knots (ties: np.interp takes the highest level of equal knots).
        below = 1.0 - np.interp(scores, values, levels, left=0.0, right=levels[-1])
        tail_p = 1.0 - levels[-1]
        beyond = scores > values[-1]
        log_p = np.where(beyond, math.log(tail_p) - (scores - values[-1]) / float(state["tail_scale"]),
                         np.log(np.maximum(below, tail_p)))
        return surprise(log_p)


METHODS: dict[str, type[Calibration]] = {"none": NoCalibration, "likelihood": LikelihoodCalibration,
                                         "ecdf": EcdfCalibration}


def make_calibration(cfg: dict[str, Any] | None) -> Calibration:
    """An unfitted calibration from params (``{"method": "likelihood", "short_window": 10, ...}``).

    Keys of other methods are accepted (one config can hold every method's settings); unknown keys or
    methods raise :class:`CalibrationError` naming them."""
    cfg = dict(cfg or {"method": "none"})
    method = cfg.pop("method", None)
    if method not in METHODS:
        raise CalibrationError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
    known = {"min_points"} | {p for cls in METHODS.values() for p in cls.params}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise CalibrationError(f"unknown calibration key(s) {unknown}; known: {sorted(known)}")
    cls = METHODS[method]
    return cls(**{k: v for k, v in cfg.items() if k in {"min_points", *cls.params}})
