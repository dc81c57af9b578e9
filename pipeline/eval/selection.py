"""The champion rule, once: what every choice of a detector or a model version is measured by.

The evaluate stage ranks detectors with it, the register stage's gate compares registered versions
with it, and ``kpiguard bench`` reports it, so the three cannot disagree.

- The figure is ``evaluate.champion_metric`` on the **validation** split, never on test.
- It is the mean over ``evaluate.champion_folds`` rolling-origin folds (:func:`fold_metrics`), not one
  split that may be lucky: each KPI's validation rows are cut into K + 1 consecutive blocks, and fold k
  (k = 1..K) is block k, thresholded by the same rule fitted on the blocks before it. The first block
  only fits: a threshold fitted on the fold it is scored on, or on train (which supervised detectors
  have learnt), would flatter the figure. Folds are scored only where they hold an observed anomaly and
  the rule could be fitted before them, which depends on the labels alone, so every detector is scored
  on the same folds.
- Where no fold can be scored (or ``champion_folds: 1``), the single split decides: the threshold fitted
  on all of validation and scored there.
- :func:`pick_champion`: the best fold mean; a tie goes to the better single split; the ``random``
  reference row never wins. :func:`champion_transfer` says how the choice fared on test.
- :func:`choose_champion` decides what is served. With fewer labelled validation events
  (:func:`label_events`) than ``evaluate.min_events``, or none, no metric decides (the label-free path):
  thresholds come from the alarm budget (``evaluate.alarm_budget``, :meth:`EvaluateParams.threshold_rule`)
  and the champion is the documented default detector, ``evaluate.default_detector``. Otherwise the best
  on validation replaces the default only when :func:`beats` says it is better beyond the noise; the
  register stage's gate decides between model versions by the same :func:`beats`.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from models.frame import KPI_ID, LABEL, MISSING, TIMESTAMP, has_labels, id_runs
from pipeline.eval import bootstrap as B
from pipeline.eval import metrics as M
from pipeline.eval.thresholds import Threshold, ThresholdError, make_threshold
from pipeline.params import EvaluateParams

RANDOM = "random"
DAY = pd.Timedelta("1D")


def kpi_points_per_day(frame: pd.DataFrame) -> dict[str, float]:
    """Each KPI's points per day, from its sampling interval (``kpi_id``, ``timestamp``; per KPI in time
    order): what the alarm budget is counted in. A KPI with fewer than two timestamps has none."""
    from pipeline.data.prep import infer_interval

    out = {}
    for kpi, sl in id_runs(frame[KPI_ID].to_numpy()):
        try:
            out[kpi] = float(DAY / infer_interval(frame[TIMESTAMP].iloc[sl]))
        except ValueError:
            continue
    return out


def label_events(frame: pd.DataFrame, metric: str = "aiops_f1") -> int:
    """The labelled events of ``frame``: its anomalous segments as ``metric`` defines them (the published
    AIOps rule, where a gap splits a segment, for a metric without segments of its own); 0 without labels."""
    if frame.empty or not has_labels(frame):
        return 0
    labels = frame[LABEL].fillna(0).to_numpy() == 1
    outcomes = B.segment_outcomes(labels, np.zeros(labels.size, bool), frame[MISSING].to_numpy(dtype=bool),
                                  frame[KPI_ID].to_numpy(), metric=metric if metric in B.BOOTSTRAP_METRICS
                                  else "aiops_f1")
    return int(outcomes.kpi.size)


def label_free_reason(events: int, ev: EvaluateParams) -> str | None:
    """Why no metric decides on this validation data (the label-free path), in words; None when one does."""
    if events >= ev.min_events:
        return None
    if events == 0:
        return "the validation split has no labelled event"
    return f"the validation split has {events} labelled events, fewer than evaluate.min_events ({ev.min_events})"


def fold_blocks(kpi_ids: np.ndarray, blocks: int) -> np.ndarray:
    """The block (0 .. ``blocks`` - 1) of each row: every KPI's rows (contiguous, in time order) cut into
    ``blocks`` consecutive parts whose lengths differ by at most one."""
    out = np.empty(len(kpi_ids), dtype=np.int64)
    for _, sl in id_runs(kpi_ids):
        n = sl.stop - sl.start
        out[sl] = np.arange(n) * blocks // n
    return out


def fold_metrics(frame: pd.DataFrame, scores: np.ndarray, metric: str, threshold_rule: dict, folds: int,
                 delay: int, nab_probation: int | None = None,
                 points_per_day: dict[str, float] | None = None) -> list[float | None]:
    """``metric`` on each of ``folds`` rolling-origin folds of the validation rows ``frame`` (their
    calibrated ``scores``): fold k is block k of :func:`fold_blocks` (``folds + 1`` blocks), with
    ``threshold_rule`` fitted on blocks 0 .. k-1. None for a fold without an observed anomaly, or whose
    threshold cannot be fitted on the blocks before it (``best_f1`` with no anomaly there).
    ``points_per_day``: the alarm budget's (:func:`kpi_points_per_day` of ``frame`` when None)."""
    spec = M.METRICS[metric]
    labels, ids = frame[LABEL].to_numpy(), frame[KPI_ID].to_numpy()
    missing = frame[MISSING].to_numpy(dtype=bool)
    return [None if case is None else
            _figure(spec, labels[case[0]], scores[case[0]], missing[case[0]], ids[case[0]], case[1], delay, nab_probation)
            for case in _fold_cases(frame, scores, spec, threshold_rule, folds, points_per_day)]


