"""evaluate stage: score every trained detector, threshold it without test labels, report.

Each detector goes through the evaluation protocol (:mod:`pipeline.eval.protocol`: calibrate,
threshold on validation, metrics on validation and test) and is ranked by the champion rule
(:mod:`pipeline.eval.selection`), which the register stage's gate and ``kpiguard bench`` use too. A
``random`` row (uniform random scores, same threshold rule) shows how much a metric inflates.

The report's ``best_on_val`` is the champion, the detector the register stage offers to serving:
:func:`pipeline.eval.selection.choose_champion`, whose decision and its reason are under ``selection``.
With too few labelled validation events (``evaluate.min_events``), or none, it is
``evaluate.default_detector`` and thresholds come from the alarm budget (the label-free path).
``events`` holds the labelled events of each split.

Outputs: ``paths.evaluation``: ``metrics.json`` (the full detail: per detector overall and per KPI),
``leaderboard.md``, ``thresholds/<detector>.json``, ``calibration/<detector>.json`` (the fitted
calibration, which the register stage bundles with the model); ``paths.metrics`` (DVC metrics, committed):
``<detector>.json``, each detector's headline figures (:func:`pipeline.eval.leaderboard.headline`);
``paths.plots`` (DVC plots): ``pr.csv`` (every detector's test precision-recall curve, one chart) and
``scores/<safe_stem(kpi)>.png`` (score versus label for a few KPIs; see ``pipeline.io.outputs.safe_stem``).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from models import registry
from models.frame import LABEL, MISSING, has_labels
from models.jsonable import to_jsonable
from pipeline.data.prep import load_splits
from pipeline.eval.leaderboard import headline, leaderboard
from pipeline.eval.plots import plot_scores, pr_curve, pr_curves
from pipeline.eval.protocol import evaluate_scores
from pipeline.eval.selection import RANDOM, champion_transfer, choose_champion, label_events, strip_draws
from pipeline.io.outputs import replace_dirs_atomic
from pipeline.params import Params

log = logging.getLogger(__name__)


def score_detector(name: str, artifacts: Path, full: pd.DataFrame) -> np.ndarray:
    detector = registry.load(artifacts / name)
    scores = np.asarray(detector.score(full[[c for c in full.columns if c != "split"]]), dtype=np.float64)
    if scores.shape != (len(full),) or not np.isfinite(scores).all():
        raise ValueError(f"{name}: score() returned {scores.shape} with non-finite values; "
                         f"expected ({len(full)},) finite")
    return scores


def run(params: Params, detectors: list[str] | None = None, progress: bool = False) -> dict:
    full = load_splits(Path(params.paths.windows))
    if not has_labels(full):
        log.warning("the data has no labels: only thresholds and alarm rates are reported")
    artifacts = Path(params.paths.artifacts)
    results, curves, all_scores = {}, {}, {}
    for name in detectors or ():
        registry.get(name)  # names become paths under paths.artifacts: registered ones only
    for name in _progress([*(detectors or params.train.detectors), RANDOM], progress):
        status = _train_status(artifacts, name)
        if status.get("status") not in (None, "ok"):
            results[name] = status
            continue
        try:
            scores = (np.random.default_rng(params.train.seed).random(len(full)) if name == RANDOM
                      else score_detector(name, artifacts, full))
            results[name], calibrated = evaluate_scores(name, full, scores, params)
        except Exception as exc:  # one failure doesn't stop the others
            log.exception("evaluating %s failed", name)
            results[name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            continue
        all_scores[name] = calibrated
        test = (full["split"] == "test").to_numpy()
        if has_labels(full[test]):
            curves[name] = pr_curve(full[LABEL].to_numpy()[test], calibrated[test], full[MISSING].to_numpy()[test])
    metric = params.evaluate.champion_metric
    events = {split: label_events(full[(full["split"] == split).to_numpy()], metric) for split in ("val", "test")}
    selection = choose_champion(results, params.evaluate, events["val"], params.mlflow.min_improvement)
    champion = selection["champion"]
    strip_draws(results)
    # Fitted calibrations hold per-KPI state (quantile knots): files of their own, not DVC metrics.
    calibrations = {name: res.pop("calibration") for name, res in results.items() if "calibration" in res}
    report = {"champion_metric": metric, "champion_folds": params.evaluate.champion_folds, "best_on_val": champion,
              "selection": selection, "events": events, "alarm_budget": params.evaluate.alarm_budget,
              "bootstrap": {"draws": params.evaluate.bootstrap_draws, "level": params.evaluate.bootstrap_level},
              "transfer": champion_transfer(champion, {n: (r.get("test") or {}).get(metric) for n, r in results.items()}),
              "calibration": dict(params.evaluate.calibration), "detectors": results}

    def write(tmp: Path) -> None:
        (tmp / "metrics.json").write_text(json.dumps(to_jsonable(report), indent=2, sort_keys=True))
        (tmp / "leaderboard.md").write_text(leaderboard(report))
        (tmp / "thresholds").mkdir()
        for name, res in results.items():
            if "threshold" in res:
                (tmp / "thresholds" / f"{name}.json").write_text(json.dumps(res["threshold"], indent=2))
        (tmp / "calibration").mkdir()
        for name, fitted in calibrations.items():
            (tmp / "calibration" / f"{name}.json").write_text(json.dumps(fitted))

    def write_headline(tmp: Path) -> None:
        seconds = {name: _train_report(params, name).get("train_seconds") for name in results}
        for name, row in headline(report, seconds).items():
            (tmp / f"{name}.json").write_text(json.dumps(to_jsonable(row, nonfinite="null"), indent=2, sort_keys=True)
                                              + "\n")

    def write_plots(tmp: Path) -> None:
        pr_curves(curves).to_csv(tmp / "pr.csv", index=False)  # a DVC output: written even when empty
        plot_scores(full, all_scores, results, tmp / "scores", params.evaluate.plot_kpis)

    # All written before any is swapped in: a failure (a plot that cannot be written) leaves the
    # previous evaluation, metrics and plots in step.
    replace_dirs_atomic([(Path(params.paths.evaluation), write), (Path(params.paths.metrics), write_headline),
                         (Path(params.paths.plots), write_plots)])
    return report


def _progress(names: list[str], enabled: bool):
    """A bar over the detectors being scored, for a person at a terminal (the CLI decides)."""
    if not enabled:
        return names
    from tqdm.auto import tqdm

    return tqdm(names, unit="detector", desc="evaluate", leave=False, file=sys.stderr)


def _train_report(params: Params, name: str) -> dict:
    """The train stage's report of ``name`` (its seconds); {} for the random row or a detector never trained."""
    path = Path(params.paths.train_reports) / f"{name}.json"
    return json.loads(path.read_text()) if name != RANDOM and path.exists() else {}


def _train_status(artifacts: Path, name: str) -> dict:
    path = artifacts / name / "status.json"
    if name == RANDOM:
        return {}
    if not path.exists():
        return {"status": "missing", "reason": f"{path} not found: train the detector first"}
    return json.loads(path.read_text())
