"""The evaluation protocol: how one detector's raw scores become its figures.

The whole prepared series (train + val + test, per KPI) is scored once and cut back into splits, so
the first test points are scored with their real preceding context. Then:

- raw scores are calibrated per KPI (``evaluate.calibration``, :mod:`models.calibration`), fitted on
  the train and validation raw scores: one common scale (surprise, ``-log10`` of a tail probability),
  so one threshold means the same on every KPI;
- the threshold is fitted on the **validation** split's calibrated scores (``evaluate.threshold``); it
  never sees test labels. On the label-free path (fewer labelled validation events than
  ``evaluate.min_events``: :func:`pipeline.eval.selection.label_free_reason`) a rule that fits on labels
  becomes the alarm budget, ``evaluate.alarm_budget`` alarm points per KPI per day;
- the alarm rate on validation and test, in alarms per KPI per day (``alarms``), labels or not;
- every metric on validation and test (overall, and per KPI on test), and the champion figure on the
  validation folds (:func:`pipeline.eval.selection.champion_metric`);
- figures that use test labels to choose a threshold are reported only under names ending in
  ``_oracle``, for comparison with published numbers.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from models.calibration import make_calibration
from models.frame import KPI_ID, LABEL, MISSING, has_labels, id_runs
from pipeline.eval import metrics as M
from pipeline.eval.selection import champion_metric, kpi_points_per_day, label_events, label_free_reason
from pipeline.eval.thresholds import alarms_per_kpi_day, make_threshold
from pipeline.params import Params

ORACLE_METRICS = ("point_f1", "aiops_f1")


def split_metrics(frame: pd.DataFrame, scores: np.ndarray, alarms: np.ndarray, delay: int,
                  nab_probation: int | None = None) -> dict:
    labels = frame[LABEL].to_numpy()
    return M.evaluate_all(labels, scores=scores, alarms=alarms, missing=frame[MISSING].to_numpy(),
                          series_ids=frame[KPI_ID].to_numpy(), delay=delay, nab_probation=nab_probation)


def oracle_metrics(frame: pd.DataFrame, scores: np.ndarray, delay: int, nab_probation: int | None = None) -> dict:
    """Best F1 (and NAB score) with the threshold chosen on these very labels: never an honest estimate.

    ``nab_standard_oracle`` is NAB's own protocol: one threshold tuned over the whole corpus.
    """
    out = {}
    labels, missing, ids = frame[LABEL].to_numpy(), frame[MISSING].to_numpy(), frame[KPI_ID].to_numpy()
    series = [(labels[s], scores[s], nab_probation, missing[s]) for _, s in id_runs(ids)]
    try:
        out["nab_standard_oracle"] = M.nab_best_threshold(series)[1]
    except (ValueError, TypeError):
        out["nab_standard_oracle"] = None
    for metric in ORACLE_METRICS:
        try:
            _, best = M.best_f1_threshold(frame[LABEL].to_numpy(), scores, frame[MISSING].to_numpy(),
                                          metric=metric, series_ids=frame[KPI_ID].to_numpy(), delay=delay)
        except (ValueError, TypeError):
            best = None
        out[f"{metric}_oracle"] = best
    return out


def calibrate(full: pd.DataFrame, scores: np.ndarray, config: dict | None) -> tuple[np.ndarray, dict]:
    """(calibrated scores of every row, the fitted calibration as a dict): fitted on train + val rows."""
    fit_rows = full["split"].isin(["train", "val"]).to_numpy()
    ids = full[KPI_ID].to_numpy()
    calibration = make_calibration(config)
    calibration.fit(scores[fit_rows], ids[fit_rows], full[MISSING].to_numpy()[fit_rows])
    return calibration.transform(scores, ids), calibration.to_dict()


def evaluate_scores(name: str, full: pd.DataFrame, scores: np.ndarray, params: Params,
                    calibration: dict | None = None, threshold_rule: dict | None = None,
                    folds: int | None = None) -> tuple[dict, np.ndarray]:
    """Calibrate, threshold on validation, then metrics on validation and test (overall and per KPI),
    the alarm rates (alarms per KPI per day, ``"alarms"``), and the champion metric on ``folds`` validation
    folds (default ``evaluate.champion_folds``; 1: none). Returns (the result, the calibrated scores of
    every row).

    ``name``'s calibration is ``evaluate.calibration_by_detector[name]``, else ``evaluate.calibration``.
    ``calibration`` and ``threshold_rule`` override those and the rule of
    :meth:`pipeline.params.EvaluateParams.threshold_rule` (the benchmark compares against raw scores). The
    result holds the fitted calibration under ``"calibration"``.
    """
    ev = params.evaluate
    scores, fitted_calibration = calibrate(full, scores, ev.calibration_for(name) if calibration is None
                                           else calibration)
    val_mask = (full["split"] == "val").to_numpy()
    test_mask = (full["split"] == "test").to_numpy()
    val, test = full[val_mask], full[test_mask]
    per_day = kpi_points_per_day(full)
    label_free = label_free_reason(label_events(val, ev.champion_metric), ev) is not None
    rule = ev.threshold_rule(label_free) if threshold_rule is None else dict(threshold_rule)
    threshold = make_threshold(rule)
    threshold.fit(scores[val_mask], labels=val[LABEL].to_numpy() if has_labels(val) else None,
                  missing=val[MISSING].to_numpy(), kpi_ids=val[KPI_ID].to_numpy(), points_per_day=per_day)
    result = {"status": "ok", "calibration": fitted_calibration, "threshold": threshold.to_dict(),
              "alarms": {"budget": ev.alarm_budget}}
    for split, part, mask in (("val", val, val_mask), ("test", test, test_mask)):
        alarms = threshold.apply(scores[mask], part[KPI_ID].to_numpy())
        result["alarms"][split] = (None if part.empty else
                                   alarms_per_kpi_day(alarms, part[MISSING].to_numpy(), part[KPI_ID].to_numpy(), per_day))
        if part.empty or not has_labels(part):
            result[split] = None
            continue
        result[split] = split_metrics(part, scores[mask], alarms, ev.delay, ev.nab_probation)
        result[split]["alarm_rate"] = float(alarms.mean())
        if split == "test":
            result[split].update(oracle_metrics(part, scores[mask], ev.delay, ev.nab_probation))
            result["per_kpi"] = per_kpi_metrics(part, scores[mask], alarms, ev.delay)
    result["champion_metric"] = champion_metric(val, scores[val_mask], ev, threshold=threshold, threshold_rule=rule,
                                                folds=folds, points_per_day=per_day)
    test_value = (result.get("test") or {}).get(ev.champion_metric)
    value = result["champion_metric"]["value"]
    result["champion_metric"]["test"] = test_value
    result["champion_metric"]["val_test_gap"] = None if value is None or test_value is None else test_value - value
    return result, scores


def per_kpi_metrics(part: pd.DataFrame, scores: np.ndarray, alarms: np.ndarray, delay: int) -> dict:
    out = {}
    ids = part[KPI_ID].to_numpy()
    for kpi in pd.unique(ids):
        m = ids == kpi
        sub = part[m]
        out[str(kpi)] = {k: v for k, v in split_metrics(sub, scores[m], alarms[m], delay).items()
                         if k in ("point_f1", "aiops_f1", "rpa_f1", "auc_roc", "auc_pr")}
    return out