def _fold_cases(frame: pd.DataFrame, scores: np.ndarray, spec: M.MetricSpec, threshold_rule: dict, folds: int,
                points_per_day: dict[str, float] | None) -> list[tuple[np.ndarray, Threshold | None] | None]:
    """Per fold of :func:`fold_metrics`: (its rows, the threshold fitted before it), or None when it is not
    scored."""
    labels, ids = frame[LABEL].to_numpy(), frame[KPI_ID].to_numpy()
    missing = frame[MISSING].to_numpy(dtype=bool)
    block = fold_blocks(ids, folds + 1)
    anomalous = (labels == 1) & ~missing
    if points_per_day is None and threshold_rule.get("method") == "budget":
        points_per_day = kpi_points_per_day(frame)
    out: list[tuple[np.ndarray, Threshold | None] | None] = []
    for k in range(1, folds + 1):
        rows, before = block == k, block < k
        if not anomalous[rows].any():
            out.append(None)
            continue
        threshold = None
        if spec.needs == "alarms":
            try:
                threshold = _fit(threshold_rule, scores[before], labels[before], missing[before], ids[before],
                                 points_per_day)
            except ThresholdError:
                out.append(None)
                continue
        out.append((rows, threshold))
    return out


def segment_f1_draws(labels: np.ndarray, alarms: np.ndarray, missing: np.ndarray, ids: np.ndarray, metric: str,
                     ev: EvaluateParams) -> np.ndarray:
    """``(evaluate.bootstrap_draws,)`` resampled ``metric`` (one of
    :data:`pipeline.eval.bootstrap.BOOTSTRAP_METRICS`) of rows' alarms: their labelled segments resampled
    with ``evaluate.bootstrap_seed``, so the same labels give every detector the same draws.

    The segments are resampled over all KPIs together, not within each KPI: a fold holds a few events of
    each KPI, often one, and a KPI of one segment always redraws it, which would report no noise where
    there is the most. Which KPIs the incidents fall on is part of the noise of a small validation split."""
    outcomes = B.segment_outcomes(labels, alarms, missing, ids, metric=metric, delay=ev.delay)
    pooled = B.SegmentOutcomes(kpi=np.zeros_like(outcomes.kpi), tp=outcomes.tp, fn=outcomes.fn, fp=outcomes.fp)
    return B.bootstrap_f1(pooled, ev.bootstrap_draws, ev.bootstrap_seed)


