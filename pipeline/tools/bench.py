"""``kpiguard bench``: ingest → validate → windows → train → evaluate on any sources, outside DVC.

Protocols:

- **split** (default): the train source is split chronologically into train / val / test with the
  ``windows`` fractions; with ``--test`` the test source is scored whole and the train source is
  split into train and val only (the AIOps challenge protocol).
- **nab** (default for ``nab:`` sources without ``--test``): each series trains on NAB's probation
  period only (its first 15%, at most 750 points: two thirds train the detector, one third completes
  the calibration's fit) and the rest is scored *causally* (the score at t uses data up to t only), as
  NAB scores it. ``nab_standard`` is then NAB's score on everything after probation, with a threshold
  that uses no label (NAB's red zone on the calibrated scale); ``nab_standard_oracle`` is NAB's own
  protocol (one corpus threshold tuned on the labels), the figure NAB's scoreboard publishes.

Detectors train at their full budget: the demo's caps (``train.budget``) are dropped.

Each detector trains and scores in its own process (spawned), so one failure, or one memory blow-up,
doesn't stop the run, and peak memory is measured per detector. Scoring is per KPI, so a failure is
recorded per (detector, KPI) with its status, as Orion's benchmark does. The summary always has a
``random`` row (uniform random scores, same threshold rule) so metric inflation is visible.

**--label-free** (either protocol): the labels of the train and validation rows are removed after the
windows step, so the run takes the evaluate stage's label-free path (supervised detectors skipped, the
alarm budget's thresholds, the default detector as champion) and is scored against the test labels alone:
how label-free champions fare.

Scores are calibrated as the evaluate stage does (``evaluate.calibration``). Every row also shows the
headline metrics with calibration ``none`` (columns ending in ``_raw``: the same raw scores, thresholded
as before calibration existed: the params' rule, or per-KPI POT on probation for NAB), so the effect of
calibration is measured, not assumed.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from models import registry
from models.frame import KPI_ID, LABEL, has_labels
from pipeline import runtime
from pipeline.data.prep import load_splits
from pipeline.eval.leaderboard import transfer_line
from pipeline.eval.protocol import evaluate_scores
from pipeline.eval.selection import RANDOM, champion_transfer, choose_champion, label_events, strip_draws
from pipeline.io.outputs import write_file_atomic, write_json_atomic, write_text_atomic
from pipeline.params import Params, ParamsError, parse_params
from pipeline.stages import ingest, validate, windows

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("aiops_f1", "aiops_f1_oracle", "rpa_f1", "point_f1", "vus_pr", "auc_pr", "auc_roc",
                   "nab_standard", "nab_standard_oracle", "point_adjusted_f1")
RAW_METRICS = ("aiops_f1", "aiops_f1_oracle", "nab_standard", "nab_standard_oracle")  # also shown uncalibrated
NO_CALIBRATION = {"method": "none"}
# The champion metric on validation (the mean over evaluate.champion_folds folds: pipeline.eval.selection),
# its spread, its test value and test - validation: does a validation choice transfer?
CHAMPION_COLUMNS = {"val_champion": "value", "val_champion_fold_std": "fold_std", "test_champion": "test",
                    "val_test_gap": "val_test_gap"}  # summary row key: evaluate's champion_metric key
# The cheap reference rows every detector must beat to earn its cost (margins in results.md).
REFERENCES = ("diff_z", "windowed_gaussian")
# NAB's probation holds almost no label, so the honest NAB threshold uses none: NAB's own red zone on the
# calibrated scale (a 1-in-100,000 score given the KPI's history; models.calibration), the same on every KPI.
NAB_THRESHOLD = {"method": "fixed", "value": 5.0}
NAB_CALIBRATION = {"method": "likelihood"}  # NAB's own post-processing: streaming, adapts along each series
NAB_RAW_THRESHOLD = {"method": "pot", "scope": "per_kpi"}  # raw scores have no common scale: fit per KPI
# NAB's probation (15% of each series, at most 750 points) is the only data a detector may learn from:
# two thirds train it, one third fits the calibration's last points and the threshold; NAB scores the rest.
NAB_OVERRIDES = {"windows": {"train_fraction": 0.10, "val_fraction": 0.05, "max_train_points": 500,
                             "max_val_points": 250},
                 "evaluate": {"nab_probation": 0, "threshold": NAB_THRESHOLD, "calibration": NAB_CALIBRATION}}


def bench_params(base: Params, train: str, test: str | None, out: Path, protocol: str) -> Params:
    raw = base.as_dict()
    raw["data"] = {**raw["data"], "train": train, "test": test}
    # The demo's training budget (train.budget) keeps `make run` short; a benchmark measures every detector
    # at its full budget (train.max_epochs and its own caps), whatever the demo's is.
    raw["train"] = {**raw["train"], "budget": {}}
    raw["paths"] = {k: str(out / "work" / Path(v)) for k, v in raw["paths"].items()}
    if protocol == "nab":
        for section, values in NAB_OVERRIDES.items():
            raw[section] = {**raw[section], **values}
    return parse_params(raw, source="bench")


def protocol_for(train: str, test: str | None, protocol: str) -> str:
    if protocol != "auto":
        return protocol
    return "nab" if train.startswith("nab:") and not test else "split"


def drop_labels(windows_dir: Path, splits: tuple[str, ...] = ("train", "val")) -> None:
    """Remove the labels of ``splits`` in the windows stage's output (NaN: ``has_labels`` is false there);
    the other splits keep theirs."""
    import io

    for split in splits:
        path = Path(windows_dir) / f"{split}.parquet"
        frame = pd.read_parquet(path)
        if LABEL in frame.columns:
            frame[LABEL] = np.nan
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
            write_file_atomic(path, buffer.getvalue())


def run(base: Params, train: str, test: str | None, detectors: list[str], out: Path,
        protocol: str = "auto", command: str = "", progress: bool = True, label_free: bool = False) -> dict:
    out = Path(out)
    for name in detectors:  # names become score files (<out>/work/scores/<name>.npy): registered ones only
        registry.get(name)
    protocol = protocol_for(train, test, protocol)
    params = bench_params(base, train, test, out, protocol)
    p = params.paths
    started = time.perf_counter()
    ingest.run(params, Path(p.raw))
    validate.run(params, Path(p.raw), Path(p.validated), Path(p.quarantine), Path(p.validation_report))
    windows.run(params, Path(p.validated), Path(p.windows))
    if label_free:
        drop_labels(Path(p.windows))
    full = load_splits(Path(p.windows))
    kpis = full[KPI_ID].astype(str).unique().tolist()
    log.info("bench: %d KPIs, %d points, protocol %s, detectors %s", len(kpis), len(full), protocol, detectors)

    score_dir = out / "work" / "scores"
    score_dir.mkdir(parents=True, exist_ok=True)
    results, runs = {}, []
    bar = _progress(len(detectors), progress)
    for name in detectors:
        bar.set_description(name) if bar else None
        outcome = _in_child(name, params, protocol == "nab", score_dir)
        results[name] = summarise(name, outcome, full, params)
        runs += [{"detector": name, "kpi_id": k, **r} for k, r in outcome.get("kpis", {}).items()]
        if outcome.get("status") != "ok":
            runs += [{"detector": name, "kpi_id": None, "status": outcome["status"],
                      "reason": outcome.get("reason")}]
        bar.update(1) if bar else None
    bar.close() if bar else None
    results[RANDOM] = random_row(full, params)
    for r in runs:
        if r.get("status") == "ok":
            r["metrics"] = results[r["detector"]].get("_per_kpi", {}).get(r["kpi_id"], {})
    for res in results.values():
        res.pop("_per_kpi", None)
    chosen = champion(results, params, full)
    report = {
        "summary": results,
        **chosen,
        "runs": runs,
        "label_free": label_free,
        "command": command,
        "hardware": hardware(),
        "protocol": protocol,
        "data": {"train": train, "test": test, "kpis": len(kpis), "points": int(len(full)),
                 "test_points": int((full["split"] == "test").sum()),
                 "anomalous_test_points": int(full.loc[full["split"] == "test", LABEL].sum())
                 if has_labels(full) else None},
        **settings(params),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(out / "results.json", report)
    write_text_atomic(out / "results.md", markdown(report))
    return report


def rescore(base: Params, sources: list[Path], out: Path, command: str = "", label_free: bool = False) -> dict:
    """Recompute finished benchmarks' summaries from their saved scores, with today's calibration and
    threshold settings (``-S evaluate...``): no ingest, no training. Several runs on the same data
    (e.g. detectors added later) are combined into one table. Writes ``out/results.{json,md}``.

    ``label_free``: the train and validation labels are removed (in memory) before the figures, as
    ``run(label_free=True)`` removes them after the windows step. An unsupervised detector never saw a
    label in training, so its saved scores are the ones a label-free run computes; a supervised one
    learnt from the labels and is skipped, as a label-free run skips it."""
    sources, out = [Path(s) for s in sources], Path(out)
    befores = [json.loads((s / "results.json").read_text()) for s in sources]
    first = befores[0]
    for source, before in zip(sources[1:], befores[1:]):
        if (before["data"], before["protocol"]) != (first["data"], first["protocol"]):
            raise ParamsError(f"{source}: not the same data and protocol as {sources[0]}; cannot combine")
    data, protocol = first["data"], first["protocol"]
    params = bench_params(base, data["train"], data["test"], sources[0], protocol)
    started = time.perf_counter()
    full = load_splits(Path(params.paths.windows))
    if label_free and LABEL in full.columns:
        full[LABEL] = full[LABEL].astype("float64").where(~full["split"].isin(["train", "val"]).to_numpy())
    results, runs = {}, []
    for source, before in zip(sources, befores):
        for name, row in before["summary"].items():
            if name == RANDOM:
                continue
            if label_free and registry.spec(name).supervised:
                results[name] = summarise(name, {"status": "skipped", "reason": "supervised: needs the train "
                                                 "labels, removed by --label-free"}, full, params)
                continue
            kpis = {r["kpi_id"]: r for r in before["runs"] if r["detector"] == name and r.get("kpi_id") is not None}
            runs += [r for r in before["runs"] if r["detector"] == name]
            outcome = {"status": row["status"], "reason": row.get("reason"), "train_s": row.get("train_s"),
                       "peak_rss_mb": row.get("peak_rss_mb"), "score_points_per_s": row.get("score_points_per_s"),
                       "kpis": kpis, "scores": str(source / "work" / "scores" / f"{name}.npy")}
            results[name] = summarise(name, outcome, full, params)
    results[RANDOM] = random_row(full, params)
    for res in results.values():
        res.pop("_per_kpi", None)
    report = {**first, "summary": results, **champion(results, params, full), "runs": runs, "command": command,
              "label_free": label_free or first.get("label_free", False),
              "rescored_from": [{"dir": str(s), "command": b["command"], "hardware": b["hardware"],
                                 "wall_s": b["wall_s"]} for s, b in zip(sources, befores)],
              **settings(params), "wall_s": round(time.perf_counter() - started, 1)}
    write_json_atomic(out / "results.json", report)
    write_text_atomic(out / "results.md", markdown(report))
    return report


def summarise(name: str, outcome: dict, full: pd.DataFrame, params: Params) -> dict:
    if outcome.get("status") != "ok":
        return {"status": outcome.get("status"), "reason": outcome.get("reason"),
                **{m: None for m in SUMMARY_METRICS}, **{f"{m}_raw": None for m in RAW_METRICS},
                **{key: None for key in CHAMPION_COLUMNS},
                "val_champion_low": None, "val_champion_high": None, "val_alarms_per_kpi_day": None,
                "test_alarms_per_kpi_day": None,
                "train_s": outcome.get("train_s"), "score_points_per_s": None,
                "peak_rss_mb": outcome.get("peak_rss_mb")}
    scores = np.load(outcome["scores"])
    ok_kpis = [k for k, r in outcome["kpis"].items() if r["status"] == "ok"]
    keep = full[KPI_ID].astype(str).isin(ok_kpis).to_numpy()
    row = scored_row(name, full[keep].reset_index(drop=True), scores[keep], params)
    row.update({"status": "ok", "train_s": outcome["train_s"],
                "score_points_per_s": outcome["score_points_per_s"], "peak_rss_mb": outcome["peak_rss_mb"],
                "kpis_failed": len(outcome["kpis"]) - len(ok_kpis)})
    return row


def random_row(full: pd.DataFrame, params: Params) -> dict:
    """The ``random`` row: uniform random scores through the same calibration and threshold rule."""
    scores = np.random.default_rng(params.train.seed).random(len(full))
    return {**scored_row(RANDOM, full, scores, params), "status": "ok", "train_s": 0.0,
            "score_points_per_s": None, "peak_rss_mb": None}


def champion(results: dict, params: Params, full: pd.DataFrame) -> dict:
    """The champion, as the evaluate stage chooses it (:func:`pipeline.eval.selection.choose_champion`: the
    default detector on the label-free path, a challenger only beyond the noise), how it fared against the
    best on test, and the labelled events of each split. Drops the bootstrap draws from ``results``."""
    events = {split: label_events(full[(full["split"] == split).to_numpy()], params.evaluate.champion_metric)
              for split in ("val", "test")}
    selection = choose_champion(results, params.evaluate, events["val"], params.mlflow.min_improvement)
    strip_draws(results)
    best = selection["champion"]
    return {"best_on_val": best, "selection": selection, "events": events,
            "transfer": champion_transfer(best, {n: r.get("test_champion") for n, r in results.items()})}


def settings(params: Params) -> dict:
    """How scores became alarms in a report, and how the champion is picked: the threshold rule, the
    calibrations, the champion metric and its validation folds."""
    ev = params.evaluate
    return {"threshold": dict(ev.threshold), "calibration": dict(ev.calibration),
            "calibration_by_detector": dict(ev.calibration_by_detector),
            "champion_metric": ev.champion_metric, "champion_folds": ev.champion_folds,
            "alarm_budget": ev.alarm_budget, "default_detector": ev.default_detector, "min_events": ev.min_events,
            "bootstrap_draws": ev.bootstrap_draws, "bootstrap_level": ev.bootstrap_level}


def scored_row(name: str, full: pd.DataFrame, scores: np.ndarray, params: Params) -> dict:
    """The summary metrics with the configured calibration, plus the headline ones uncalibrated."""
    is_nab = params.data.train.startswith("nab:")
    res, _ = evaluate_scores(name, full, scores, params)
    raw_threshold = NAB_RAW_THRESHOLD if params.evaluate.threshold == NAB_THRESHOLD else None
    uncalibrated, _ = evaluate_scores(name, full, scores, params, calibration=NO_CALIBRATION,
                                               threshold_rule=raw_threshold, folds=1)
    raw = _metrics_row(uncalibrated, is_nab)
    champion = res["champion_metric"]
    bounds = champion.get("interval") or (None, None)
    return {**_metrics_row(res, is_nab), **{f"{m}_raw": raw[m] for m in RAW_METRICS},
            **{key: champion.get(source) for key, source in CHAMPION_COLUMNS.items()}, "champion_metric": champion,
            "val_champion_low": bounds[0], "val_champion_high": bounds[1],
            "val_alarms_per_kpi_day": res["alarms"]["val"], "test_alarms_per_kpi_day": res["alarms"]["test"],
            "threshold_method": res["threshold"]["method"], "_per_kpi": res.get("per_kpi", {})}


def _metrics_row(res: dict, is_nab: bool) -> dict:
    test = res.get("test") or {}
    row = {m: test.get(m) for m in SUMMARY_METRICS}
    if not is_nab:  # NAB's probation and normalisation are NAB's conventions
        row["nab_standard"] = row["nab_standard_oracle"] = None
    return row


def _in_child(name: str, params: Params, causal: bool, score_dir: Path) -> dict:
    # An executor, not a multiprocessing.Pool: a Pool waits forever for a worker that was killed (the
    # kernel's OOM killer, a kill -9), an executor raises BrokenProcessPool and the run goes on.
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        try:
            return pool.submit(_train_and_score, name, params.as_dict(), causal, str(score_dir)).result()
        except Exception as exc:  # the child raised outside its own handler, or died
            return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}


def _train_and_score(name: str, raw_params: dict, causal: bool, score_dir: str) -> dict:
    """In a child process: fit one detector, then score each KPI's whole series."""
    params = parse_params(raw_params, source="bench")
    runtime.apply(params, "train")  # a process of its own: its entry point; before fit_detector loads torch
    from pipeline.stages.train import fit_detector

    full = load_splits(Path(params.paths.windows))
    train = full[full["split"] == "train"].drop(columns="split")
    val = full[full["split"] == "val"].drop(columns="split")
    t0 = time.perf_counter()
    try:
        detector, report = fit_detector(name, params, train, val if len(val) else None, progress=False)
    except Exception as exc:
        return {"status": "failed", "reason": f"fit: {type(exc).__name__}: {exc}",
                "train_s": round(time.perf_counter() - t0, 2), "peak_rss_mb": _peak_rss_mb(),
                "trace": traceback.format_exc(limit=3)}
    if detector is None:
        return {"status": "skipped", "reason": report.get("reason"), "train_s": None, "peak_rss_mb": _peak_rss_mb()}
    train_s = time.perf_counter() - t0
    scores = np.full(len(full), np.nan)
    kpis, scored_points, score_s = {}, 0, 0.0
    frame = full.drop(columns="split")
    for kpi, rows in frame.groupby(KPI_ID, sort=False, observed=True).indices.items():
        t1 = time.perf_counter()
        try:
            part = frame.iloc[rows]
            s = detector.score(part, causal=True) if causal else detector.score(part)
            if not np.isfinite(s).all():
                raise ValueError("non-finite scores")
            scores[rows] = s
            kpis[str(kpi)] = {"status": "ok", "score_s": round(time.perf_counter() - t1, 3)}
            scored_points += len(rows)
        except Exception as exc:
            kpis[str(kpi)] = {"status": "failed", "reason": f"score: {type(exc).__name__}: {exc}"}
        score_s += time.perf_counter() - t1
    path = Path(score_dir) / f"{name}.npy"
    np.save(path, scores)
    return {"status": "ok", "train_s": round(train_s, 2), "kpis": kpis, "scores": str(path),
            "score_points_per_s": round(scored_points / score_s) if score_s else None,
            "peak_rss_mb": _peak_rss_mb(), "device": report.get("device")}


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def hardware() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), {gpu}, Python {platform.python_version()}")


