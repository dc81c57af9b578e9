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
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from models.frame import KPI_ID, LABEL, MISSING, has_labels, id_runs
from pipeline.eval import metrics as M
from pipeline.eval.thresholds import Threshold, ThresholdError, make_threshold
from pipeline.params import EvaluateParams

RANDOM = "random"


def fold_blocks(kpi_ids: np.ndarray, blocks: int) -> np.ndarray:
    """The block (0 .. ``blocks`` - 1) of each row: every KPI's rows (contiguous, in time order) cut into
    ``blocks`` consecutive parts whose lengths differ by at most one."""
    out = np.empty(len(kpi_ids), dtype=np.int64)
    for _, sl in id_runs(kpi_ids):
        n = sl.stop - sl.start
        out[sl] = np.arange(n) * blocks // n
    return out


def fold_metrics(frame: pd.DataFrame, scores: np.ndarray, metric: str, threshold_rule: dict, folds: int,
                 delay: int, nab_probation: int | None = None) -> list[float | None]:
    """``metric`` on each of ``folds`` rolling-origin folds of the validation rows ``frame`` (their
    calibrated ``scores``): fold k is block k of :func:`fold_blocks` (``folds + 1`` blocks), with
    ``threshold_rule`` fitted on blocks 0 .. k-1. None for a fold without an observed anomaly, or whose
    threshold cannot be fitted on the blocks before it (``best_f1`` with no anomaly there)."""
    spec = M.METRICS[metric]
    labels, ids = frame[LABEL].to_numpy(), frame[KPI_ID].to_numpy()
    missing = frame[MISSING].to_numpy(dtype=bool)
    block = fold_blocks(ids, folds + 1)
    anomalous = (labels == 1) & ~missing
    out: list[float | None] = []
    for k in range(1, folds + 1):
        rows, before = block == k, block < k
        if not anomalous[rows].any():
            out.append(None)
            continue
        threshold = None
        if spec.needs == "alarms":
            try:
                threshold = _fit(threshold_rule, scores[before], labels[before], missing[before], ids[before])
            except ThresholdError:
                out.append(None)
                continue
        out.append(_figure(spec, labels[rows], scores[rows], missing[rows], ids[rows], threshold, delay, nab_probation))
    return out


def _fit(rule: dict, scores: np.ndarray, labels: np.ndarray, missing: np.ndarray, ids: np.ndarray) -> Threshold:
    return make_threshold(dict(rule)).fit(scores, labels=labels, missing=missing, kpi_ids=ids)


def _figure(spec: M.MetricSpec, labels: np.ndarray, scores: np.ndarray, missing: np.ndarray, ids: np.ndarray,
            threshold: Threshold | None, delay: int, probation: int | None) -> float | None:
    """One metric on rows: on their scores, or on their alarms under ``threshold``."""
    values = scores if spec.needs == "scores" else threshold.apply(scores, ids)
    return spec.compute(labels, values, missing, ids, delay=delay, vus_window=None, probation=probation)


def champion_summary(metric: str, single_split: float | None, fold_values: list[float | None]) -> dict:
    """What the champion is picked by: the fold mean when a fold could be scored, else the single split."""
    scored = [v for v in fold_values if v is not None]
    mean = float(np.mean(scored)) if scored else None
    return {"name": metric, "split": "val", "value": mean if scored else single_split,
            "basis": "folds" if scored else "single_split", "single_split": single_split,
            "folds": len(fold_values), "fold_values": {str(i + 1): v for i, v in enumerate(fold_values)},
            "fold_mean": mean, "fold_min": min(scored) if scored else None,
            "fold_std": float(np.std(scored)) if scored else None}


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
                    threshold_rule: dict | None = None, folds: int | None = None) -> dict:
    """The champion figure of one detector or model version (:func:`champion_summary`'s dict) on the
    validation rows ``val`` (``label``, ``missing``, ``kpi_id``; per KPI in time order) and their calibrated
    ``scores``: the single split with the rule fitted on all of ``val`` (``threshold``, when the caller has
    fitted it already), and the mean over the rolling-origin folds.

    ``threshold_rule`` and ``folds`` override ``evaluate.threshold`` and ``evaluate.champion_folds``.
    Unlabelled validation rows have no figure (value None)."""
    metric = ev.champion_metric
    rule = dict(ev.threshold if threshold_rule is None else threshold_rule)
    folds = ev.champion_folds if folds is None else folds
    if val.empty or not has_labels(val):
        return champion_summary(metric, None, [])
    labels, ids = val[LABEL].to_numpy(), val[KPI_ID].to_numpy()
    missing = val[MISSING].to_numpy(dtype=bool)
    spec = M.METRICS[metric]
    if spec.needs == "alarms" and threshold is None:
        threshold = _fit(rule, scores, labels, missing, ids)
    single = _figure(spec, labels, scores, missing, ids, threshold, ev.delay, ev.nab_probation)
    fold_values = fold_metrics(val, scores, metric, rule, folds, ev.delay, ev.nab_probation) if folds > 1 else []
    return champion_summary(metric, single, fold_values)


def pick_champion(results: dict, metric: str) -> str | None:
    """The best detector on the validation champion metric (``result["champion_metric"]``, see
    :func:`champion_summary`): by the fold mean, among the detectors scored on folds when any was, else
    by the single split; a tie goes to the better single split. The random row never wins."""
    ok = {n: r["champion_metric"] for n, r in results.items()
          if n != RANDOM and r.get("status") == "ok" and r["champion_metric"]["value"] is not None}
    if any(c.get("basis") == "folds" for c in ok.values()):
        ok = {n: c for n, c in ok.items() if c.get("basis") == "folds"}
    return max(ok, key=lambda n: champion_rank(ok[n]) + (n,)) if ok else None


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