def _fit(rule: dict, scores: np.ndarray, labels: np.ndarray, missing: np.ndarray, ids: np.ndarray,
         points_per_day: dict[str, float] | None = None) -> Threshold:
    return make_threshold(dict(rule)).fit(scores, labels=labels, missing=missing, kpi_ids=ids,
                                          points_per_day=points_per_day)


def _figure(spec: M.MetricSpec, labels: np.ndarray, scores: np.ndarray, missing: np.ndarray, ids: np.ndarray,
            threshold: Threshold | None, delay: int, probation: int | None) -> float | None:
    """One metric on rows: on their scores, or on their alarms under ``threshold``."""
    values = scores if spec.needs == "scores" else threshold.apply(scores, ids)
    return spec.compute(labels, values, missing, ids, delay=delay, vus_window=None, probation=probation)


def champion_summary(metric: str, single_split: float | None, fold_values: list[float | None],
                     draws: np.ndarray | None = None, level: float = 0.9, events: int | None = None) -> dict:
    """What the champion is picked by: the fold mean when a fold could be scored, else the single split;
    with ``draws`` (the figure's bootstrap resamples) its ``level`` interval, and the labelled validation
    ``events`` it rests on. The draws stay under ``_draws`` for :func:`beats` (:func:`strip_draws` before
    a report is written)."""
    scored = [v for v in fold_values if v is not None]
    mean = float(np.mean(scored)) if scored else None
    value = mean if scored else single_split
    bounds = B.interval(draws, level) if draws is not None and value is not None else None
    return {"name": metric, "split": "val", "value": value,
            "basis": "folds" if scored else "single_split", "single_split": single_split,
            "folds": len(fold_values), "fold_values": {str(i + 1): v for i, v in enumerate(fold_values)},
            "fold_mean": mean, "fold_min": min(scored) if scored else None,
            "fold_std": float(np.std(scored)) if scored else None,
            "events": events, "interval": list(bounds) if bounds else None,
            **({"_draws": draws} if bounds else {})}


def figure(value: float | None) -> str:
    """A champion figure as every report prints it (the leaderboard, the gate's description): one number
    to three decimals, the same wherever it is quoted."""
    return "–" if value is None else f"{value:.3f}"


def figure_basis(champion: dict) -> str:
    """What a champion figure is (:func:`champion_summary`), in words."""
    if champion.get("basis") == "folds":
        scored = sum(v is not None for v in (champion.get("fold_values") or {}).values())
        return f"mean of {scored} of {champion['folds']} folds" if scored < champion["folds"] else \
            f"mean of {champion['folds']} folds"
    return "one split"


def champion_metric(val: pd.DataFrame, scores: np.ndarray, ev: EvaluateParams, threshold: Threshold | None = None,
                    threshold_rule: dict | None = None, folds: int | None = None,
                    points_per_day: dict[str, float] | None = None) -> dict:
    """The champion figure of one detector or model version (:func:`champion_summary`'s dict) on the
    validation rows ``val`` (``label``, ``missing``, ``kpi_id``, ``timestamp``; per KPI in time order) and
    their calibrated ``scores``: the single split with the rule fitted on all of ``val`` (``threshold``,
    when the caller has fitted it already), and the mean over the rolling-origin folds.

    ``threshold_rule`` and ``folds`` override :meth:`EvaluateParams.threshold_rule` (the alarm budget on
    the label-free path) and ``evaluate.champion_folds``; ``points_per_day`` is the budget's
    (:func:`kpi_points_per_day` of ``val`` when None). Unlabelled validation rows have no figure (value
    None)."""
    metric = ev.champion_metric
    rule = dict(ev.threshold_rule(label_free_reason(label_events(val, metric), ev) is not None)
                if threshold_rule is None else threshold_rule)
    folds = ev.champion_folds if folds is None else folds
    if val.empty or not has_labels(val):
        return champion_summary(metric, None, [], events=0)
    if points_per_day is None and rule.get("method") == "budget":
        points_per_day = kpi_points_per_day(val)
    labels, ids = val[LABEL].to_numpy(), val[KPI_ID].to_numpy()
    missing = val[MISSING].to_numpy(dtype=bool)
    spec = M.METRICS[metric]
    if spec.needs == "alarms" and threshold is None:
        threshold = _fit(rule, scores, labels, missing, ids, points_per_day)
    single = _figure(spec, labels, scores, missing, ids, threshold, ev.delay, ev.nab_probation)
    cases = _fold_cases(val, scores, spec, rule, folds, points_per_day) if folds > 1 else []
    fold_values = [None if case is None else _figure(spec, labels[case[0]], scores[case[0]], missing[case[0]],
                                                     ids[case[0]], case[1], ev.delay, ev.nab_probation)
                   for case in cases]
    draws = None
    if metric in B.BOOTSTRAP_METRICS:
        # The fold mean's resamples: each scored fold's segments drawn with the same seed in every detector,
        # averaged per draw (the single split's, where no fold was scored).
        scored = [case for case in cases if case is not None]
        parts = ([segment_f1_draws(labels[r], t.apply(scores[r], ids[r]), missing[r], ids[r], metric, ev)
                  for r, t in scored] if scored else
                 [segment_f1_draws(labels, threshold.apply(scores, ids), missing, ids, metric, ev)])
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a draw undefined on every fold stays NaN
            draws = np.nanmean(np.vstack(parts), axis=0)
    return champion_summary(metric, single, fold_values, draws, ev.bootstrap_level, label_events(val, metric))