def markdown(report: dict) -> str:
    cols = ["aiops_f1", "rpa_f1", "point_f1", "vus_pr", "auc_pr", "auc_roc", "nab_standard",
            "point_adjusted_f1", "aiops_f1_oracle", "nab_standard_oracle", *(f"{m}_raw" for m in RAW_METRICS),
            "val_alarms_per_kpi_day", "test_alarms_per_kpi_day", "train_s", "score_points_per_s", "peak_rss_mb",
            "status"]
    nab = report["data"]["train"].startswith("nab:")
    # NAB's score means nothing elsewhere; on NAB, the uncalibrated aiops_f1 adds nothing to read.
    irrelevant = ("aiops_f1_raw", "aiops_f1_oracle_raw") if nab else ("nab_standard", "nab_standard_oracle",
                                                                      "nab_standard_raw", "nab_standard_oracle_raw")
    cols = [c for c in cols if c not in irrelevant]
    metric = report.get("champion_metric", "aiops_f1")
    # The validation figures beside the champion metric's test column (or first, with their own test column).
    at = cols.index(metric) + 1 if metric in cols else 0
    cols[at:at] = [c for c in CHAMPION_COLUMNS if c != "test_champion" or metric not in cols]
    cols.insert(cols.index("val_champion") + 1, "val_interval")
    folds = report.get("champion_folds", 1)
    labels = {"val_champion": f"val {metric}" + (f" (mean of {folds} folds)" if folds > 1 else ""),
              "val_interval": f"{report.get('bootstrap_level', 0.9):.0%} interval",
              "val_alarms_per_kpi_day": "val alarms/KPI/day", "test_alarms_per_kpi_day": "test alarms/KPI/day",
              "val_champion_fold_std": "val fold std", "test_champion": f"test {metric}",
              "val_test_gap": "val → test gap"}
    lines = [f"`{report['command']}`", "",
             *(f"Scores from `{r['command']}` ({r['hardware']}; {r['wall_s']} s)." for r in report.get("rescored_from", [])),
             *([""] if report.get("rescored_from") else []),
             f"Protocol: {report['protocol']}; data: {report['data']}; calibration: {report.get('calibration')} "
             f"(by detector: {report.get('calibration_by_detector') or 'none'}); "
             f"threshold: {report['threshold']}; "
             f"hardware: {report['hardware']}; wall time {report['wall_s']} s.", "",
             "| detector | " + " | ".join(labels.get(c, c) for c in cols) + " |", "|---|" + "---:|" * len(cols)]
    headline = "nab_standard_oracle" if nab else "aiops_f1"
    summary = report["summary"]
    refs = [r for r in REFERENCES if (summary.get(r) or {}).get(headline) is not None]
    lines[-2] += " " + " | ".join([f"{headline} − {r}" for r in refs] + ["beats every reference"]) + " |"
    lines[-1] += "---:|" * (len(refs) + 1)
    for name, row in summary.items():
        cells = [_margin(row.get(c), 0.0) if c == "val_test_gap" else _interval_cell(row) if c == "val_interval"
                 else _cell(row.get(c)) for c in cols]
        value = row.get(headline)
        margins = [_margin(value, summary[r][headline]) for r in refs]
        beats = ("–" if value is None or name in (*refs, RANDOM) or not refs
                 else "yes" if all(value > summary[r][headline] for r in refs) else "no")
        lines.append(f"| {name} | " + " | ".join([*cells, *margins, beats]) + " |")
    events = report.get("events")
    if events:
        lines += ["", f"Labelled events: validation {events['val']}, test {events['test']}"
                  + (" (train and validation labels removed: --label-free)" if report.get("label_free") else "")
                  + f". Alarm budget {report.get('alarm_budget')} alarm points per KPI per day."]
    if (report.get("selection") or {}).get("reason"):
        lines += ["", f"Champion: **{report['best_on_val']}**. {report['selection']['reason']}"]
    if "transfer" in report:  # the check: is the validation choice within reach of the test-best?
        lines += ["", transfer_line(report["transfer"], metric)]
    failed = [r for r in report["runs"] if r.get("status") not in ("ok", None)]
    if failed:
        lines += ["", f"{len(failed)} (detector, KPI) runs did not finish:", ""]
        lines += [f"- {r['detector']} / {r['kpi_id']}: {r['status']}: {r.get('reason')}" for r in failed[:20]]
    return "\n".join(lines) + "\n"


def _interval_cell(row: dict) -> str:
    low, high = row.get("val_champion_low"), row.get("val_champion_high")
    return "–" if low is None or high is None else f"[{low:.3f}, {high:.3f}]"


def _margin(value, reference) -> str:
    return "–" if value is None or reference is None else f"{value - reference:+.3f}"


def _cell(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="detector", file=sys.stderr)
