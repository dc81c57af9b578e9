"""Alarm thresholds as separate, serialisable objects (post-rules in the style of Merlion).

A threshold turns anomaly scores into alarms, ``alarm = score >= threshold`` (the convention of
``pipeline.eval.metrics``). It is chosen in params, never inside model code, fitted on the validation
split only -- it never sees test labels -- and saved beside the model with :meth:`to_dict`.

Methods
-------
* ``quantile``: a quantile of the validation scores (``numpy.quantile``, linear interpolation).
* ``best_f1``: the threshold with the best F1 on the validation split (point F1 by default, or
  another metric of ``pipeline.eval.metrics.BEST_F1_METRICS``); needs labels with positives.
* ``pot``: peaks over threshold (Siffer et al., "Anomaly detection in streams with extreme value
  theory", KDD 2017, SPOT initialisation): GPD fitted to the excesses over a high empirical
  quantile, threshold at the risk level ``q``.
* ``fixed``: a constant ``value``, fitted on nothing. It makes sense on calibrated scores
  (:mod:`models.calibration`), where one value means the same tail probability on every KPI: 5.0
  is NAB's red zone, a 1-in-100,000 score. It uses no label and no data at all.
* ``budget``: an alarm budget, ``budget`` alarm points per KPI per day (``evaluate.alarm_budget``):
  the validation scores' quantile at ``1 - budget / points per day`` of the KPI (from its sampling
  interval). No label; the label-free path of the evaluate stage (:mod:`pipeline.eval.protocol`).

Scopes
------
* ``global``: one value for all KPIs (``budget``: the value that spends the budget on average over
  the KPIs' days, each KPI weighted by its days of validation data).
* ``per_kpi``: one value per KPI fitted on that KPI's points; the global value (fitted on all
  points) is the fallback for KPIs seen with fewer than ``min_points`` observed points, KPIs where
  the method cannot fit (best_f1 on a KPI without positives), and KPIs not seen in fitting.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from models.jsonable import to_jsonable
from pipeline.eval import metrics

__all__ = ["Threshold", "FixedThreshold", "QuantileThreshold", "BestF1Threshold", "PotThreshold",
           "BudgetThreshold", "ThresholdError", "make_threshold", "pot_threshold", "alarms_per_kpi_day",
           "SCOPES", "METHODS", "NEEDS_LABELS"]

SCOPES = ("global", "per_kpi")


class ThresholdError(ValueError):
    """A threshold cannot be fitted or configured as asked; the message says what to change."""


@dataclass
class Threshold:
    """Base class: holds the scope and the fitted values; subclasses compute one value.

    Subclasses implement :meth:`_fit_one` (one value from one group's points) and may override
    :meth:`_can_fit` (whether a per-KPI group supports a fit of its own).
    """

    scope: str = "global"
    min_points: int = 100
    global_value: float | None = None
    per_kpi: dict[str, float] = field(default_factory=dict)
    fit_info: dict[str, Any] = field(default_factory=dict)

    method: ClassVar[str] = ""
    params: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ThresholdError(f"unknown threshold scope {self.scope!r}; choose one of {SCOPES}")
        if int(self.min_points) < 1:
            raise ThresholdError(f"min_points must be >= 1, got {self.min_points}")

    # -- to implement ---------------------------------------------------------------------------

    def _fit_one(self, scores: np.ndarray, labels: np.ndarray | None, observed: np.ndarray,
                 series_ids: np.ndarray | None) -> tuple[float, dict[str, Any]]:
        raise NotImplementedError

    def _can_fit(self, labels: np.ndarray | None, observed: np.ndarray) -> bool:
        return True

    # -- public API -----------------------------------------------------------------------------

    def fit(self, scores, labels=None, missing=None, kpi_ids=None, points_per_day=None) -> "Threshold":
        """Fit on validation scores. ``missing`` points and NaN scores are ignored; ``labels``
        only matter for ``best_f1``; ``kpi_ids`` is required for the ``per_kpi`` scope;
        ``points_per_day`` (a number for every KPI, or one per KPI id) only matters for ``budget``."""
        self._points_per_day = points_per_day
        sc = np.asarray(scores, dtype=float)
        if sc.ndim != 1:
            raise ThresholdError(f"scores must be 1-D, got shape {sc.shape}")
        lab = None if labels is None else np.asarray(labels).astype(bool)
        if lab is not None and lab.shape != sc.shape:
            raise ThresholdError(f"labels shape {lab.shape} != scores shape {sc.shape}")
        obs = np.isfinite(sc)
        if missing is not None:
            miss = np.asarray(missing, dtype=bool)
            if miss.shape != sc.shape:
                raise ThresholdError(f"missing shape {miss.shape} != scores shape {sc.shape}")
            obs &= ~miss
        if not obs.any():
            raise ThresholdError("no observed, finite score to fit the threshold on")
        ids = None
        if kpi_ids is not None:
            ids = np.asarray(kpi_ids).astype(str)
            if ids.shape != sc.shape:
                raise ThresholdError(f"kpi_ids shape {ids.shape} != scores shape {sc.shape}")
        elif self.scope == "per_kpi":
            raise ThresholdError("scope 'per_kpi' needs kpi_ids to fit")

        value, info = self._fit_one(sc, lab, obs, ids)
        self.global_value = float(value)
        self.fit_info = {"global": info}
        self.per_kpi = {}
        if self.scope == "per_kpi":
            uniq, inv = np.unique(ids, return_inverse=True)
            order = np.argsort(inv, kind="stable")
            bounds = np.r_[0, np.cumsum(np.bincount(inv, minlength=uniq.size))]
            for j, kpi in enumerate(uniq):  # one fit per KPI
                rows = order[bounds[j]:bounds[j + 1]]  # stable sort: time order kept
                g_obs, g_lab = obs[rows], None if lab is None else lab[rows]
                if g_obs.sum() < self.min_points or not self._can_fit(g_lab, g_obs):
                    continue  # the global value applies
                v, inf = self._fit_one(sc[rows], g_lab, g_obs, ids[rows])
                self.per_kpi[str(kpi)] = float(v)
                self.fit_info[str(kpi)] = inf
        return self

    @property
    def fitted(self) -> bool:
        return self.global_value is not None

    def value_for(self, kpi_id: Any = None) -> float:
        """The threshold for one KPI (the global value when the KPI has none of its own)."""
        if self.global_value is None:
            raise ThresholdError(f"{type(self).__name__} is not fitted: call fit() first")
        if kpi_id is None:
            return self.global_value
        return self.per_kpi.get(str(kpi_id), self.global_value)

    def apply(self, scores, kpi_ids=None) -> np.ndarray:
        """Boolean alarms ``score >= threshold(kpi)``; NaN scores never alarm."""
        sc = np.asarray(scores, dtype=float)
        if kpi_ids is None or not self.per_kpi:
            return sc >= self.value_for(None)
        ids = np.asarray(kpi_ids).astype(str)
        if ids.shape != sc.shape:
            raise ThresholdError(f"kpi_ids shape {ids.shape} != scores shape {sc.shape}")
        uniq, inv = np.unique(ids, return_inverse=True)
        values = np.array([self.value_for(k) for k in uniq])  # one lookup per KPI
        return sc >= values[inv]

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description, fitted values included."""
        return {
            "method": self.method,
            "scope": self.scope,
            "min_points": int(self.min_points),
            **{p: getattr(self, p) for p in self.params},
            "global_value": self.global_value,
            "per_kpi": dict(self.per_kpi),
            "fit_info": to_jsonable(self.fit_info, nonfinite="null"),
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Threshold":
        """Rebuild a (possibly fitted) threshold saved with :meth:`to_dict`."""
        d = dict(d)
        method = d.pop("method", None)
        if method not in METHODS:
            raise ThresholdError(f"unknown threshold method {method!r}; choose one of "
                                 f"{', '.join(METHODS)}")
        cls = METHODS[method]
        allowed = {"scope", "min_points", "global_value", "per_kpi", "fit_info", *cls.params}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ThresholdError(f"unknown key(s) for threshold method {method!r}: {unknown}")
        obj = cls(**{k: v for k, v in d.items() if k not in ("global_value", "per_kpi")})
        gv = d.get("global_value")
        obj.global_value = None if gv is None else float(gv)
        obj.per_kpi = {str(k): float(v) for k, v in (d.get("per_kpi") or {}).items()}
        return obj


# --------------------------------------------------------------------------------------------
# quantile
# --------------------------------------------------------------------------------------------


@dataclass
class QuantileThreshold(Threshold):
    """``numpy.quantile(validation_scores, quantile)`` (linear interpolation)."""

    quantile: float = 0.99
    method: ClassVar[str] = "quantile"
    params: ClassVar[tuple[str, ...]] = ("quantile",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < float(self.quantile) < 1.0:
            raise ThresholdError(f"quantile must be in (0, 1), got {self.quantile}")

    def _fit_one(self, scores, labels, observed, series_ids):
        return float(np.quantile(scores[observed], self.quantile)), {"n": int(observed.sum())}


# --------------------------------------------------------------------------------------------
# best F1 on the validation split
# --------------------------------------------------------------------------------------------


@dataclass
class BestF1Threshold(Threshold):
    """The threshold maximising ``metric`` on the validation split
    (:func:`pipeline.eval.metrics.best_f1_threshold`, exact over all distinct scores)."""

    metric: str = "point_f1"
    delay: int = 7
    method: ClassVar[str] = "best_f1"
    params: ClassVar[tuple[str, ...]] = ("metric", "delay")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.metric not in metrics.BEST_F1_METRICS:
            raise ThresholdError(f"unknown metric {self.metric!r} for best_f1; choose one of "
                                 f"{', '.join(metrics.BEST_F1_METRICS)}")

    def _can_fit(self, labels, observed):
        return labels is not None and bool(np.any(labels & observed))

    def _fit_one(self, scores, labels, observed, series_ids):
        if not self._can_fit(labels, observed):
            raise ThresholdError(
                "threshold method 'best_f1' needs validation labels with at least one anomaly; "
                "none were given. Choose method 'quantile' or 'pot', which need no labels.")
        thr, f1 = metrics.best_f1_threshold(labels, scores, missing=~observed, metric=self.metric,
                                            series_ids=series_ids, delay=self.delay)
        return thr, {"f1": f1, "metric": self.metric}


# --------------------------------------------------------------------------------------------
# POT / SPOT
# --------------------------------------------------------------------------------------------


def pot_threshold(scores, level: float = 0.98, q: float = 1e-3, min_peaks: int = 10
                  ) -> tuple[float, dict[str, Any]]:
    """Peaks-over-threshold threshold (Siffer et al., KDD 2017, SPOT initialisation).

    ``t`` = empirical ``level`` quantile; the excesses ``Y = X[X > t] - t`` are fitted with a
    generalised Pareto distribution (``scipy.stats.genpareto.fit`` with ``floc=0``, maximum
    likelihood) giving shape ``gamma`` and scale ``sigma``; then, with ``n`` points and ``N_t``
    peaks, the threshold exceeded with probability ``q`` is

        z_q = t + sigma / gamma * ((q * n / N_t) ** -gamma - 1)      (gamma != 0)
        z_q = t - sigma * log(q * n / N_t)                            (gamma == 0)

    Fallbacks, reported in the returned info: with fewer than ``min_peaks`` peaks, peaks all
    equal, or a non-finite fit, the empirical ``1 - q`` quantile (no extrapolation beyond the
    data); when all scores are equal, the value just above them, so that a constant score never
    alarms.
    """
    x = np.asarray(scores, dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        raise ThresholdError("pot: no finite score to fit")
    if not 0.0 < q < 1.0 - level:
        raise ThresholdError(f"pot: need 0 < q < 1 - level, got q={q}, level={level}")
    n = x.size
    if x.max() == x.min():
        return float(np.nextafter(x.max(), np.inf)), {"fallback": "constant scores"}
    t = float(np.quantile(x, level))
    peaks = x[x > t] - t
    info: dict[str, Any] = {"t": t, "n": n, "n_peaks": int(peaks.size)}

    def fallback(reason: str):
        return float(np.quantile(x, 1.0 - q)), {**info, "fallback": reason}

    if peaks.size < min_peaks:
        return fallback(f"{peaks.size} peaks < min_peaks={min_peaks}")
    if peaks.max() == peaks.min():
        return fallback("all peaks equal")
    from scipy import (
        stats,  # here, not at the top: params validation builds thresholds (make_threshold)
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gamma, _, sigma = stats.genpareto.fit(peaks, floc=0)
    r = q * n / peaks.size
    if abs(gamma) < 1e-9:
        z = t - sigma * math.log(r)
    else:
        z = t + sigma / gamma * (r ** (-gamma) - 1.0)
    info.update(gamma=float(gamma), sigma=float(sigma))
    if not (math.isfinite(z) and sigma > 0):
        return fallback("non-finite GPD fit")
    return float(z), info


@dataclass
class PotThreshold(Threshold):
    """Peaks over threshold; see :func:`pot_threshold`."""

    level: float = 0.98
    q: float = 1e-3
    min_peaks: int = 10
    method: ClassVar[str] = "pot"
    params: ClassVar[tuple[str, ...]] = ("level", "q", "min_peaks")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < float(self.level) < 1.0:
            raise ThresholdError(f"pot_level must be in (0, 1), got {self.level}")
        if not 0.0 < float(self.q) < 1.0 - float(self.level):
            raise ThresholdError(f"pot_q must be in (0, 1 - pot_level), got {self.q}")

    def _fit_one(self, scores, labels, observed, series_ids):
        return pot_threshold(scores[observed], self.level, self.q, self.min_peaks)


@dataclass
class FixedThreshold(Threshold):
    """A constant on the (calibrated) score scale; the same for every KPI."""

    value: float = 5.0
    method: ClassVar[str] = "fixed"
    params: ClassVar[tuple[str, ...]] = ("value",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not math.isfinite(float(self.value)):
            raise ThresholdError(f"a fixed threshold value must be finite, got {self.value}")

    def _fit_one(self, scores, labels, observed, series_ids):
        return float(self.value), {"fixed": True}


# --------------------------------------------------------------------------------------------
# alarm budget
# --------------------------------------------------------------------------------------------


def _kpi_days(observed: np.ndarray, series_ids: np.ndarray | None, points_per_day) -> np.ndarray:
    """Each observed point's share of a day (1 / its KPI's points per day): their sum is the KPI-days."""
    if points_per_day is None:
        raise ThresholdError("threshold method 'budget' needs each KPI's points per day (its sampling "
                             "interval) to fit; none were given")
    if not isinstance(points_per_day, dict):
        ppd = np.full(observed.shape, float(points_per_day))
    else:
        if series_ids is None:
            raise ThresholdError("threshold method 'budget' with points per day per KPI needs kpi_ids to fit")
        ids = np.asarray(series_ids).astype(str)
        uniq, inv = np.unique(ids, return_inverse=True)
        absent = [str(k) for k in uniq if str(k) not in points_per_day]
        if absent:
            raise ThresholdError(f"threshold method 'budget': no points per day for KPI(s) {absent[:5]}")
        ppd = np.array([float(points_per_day[str(k)]) for k in uniq])[inv]
    if not (np.isfinite(ppd) & (ppd > 0)).all():
        raise ThresholdError("threshold method 'budget': points per day must be finite and > 0")
    return np.where(observed, 1.0 / ppd, 0.0)


def alarms_per_kpi_day(alarms, missing=None, kpi_ids=None, points_per_day=None) -> float | None:
    """The alarm rate as a budget counts it: alarms on observed points per KPI per day of observed
    points (``points_per_day`` as :meth:`Threshold.fit` takes it). None without an observed point."""
    al = np.asarray(alarms, dtype=bool)
    observed = np.ones(al.shape, bool) if missing is None else ~np.asarray(missing, dtype=bool)
    days = _kpi_days(observed, kpi_ids, points_per_day).sum()
    return float((al & observed).sum() / days) if days > 0 else None


@dataclass
class BudgetThreshold(Threshold):
    """``budget`` alarm points per KPI per day: the validation scores' quantile at ``1 - rate``,
    rate = ``budget`` x the points' KPI-days / their number (``budget / points per day`` for one KPI,
    its average over the KPIs for the global scope), ``numpy.quantile`` with linear interpolation.

    A rate of 1 or more alarms on every point. When scores tied at that quantile would alarm on more
    points than the budget allows (a detector that scores most points alike: a quiet KPI all at 0),
    the value moves just above the tie, so the tie never alarms."""

    budget: float = 2.0
    method: ClassVar[str] = "budget"
    params: ClassVar[tuple[str, ...]] = ("budget",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(float(self.budget)) and float(self.budget) > 0):
            raise ThresholdError(f"an alarm budget must be finite and > 0, got {self.budget}")

    def _fit_one(self, scores, labels, observed, series_ids):
        x = scores[observed]
        days = float(_kpi_days(observed, series_ids, getattr(self, "_points_per_day", None)).sum())
        target = float(self.budget) * days  # alarms the budget allows on these points
        rate = min(target / x.size, 1.0)
        value = float(np.quantile(x, 1.0 - rate))
        tied = False
        if (x >= value).sum() > math.ceil(target) and rate < 1.0:
            value, tied = float(np.nextafter(value, np.inf)), True
        return value, {"n": int(x.size), "days": days, "quantile": 1.0 - rate, "tie_lifted": tied}


# Methods that fit on labels: the label-free path replaces them by the alarm budget.
NEEDS_LABELS = ("best_f1",)

METHODS: dict[str, type[Threshold]] = {
    "fixed": FixedThreshold,
    "quantile": QuantileThreshold,
    "best_f1": BestF1Threshold,
    "pot": PotThreshold,
    "budget": BudgetThreshold,
}

# params.yaml key -> constructor argument
_CFG_KEYS = {
    "method": None,
    "scope": "scope",
    "min_points": "min_points",
    "quantile": "quantile",
    "metric": "metric",
    "delay": "delay",
    "pot_level": "level",
    "pot_q": "q",
    "pot_min_peaks": "min_peaks",
    "value": "value",
    "budget": "budget",
}


def make_threshold(cfg: dict[str, Any]) -> Threshold:
    """Build an unfitted threshold from a config such as
    ``{"method": "pot", "scope": "per_kpi", "quantile": 0.99, "pot_level": 0.98,
    "pot_q": 1e-3, "metric": "point_f1"}``. Keys that the chosen method does not use are
    accepted (one config can hold every method's settings); unknown keys or methods raise a
    ValueError (:class:`ThresholdError`) naming them."""
    unknown = sorted(set(cfg) - set(_CFG_KEYS))
    if unknown:
        raise ThresholdError(f"unknown threshold config key(s) {unknown}; "
                             f"known: {sorted(_CFG_KEYS)}")
    method = cfg.get("method")
    if method not in METHODS:
        raise ThresholdError(f"unknown threshold method {method!r}; choose one of "
                             f"{', '.join(METHODS)}")
    cls = METHODS[method]
    own = {"scope", "min_points", *cls.params}
    kwargs = {_CFG_KEYS[k]: v for k, v in cfg.items() if k != "method" and _CFG_KEYS[k] in own}
    return cls(**kwargs)