def pick_champion(results: dict, metric: str) -> str | None:
    """The best detector on the validation champion metric (``result["champion_metric"]``, see
    :func:`champion_summary`): by the fold mean, among the detectors scored on folds when any was, else
    by the single split; a tie goes to the better single split. The random row never wins. Whether it is
    served is :func:`choose_champion`'s call."""
    ok = {n: r["champion_metric"] for n, r in results.items()
          if n != RANDOM and r.get("status") == "ok" and r["champion_metric"]["value"] is not None}
    if any(c.get("basis") == "folds" for c in ok.values()):
        ok = {n: c for n, c in ok.items() if c.get("basis") == "folds"}
    return max(ok, key=lambda n: champion_rank(ok[n]) + (n,)) if ok else None


def beats(challenger: dict, incumbent: dict, margin: float, level: float) -> dict:
    """Is ``challenger``'s champion figure (:func:`champion_summary`) better than ``incumbent``'s beyond
    the noise, by more than ``margin`` (``mlflow.min_improvement``)? The one rule of the evaluate stage
    (a challenger against the default detector) and of the register stage's gate (a new version against
    the champion).

    With bootstrap draws on both (``_draws``: the same resampled validation events, a paired comparison)
    the ``level`` interval of their difference must lie above ``margin``; a metric without a segment
    decomposition has none, and the figures are compared plainly. ``better`` is None when either figure
    is undefined."""
    c, i = challenger.get("value"), incumbent.get("value")
    out = {"better": None, "difference": None, "difference_interval": None, "rule": "plain", "margin": margin}
    if c is None or i is None:
        return out
    out["difference"] = c - i
    cd, id_ = challenger.get("_draws"), incumbent.get("_draws")
    if cd is not None and id_ is not None and len(cd) == len(id_):
        bounds = B.interval(np.asarray(cd, dtype=float) - np.asarray(id_, dtype=float), level)
        if bounds is not None:
            out.update(rule="paired_bootstrap", difference_interval=list(bounds), better=bool(bounds[0] > margin))
            return out
    out["better"] = bool(c > i + margin)
    return out


def strip_draws(results: dict) -> dict:
    """``results`` (detector -> result) without the bootstrap draws of their champion figures: they serve
    :func:`beats` in the process that drew them, not a report. In place; returns ``results``."""
    for res in results.values():
        (res.get("champion_metric") or {}).pop("_draws", None)
    return results


def figure_with_interval(champion: dict) -> str:
    """A champion figure and its bootstrap interval, as the leaderboard and the gate quote it: ``0.610 [0.480,
    0.700]`` (the figure alone for a metric without one)."""
    bounds = champion.get("interval")
    return figure(champion.get("value")) + (f" [{figure(bounds[0])}, {figure(bounds[1])}]" if bounds else "")


