"""evaluate stage: score every trained detector, threshold it without test labels, report.

For each detector, the whole prepared series (train + val + test, per KPI) is scored once and cut
back into splits, so the first test points are scored with their real preceding context.

- Raw scores are calibrated per KPI (params ``evaluate.calibration``, :mod:`models.calibration`):
  the calibration is fitted on the train and validation raw scores and maps every score to one common
  scale (surprise, ``-log10`` of a tail probability), so one threshold means the same on every KPI.
- The threshold is fitted on the **validation** split's calibrated scores (params
  ``evaluate.threshold``); it never sees test labels.
- The champion metric (``evaluate.champion_metric``) is computed on validation: it picks the
  champion. Test metrics are the honest estimate and pick nothing.
- The champion is picked on ``evaluate.champion_folds`` chronological folds of the validation split,
  not on one split that may be lucky (:func:`fold_metrics`): each KPI's validation rows are cut into
  K + 1 consecutive blocks, and fold k (k = 1..K) is block k, thresholded by the same rule fitted on
  the blocks before it (rolling origin). The first block only fits: a threshold fitted on the fold it
  is scored on, or on train (which supervised detectors have learnt), would flatter the figure. Folds
  are scored only where they hold an observed anomaly and the rule could be fitted before them, which
  depends on the labels alone, so every detector is scored on the same folds. The champion is the best
  fold mean; the fold min and std say how stable it is, and the leaderboard puts each detector's
  validation -> test gap beside it. ``champion_folds: 1`` is the single split (threshold fitted on all
  of validation and scored there), which is also the fallback when no fold can be scored.
- Figures that use test labels to choose a threshold are reported only under names ending in
  ``_oracle``, for comparison with published numbers.
- A ``random`` row (uniform random scores, same threshold rule) shows how much a metric inflates.

Outputs: ``paths.evaluation``: ``metrics.json`` (DVC metrics: per detector overall and per KPI),
``leaderboard.md``, ``thresholds/<detector>.json``, ``calibration/<detector>.json`` (the fitted
calibration, which the register stage bundles with the model); ``paths.plots`` (DVC plots): ``pr/<detector>.csv``
and ``scores/<safe_stem(kpi)>.png`` (score versus label for a few KPIs; see ``pipeline.outputs.safe_stem``).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from models import registry
from models.calibration import make_calibration
from models.frame import KPI_ID, LABEL, MISSING, TIMESTAMP, VALUE, has_labels, id_runs
from pipeline import metrics as M
from pipeline.outputs import replace_dirs_atomic, safe_stem
from pipeline.params import Params
from pipeline.thresholds import ThresholdError, make_threshold

log = logging.getLogger(__name__)

RANDOM = "random"
ORACLE_METRICS = ("point_f1", "aiops_f1")


def load_splits(windows_dir: Path) -> pd.DataFrame:
    """train + val + test prepared frames in one frame, with a ``split`` column, per-KPI ordered."""
    parts = []
    for split in ("train", "val", "test"):
        frame = pd.read_parquet(Path(windows_dir) / f"{split}.parquet")
        parts.append(frame.assign(split=split))
    full = pd.concat(parts, ignore_index=True)
    return full.sort_values([KPI_ID, TIMESTAMP], kind="stable").reset_index(drop=True)


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
        values = scores[rows]
        if spec.needs == "alarms":
            try:
                threshold = make_threshold(dict(threshold_rule)).fit(
                    scores[before], labels=labels[before], missing=missing[before], kpi_ids=ids[before])
            except ThresholdError:
                out.append(None)
                continue
            values = threshold.apply(values, ids[rows])
        out.append(spec.compute(labels[rows], values, missing[rows], ids[rows], delay=delay, vus_window=None,
                                probation=nab_probation))
    return out


def champion_summary(metric: str, single_split: float | None, fold_values: list[float | None]) -> dict:
    """What the champion is picked by: the fold mean when a fold could be scored, else the single split."""
    scored = [v for v in fold_values if v is not None]
    mean = float(np.mean(scored)) if scored else None
    return {"name": metric, "split": "val", "value": mean if scored else single_split,
            "basis": "folds" if scored else "single_split", "single_split": single_split,
            "folds": len(fold_values), "fold_values": {str(i + 1): v for i, v in enumerate(fold_values)},
            "fold_mean": mean, "fold_min": min(scored) if scored else None,
            "fold_std": float(np.std(scored)) if scored else None}


def evaluate_scores(name: str, full: pd.DataFrame, scores: np.ndarray, params: Params,
                    calibration: dict | None = None, threshold_rule: dict | None = None,
                    folds: int | None = None) -> tuple[dict, np.ndarray]:
    """Calibrate, threshold on validation, then metrics on validation and test (overall and per KPI),
    and the champion metric on ``folds`` validation folds (default ``evaluate.champion_folds``; 1: none).
    Returns (the result, the calibrated scores of every row).

    ``name``'s calibration is ``evaluate.calibration_by_detector[name]``, else ``evaluate.calibration``.
    ``calibration`` and ``threshold_rule`` override those and ``evaluate.threshold`` (the
    benchmark compares against raw scores). The result holds the fitted calibration under
    ``"calibration"``.
    """
    ev = params.evaluate
    folds = ev.champion_folds if folds is None else folds
    scores, fitted_calibration = calibrate(full, scores, ev.calibration_for(name) if calibration is None
                                           else calibration)
    val_mask = (full["split"] == "val").to_numpy()
    test_mask = (full["split"] == "test").to_numpy()
    val, test = full[val_mask], full[test_mask]
    labelled = has_labels(val)
    threshold = make_threshold(dict(ev.threshold if threshold_rule is None else threshold_rule))
    threshold.fit(scores[val_mask], labels=val[LABEL].to_numpy() if labelled else None,
                  missing=val[MISSING].to_numpy(), kpi_ids=val[KPI_ID].to_numpy())
    result = {"status": "ok", "calibration": fitted_calibration, "threshold": threshold.to_dict()}
    for split, part, mask in (("val", val, val_mask), ("test", test, test_mask)):
        if part.empty or not has_labels(part):
            result[split] = None
            continue
        alarms = threshold.apply(scores[mask], part[KPI_ID].to_numpy())
        result[split] = split_metrics(part, scores[mask], alarms, ev.delay, ev.nab_probation)
        result[split]["alarm_rate"] = float(alarms.mean())
        if split == "test":
            result[split].update(oracle_metrics(part, scores[mask], ev.delay, ev.nab_probation))
            result["per_kpi"] = per_kpi_metrics(part, scores[mask], alarms, ev.delay)
    rule = dict(ev.threshold if threshold_rule is None else threshold_rule)
    fold_values = (fold_metrics(val, scores[val_mask], ev.champion_metric, rule, folds, ev.delay, ev.nab_probation)
                   if labelled and folds > 1 else [])
    result["champion_metric"] = champion_summary(ev.champion_metric, (result.get("val") or {}).get(ev.champion_metric),
                                                 fold_values)
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
    champion = pick_champion(results, metric)
    # Fitted calibrations hold per-KPI state (quantile knots): files of their own, not DVC metrics.
    calibrations = {name: res.pop("calibration") for name, res in results.items() if "calibration" in res}
    report = {"champion_metric": metric, "champion_folds": params.evaluate.champion_folds, "best_on_val": champion,
              "transfer": champion_transfer(champion, {n: (r.get("test") or {}).get(metric) for n, r in results.items()}),
              "calibration": dict(params.evaluate.calibration), "detectors": results}

    def write(tmp: Path) -> None:
        (tmp / "metrics.json").write_text(json.dumps(report, indent=2, sort_keys=True, default=_json))
        (tmp / "leaderboard.md").write_text(leaderboard(report))
        (tmp / "thresholds").mkdir()
        for name, res in results.items():
            if "threshold" in res:
                (tmp / "thresholds" / f"{name}.json").write_text(json.dumps(res["threshold"], indent=2))
        (tmp / "calibration").mkdir()
        for name, fitted in calibrations.items():
            (tmp / "calibration" / f"{name}.json").write_text(json.dumps(fitted))

    def write_plots(tmp: Path) -> None:
        (tmp / "pr").mkdir(parents=True)
        for name, curve in curves.items():
            curve.to_csv(tmp / "pr" / f"{name}.csv", index=False)
        plot_scores(full, all_scores, results, tmp / "scores", params.evaluate.plot_kpis)

    # Both written before either is swapped in: a failure (a plot that cannot be written) leaves the
    # previous evaluation and plots in step.
    replace_dirs_atomic([(Path(params.paths.evaluation), write), (Path(params.paths.plots), write_plots)])
    return report


def pr_curve(labels: np.ndarray, scores: np.ndarray, missing: np.ndarray, points: int = 200) -> pd.DataFrame:
    """Precision/recall at up to ``points`` thresholds (DVC plots want small files)."""
    from sklearn.metrics import precision_recall_curve

    keep = ~missing
    if labels[keep].sum() == 0:
        return pd.DataFrame({"recall": [], "precision": []})
    precision, recall, _ = precision_recall_curve(labels[keep], scores[keep])
    idx = np.unique(np.linspace(0, len(recall) - 1, min(points, len(recall))).astype(int))
    return pd.DataFrame({"recall": recall[idx], "precision": precision[idx]})


def _progress(names: list[str], enabled: bool):
    """A bar over the detectors being scored, for a person at a terminal (the CLI decides)."""
    if not enabled:
        return names
    from tqdm.auto import tqdm

    return tqdm(names, unit="detector", desc="evaluate", leave=False, file=sys.stderr)


def pick_champion(results: dict, metric: str) -> str | None:
    """The best detector on the validation champion metric (``result["champion_metric"]``, see
    :func:`champion_summary`): by the fold mean, among the detectors scored on folds when any was, else
    by the single split; a tie goes to the better single split. The random row never wins."""
    ok = {n: r["champion_metric"] for n, r in results.items()
          if n != RANDOM and r.get("status") == "ok" and r["champion_metric"]["value"] is not None}
    if any(c.get("basis") == "folds" for c in ok.values()):
        ok = {n: c for n, c in ok.items() if c.get("basis") == "folds"}
    return max(ok, key=lambda n: _rank(ok[n]) + (n,)) if ok else None


def _rank(champion: dict) -> tuple[float, float]:
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


def transfer_line(transfer: dict, metric: str) -> str:
    """One sentence under a results table: does the validation choice transfer to test?"""
    champion, best = transfer["champion"], transfer["test_best"]
    if champion is None:
        return f"No validation-chosen champion: no detector has a validation {metric}."
    if transfer["champion_test"] is None:
        return f"Validation-chosen champion: **{champion}**, with no test {metric} to compare with the best on test ({best})."
    if champion == best:
        return f"The validation-chosen champion, **{champion}**, is also the best on test ({metric} {_fmt(transfer['champion_test'])})."
    return (f"Validation-chosen champion: **{champion}** (test {metric} {_fmt(transfer['champion_test'])}); best on test: "
            f"**{best}** ({_fmt(transfer['test_best_value'])}); the validation choice is {transfer['shortfall']:.3f} "
            f"{metric} short of it.")


LEADERBOARD_COLUMNS = ("aiops_f1", "rpa_f1", "point_f1", "vus_pr", "auc_pr", "auc_roc", "nab_standard",
                       "point_adjusted_f1", "aiops_f1_oracle")  # test metrics


def leaderboard(report: dict) -> str:
    metric, folds = report["champion_metric"], report.get("champion_folds", 1)
    tests = [m for m in LEADERBOARD_COLUMNS if m != metric]
    header = ["detector", f"val {metric} (mean of {folds} folds)", "fold min", "fold std", f"val {metric} (one split)",
              f"test {metric}", "val → test gap", *(f"test {m}" for m in tests), "status"]
    rows = []
    for name, res in report["detectors"].items():
        if res.get("status") != "ok":
            rows.append(((float("-inf"),) * 2, [name, *["–"] * (len(header) - 2), f"{res.get('status')}: {res.get('reason', '')}"]))
            continue
        champion, test = res["champion_metric"], res.get("test") or {}
        cells = [_fmt(champion.get(k)) for k in ("fold_mean", "fold_min", "fold_std", "single_split")]
        cells += [_fmt(test.get(metric)), _fmt(champion.get("val_test_gap"), "+.3f"), *(_fmt(test.get(m)) for m in tests)]
        key = _rank(champion) if champion["value"] is not None else (float("-inf"),) * 2
        rows.append((key, [name, *cells, "ok"]))
    rows.sort(key=lambda r: r[0], reverse=True)
    best = report["best_on_val"]
    basis = (report["detectors"].get(best) or {}).get("champion_metric", {}).get("basis")
    ranked_by = (f"Ranked by **{metric} on the validation split, the mean over {folds} chronological folds** (each "
                 "fold's threshold fitted on the validation rows before it; the single split, threshold fitted on all of "
                 "validation, where no fold could be scored)." if folds > 1 else
                 f"Ranked by **{metric} on the validation split** (threshold: fitted on validation).")
    lines = [
        "# Leaderboard\n",
        ranked_by + " The gap is test − validation: a large negative gap is a validation figure that did not",
        "transfer. Test columns are the honest estimate. `point_adjusted_f1` is the legacy, inflated metric;",
        "`*_oracle` picks its threshold on test labels. Both are shown only to compare with published work; compare them",
        "with the `random` row.\n",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r[1]) + " |" for r in rows),
        f"\nBest on validation: **{best}**" + (" (single split: no fold could be scored)" if basis == "single_split" else ""),
    ]
    if report.get("transfer"):
        lines.append("\n" + transfer_line(report["transfer"], metric))
    return "\n".join(lines) + "\n"


def plot_scores(full: pd.DataFrame, all_scores: dict, results: dict, out: Path, n_kpis: int) -> None:
    """Score versus label on the test split, for the first few KPIs with anomalies."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    test = full[full["split"] == "test"]
    if not has_labels(test) or not all_scores:
        return
    kpis = [k for k, g in test.groupby(KPI_ID, sort=True) if g[LABEL].any()][:n_kpis]
    for kpi in kpis:
        m = ((full["split"] == "test") & (full[KPI_ID] == kpi)).to_numpy()
        part = full[m]
        fig, axes = plt.subplots(len(all_scores) + 1, 1, figsize=(12, 1.6 * (len(all_scores) + 1)), sharex=True)
        axes[0].plot(part[TIMESTAMP], part[VALUE], lw=0.7, color="black")
        axes[0].fill_between(part[TIMESTAMP], part[VALUE].min(), part[VALUE].max(), where=part[LABEL] == 1,
                             color="red", alpha=0.25, label="labelled anomaly")
        axes[0].set_ylabel("value (norm.)")
        axes[0].legend(loc="upper right", fontsize=7)
        for ax, (name, scores) in zip(axes[1:], all_scores.items()):
            ax.plot(part[TIMESTAMP], scores[m], lw=0.7)
            value = results[name].get("threshold", {}).get("global")
            if isinstance(value, (int, float)):
                ax.axhline(value, color="red", lw=0.6, ls="--")
            ax.set_ylabel(name, fontsize=7)
        fig.suptitle(f"{kpi}: test split, calibrated scores and thresholds")
        fig.tight_layout()
        fig.savefig(out / f"{safe_stem(str(kpi))}.png", dpi=80)  # any id: bounded, no two KPIs share a file
        plt.close(fig)


def _train_status(artifacts: Path, name: str) -> dict:
    path = artifacts / name / "status.json"
    if name == RANDOM:
        return {}
    if not path.exists():
        return {"status": "missing", "reason": f"{path} not found: train the detector first"}
    return json.loads(path.read_text())


def _fmt(v, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _json(v):
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    raise TypeError(type(v))
