"""``kpiguard bench``: ingest → validate → windows → train → evaluate on any sources, outside DVC.

Protocols:

- **split** (default): the train source is split chronologically into train / val / test with the
  ``windows`` fractions; with ``--test`` the test source is scored whole and the train source is
  split into train and val only (the AIOps challenge protocol).
- **nab** (default for ``nab:`` sources without ``--test``): each series trains on its first 15%
  (NAB's probation period: the first 10% for training, the next 5% for fitting the threshold) and
  the remaining 85% is scored *causally* (the score at t uses data up to t only). ``nab_standard``
  is then NAB's score on everything after probation.

Each detector trains and scores in its own process (spawned), so one failure, or one memory blow-up,
doesn't stop the run, and peak memory is measured per detector. Scoring is per KPI, so a failure is
recorded per (detector, KPI) with its status, as Orion's benchmark does. The summary always has a
``random`` row (uniform random scores, same threshold rule) so metric inflation is visible.
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import platform
import resource
import shlex
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from models.frame import KPI_ID, LABEL, MISSING, has_labels
from pipeline import evaluate, ingest, threads, validate, windows
from pipeline.outputs import write_json_atomic, write_text_atomic
from pipeline.params import Params, parse_params

log = logging.getLogger(__name__)

SUMMARY_METRICS = ("aiops_f1", "aiops_f1_oracle", "rpa_f1", "point_f1", "vus_pr", "auc_pr", "auc_roc",
                   "nab_standard", "nab_standard_oracle", "point_adjusted_f1")
NAB_OVERRIDES = {"windows": {"train_fraction": 0.10, "val_fraction": 0.05},
                 "evaluate": {"nab_probation": 0, "threshold": {"method": "pot", "scope": "per_kpi"}}}


def bench_params(base: Params, train: str, test: str | None, out: Path, protocol: str) -> Params:
    raw = base.as_dict()
    raw["data"] = {**raw["data"], "train": train, "test": test}
    raw["paths"] = {k: str(out / "work" / Path(v)) for k, v in raw["paths"].items()}
    if protocol == "nab":
        for section, values in NAB_OVERRIDES.items():
            raw[section] = {**raw[section], **values}
    return parse_params(raw, source="bench")


def protocol_for(train: str, test: str | None, protocol: str) -> str:
    if protocol != "auto":
        return protocol
    return "nab" if train.startswith("nab:") and not test else "split"


def run(base: Params, train: str, test: str | None, detectors: list[str], out: Path,
        protocol: str = "auto", command: str = "", progress: bool = True) -> dict:
    out = Path(out)
    protocol = protocol_for(train, test, protocol)
    params = bench_params(base, train, test, out, protocol)
    p = params.paths
    started = time.perf_counter()
    ingest.run(params, Path(p.raw))
    validate.run(params, Path(p.raw), Path(p.validated), Path(p.quarantine), Path(p.validation_report))
    windows.run(params, Path(p.validated), Path(p.windows))
    full = evaluate.load_splits(Path(p.windows))
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
    rng_scores = np.random.default_rng(params.train.seed).random(len(full))
    results[evaluate.RANDOM] = {**_metrics_row(evaluate.evaluate_scores(evaluate.RANDOM, full, rng_scores, params),
                                               train.startswith("nab:")),
                                "status": "ok", "train_s": 0.0, "score_points_per_s": None, "peak_rss_mb": None}
    for r in runs:
        if r.get("status") == "ok":
            r["metrics"] = results[r["detector"]].get("_per_kpi", {}).get(r["kpi_id"], {})
    for res in results.values():
        res.pop("_per_kpi", None)
    report = {
        "summary": results,
        "runs": runs,
        "command": command,
        "hardware": hardware(),
        "protocol": protocol,
        "data": {"train": train, "test": test, "kpis": len(kpis), "points": int(len(full)),
                 "test_points": int((full["split"] == "test").sum()),
                 "anomalous_test_points": int(full.loc[full["split"] == "test", LABEL].sum())
                 if has_labels(full) else None},
        "threshold": dict(params.evaluate.threshold),
        "wall_s": round(time.perf_counter() - started, 1),
    }
    write_json_atomic(out / "results.json", report)
    write_text_atomic(out / "results.md", markdown(report))
    return report


def summarise(name: str, outcome: dict, full: pd.DataFrame, params: Params) -> dict:
    if outcome.get("status") != "ok":
        return {"status": outcome.get("status"), "reason": outcome.get("reason"),
                **{m: None for m in SUMMARY_METRICS}, "train_s": outcome.get("train_s"),
                "score_points_per_s": None, "peak_rss_mb": outcome.get("peak_rss_mb")}
    scores = np.load(outcome["scores"])
    ok_kpis = [k for k, r in outcome["kpis"].items() if r["status"] == "ok"]
    keep = full[KPI_ID].astype(str).isin(ok_kpis).to_numpy()
    res = evaluate.evaluate_scores(name, full[keep].reset_index(drop=True), scores[keep], params)
    row = _metrics_row(res, params.data.train.startswith("nab:"))
    row.update({"status": "ok", "train_s": outcome["train_s"],
                "score_points_per_s": outcome["score_points_per_s"], "peak_rss_mb": outcome["peak_rss_mb"],
                "kpis_failed": len(outcome["kpis"]) - len(ok_kpis), "_per_kpi": res.get("per_kpi", {})})
    return row


def _metrics_row(res: dict, is_nab: bool) -> dict:
    test = res.get("test") or {}
    row = {m: test.get(m) for m in SUMMARY_METRICS}
    if not is_nab:  # NAB's probation and normalisation are NAB's conventions
        row["nab_standard"] = row["nab_standard_oracle"] = None
    return row


def _in_child(name: str, params: Params, causal: bool, score_dir: Path) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        try:
            return pool.apply(_train_and_score, (name, params.as_dict(), causal, str(score_dir)))
        except Exception as exc:  # the child died (e.g. out of memory)
            return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}


def _train_and_score(name: str, raw_params: dict, causal: bool, score_dir: str) -> dict:
    """In a child process: fit one detector, then score each KPI's whole series."""
    params = parse_params(raw_params, source="bench")
    threads.configure(params.train.threads)  # before fit_detector's imports load torch
    from pipeline.train import fit_detector

    full = evaluate.load_splits(Path(params.paths.windows))
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
            "point_adjusted_f1", "aiops_f1_oracle", "nab_standard_oracle", "train_s", "score_points_per_s",
            "peak_rss_mb", "status"]
    lines = [f"`{report['command']}`", "",
             f"Protocol: {report['protocol']}; data: {report['data']}; threshold: {report['threshold']}; "
             f"hardware: {report['hardware']}; wall time {report['wall_s']} s.", "",
             "| detector | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, row in report["summary"].items():
        cells = [_cell(row.get(c)) for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    failed = [r for r in report["runs"] if r.get("status") not in ("ok", None)]
    if failed:
        lines += ["", f"{len(failed)} (detector, KPI) runs did not finish:", ""]
        lines += [f"- {r['detector']} / {r['kpi_id']}: {r['status']}: {r.get('reason')}" for r in failed[:20]]
    return "\n".join(lines) + "\n"


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


def command_line(argv: list[str]) -> str:
    return "kpiguard " + " ".join(shlex.quote(a) for a in argv)