def choose_champion(results: dict, ev: EvaluateParams, events: int, margin: float = 0.0) -> dict:
    """The detector to serve, and why, in one sentence (``reason``).

    On the label-free path (:func:`label_free_reason`: fewer than ``evaluate.min_events`` labelled
    validation ``events``) it is ``evaluate.default_detector``, whatever the figures say; None when the
    default was not scored. Otherwise the best on validation (:func:`pick_champion`) replaces the default
    only when it :func:`beats` it beyond the noise by more than ``margin`` (``mlflow.min_improvement``);
    a default without a figure leaves the choice to the best.
    """
    default, metric = ev.default_detector, ev.champion_metric
    best = pick_champion(results, metric)
    out = {"champion": None, "best": best, "default": default, "events": events, "label_free": False,
           "comparison": None}
    scored = results.get(default) or {}
    default_ok = scored.get("status") == "ok"
    why_free = label_free_reason(events, ev)
    out["label_free_reason"] = why_free
    if why_free is not None:
        out["label_free"] = True
        if default_ok:
            out["champion"] = default
            out["reason"] = (f"No metric picks the champion: {why_free}; it is the default detector, {default} "
                             "(evaluate.default_detector), and thresholds come from the alarm budget.")
        else:
            out["reason"] = (f"No champion: {why_free}, so it would be the default detector, {default}, which was "
                             f"not scored ({scored.get('status', 'not trained')}): add it to train.detectors or set "
                             "evaluate.default_detector.")
        return out
    champion_of = {n: r["champion_metric"] for n, r in results.items() if r.get("status") == "ok"}
    if not default_ok or champion_of[default].get("value") is None:
        out["champion"] = best
        out["reason"] = (f"The default detector, {default}, has no validation {metric}: the best on validation, "
                         f"{best}, is the champion." if best else f"No detector has a validation {metric}.")
        return out
    if best is None or best == default:
        out["champion"] = default
        out["reason"] = (f"The default detector, {default}, is also the best on validation "
                         f"({figure_with_interval(champion_of[default])}).")
        return out
    comparison = beats(champion_of[best], champion_of[default], margin, ev.bootstrap_level)
    out["comparison"] = comparison
    both = (f"{best} ({figure_with_interval(champion_of[best])}) against the default {default} "
            f"({figure_with_interval(champion_of[default])})")
    if comparison["better"]:
        out["champion"] = best
        out["reason"] = (f"{best} replaces the default: it is better beyond the noise, {both}"
                         + _difference(comparison) + ".")
    else:
        out["champion"] = default
        out["reason"] = (f"{best} is best on validation ({figure_with_interval(champion_of[best])}) but not beyond "
                         f"the noise of the default {default} ({figure_with_interval(champion_of[default])})"
                         + _difference(comparison) + ": kept the default.")
    return out


def _difference(comparison: dict) -> str:
    bounds, margin = comparison["difference_interval"], comparison["margin"]
    more = f" {margin}" if margin else " 0"
    if bounds is None:
        return f" (difference {comparison['difference']:+.3f}, must exceed{more})"
    return f" (difference {comparison['difference']:+.3f}, interval [{bounds[0]:+.3f}, {bounds[1]:+.3f}], must lie above{more})"


def champion_rank(champion: dict) -> tuple[float, float]:
    """The sort key of a champion figure: its value, then its single split (ties)."""
    single = champion.get("single_split")
    return (champion["value"], float("-inf") if single is None else single)


def champion_transfer(champion: str | None, test_values: dict[str, float | None]) -> dict:
    """The validation-chosen ``champion`` against the best detector on test (the random row left out):
    ``shortfall`` is how much of the champion metric the validation choice lost on test."""
    values = {n: v for n, v in test_values.items() if n != RANDOM and v is not None}
    best = max(values, key=values.get) if values else None
    chosen = values.get(champion)
    return {"champion": champion, "champion_test": chosen, "test_best": best, "test_best_value": values.get(best),
            "shortfall": None if chosen is None else values[best] - chosen}
