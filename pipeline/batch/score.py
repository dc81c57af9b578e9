"""Batch scoring: a date range of KPI data, scored by a registered model (the champion by default).

    read [start - score.context, end) from the input source
      → validate (the pipeline's GX suites; failing rows are quarantined with their reason)
      → place on each KPI's trained grid (rows that cannot sit on it are quarantined too)
      → score with the model (``models:/kpiguard@champion`` unless told otherwise)
      → keep [start, end) → one partition per day

A partition is ``<output>/date=YYYY-MM-DD/`` with ``scores.parquet`` (``kpi_id, timestamp, value,
score, threshold, is_anomaly``), ``quarantine.parquet`` (that day's rows that failed validation,
or that cannot sit on their KPI's trained grid, with rule and reason) and ``_meta.json`` (model,
counts, quarantine by rule, rows snapped to the grid, KPIs whose sampling interval changed). Locally
the partition directory is replaced in one atomic exchange (:mod:`pipeline.io.outputs`); on S3 the
files go to a new ``run=<time>-<id>/`` prefix and one PUT of ``_partition.json`` switches readers to it (read with
:func:`read_partition` / :func:`partition_file`). Either way a reader sees the old partition or the
new one, never a mix, and rerunning a day never duplicates rows.
"""
from __future__ import annotations

import datetime
import io
import json
import logging
import re
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from models.frame import KPI_ID, TIMESTAMP
from pipeline.data import prep, sources
from pipeline.data.checks import Validator
from pipeline.errors import DataError
from pipeline.eval import metrics as M
from pipeline.io import storage
from pipeline.io.outputs import replace_dir_atomic
from pipeline.params import Params
from pipeline.serving import tracking
from pipeline.serving.bundle import IS_ANOMALY, predict_with

log = logging.getLogger(__name__)

VALIDATION_METRICS = (*M.METRICS, "alarm_rate")
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


def day_range(date: str | None = None, start: str | None = None, end: str | None = None
              ) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``--date D`` is ``[D, D+1)``; ``--start/--end`` are whole days, ``end`` exclusive."""
    if date is not None:
        start_ts = _day(date, "--date")
        return start_ts, start_ts + pd.Timedelta(days=1)
    if start is None or end is None:
        raise DataError("kpiguard score", "date_range", "give --date, or both --start and --end")
    start_ts, end_ts = _day(start, "--start"), _day(end, "--end")
    if end_ts <= start_ts:
        raise DataError("kpiguard score", "date_range", f"--end {end} must be after --start {start}")
    return start_ts, end_ts


def _day(text, option: str) -> pd.Timestamp:
    """A UTC day from ``YYYY-MM-DD`` (a Timestamp or date passes through); DataError otherwise."""
    if not isinstance(text, str):
        ts = pd.Timestamp(text)
        return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).normalize()
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text.strip()):
            raise ValueError("not YYYY-MM-DD")
        return pd.Timestamp(datetime.date.fromisoformat(text.strip()), tz="UTC")
    except ValueError as exc:
        raise DataError(f"kpiguard score {option}", "date_format",
                        f"{text!r} is not a valid day; expected YYYY-MM-DD, e.g. 2026-01-28 ({exc})") from None


def load_model(params: Params, model_uri: str):
    """(model, description of the model version) for a ``models:/name@alias`` or ``models:/name/N`` URI.

    The model is loaded by :func:`pipeline.serving.store.load_version`: only its bundle, with kpiguard's
    own code, after checking its stored code is kpiguard's; nothing stored with the version is executed.
    """
    from pipeline.serving import store

    client = tracking.connect(params.mlflow)
    info = describe_model(client, model_uri)
    return store.load_version(client, info["model"], info["version"]), info


def describe_model(client, model_uri: str) -> dict:
    """Name, version, detector and validation metrics of the version a URI points to."""
    from mlflow.exceptions import MlflowException

    m = MODEL_URI.match(model_uri)
    if m is None:
        raise tracking.TrackingError(tracking.tracking_uri(), f"{model_uri!r} is not a registry URI; expected "
                                     "models:/<name>@<alias> or models:/<name>/<version>", rule="model_uri")
    try:
        mv = (client.get_model_version_by_alias(m["name"], m["alias"]) if m["alias"]
              else client.get_model_version(m["name"], m["version"]))
    except MlflowException:
        raise tracking.TrackingError(tracking.tracking_uri(), f"{model_uri} does not exist: run the pipeline "
                                     "(make run) or promote a version", rule="model_exists") from None
    run = client.get_run(mv.run_id)
    return {"uri": model_uri, "model": mv.name, "version": str(mv.version), "run_id": mv.run_id,
            "detector": (mv.tags or {}).get("kpiguard.detector") or run.data.tags.get("kpiguard.detector"),
            "run_url": tracking.run_url(client, run),
            "metrics": {k[len("val_"):]: v for k, v in run.data.metrics.items()
                        if k.startswith("val_") and k[len("val_"):] in VALIDATION_METRICS}}


def run(params: Params, input_spec: str, start: pd.Timestamp, end: pd.Timestamp, output: str,
        model_uri: str, model=None, progress: bool = False) -> dict:
    """Score ``[start, end)`` and write one partition per day. ``model``: (loaded model, info), preloaded;
    ``progress``: a bar over groups of KPIs (for a terminal)."""
    loaded, info = model or load_model(params, model_uri)
    raw = read_input(params, input_spec, start, end)
    outcome = check(params, raw, input_spec, start, end)
    placed = place_rows(loaded, outcome.valid)
    scored = score_rows(loaded, placed.rows, start, end, progress=progress)
    quarantine = pd.concat([outcome.quarantine, placed.quarantine], ignore_index=True)
    grid = {day.date().isoformat(): placed.summary(day, day + pd.Timedelta(days=1))
            for day in pd.date_range(start, end, freq="D", inclusive="left")}
    return {"model": info, "partitions": write_days(output, start, end, scored, quarantine,
                                                    {"model": info, "input": input_spec}, grid)}


def read_input(params: Params, input_spec: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """The input rows of ``[start - score.context, end)``; at least one row must fall in ``[start, end)``."""
    raw = sources.read_source(input_spec, params, start - pd.Timedelta(params.score.context), end)
    if not _in(raw, start, end).any():
        raise DataError(input_spec, "rows_in_range", f"no rows between {start} and {end} (exclusive)")
    return raw


def check(params: Params, raw: pd.DataFrame, input_spec: str, start: pd.Timestamp, end: pd.Timestamp):
    """GX validation; fails when more than ``score.max_quarantined_fraction`` of the scored rows fail."""
    outcome = Validator(params, min_points=params.windows.length).validate(raw, source=input_spec)
    quarantine, scored_rows = outcome.quarantine, int(_in(raw, start, end).sum())
    bad = int(_in(quarantine, start, end).sum())
    fraction = bad / scored_rows
    if fraction > params.score.max_quarantined_fraction:
        rules = quarantine.loc[_in(quarantine, start, end), "rule"].value_counts().to_dict()
        failed = [r for r in outcome.results if not r.get("success", True)]
        raise DataError(input_spec, "max_quarantined_fraction",
                        f"{bad} of {scored_rows} rows between {start.date()} and {end.date()} failed validation "
                        f"({fraction:.1%} > {params.score.max_quarantined_fraction:.1%}); by rule: {rules}; "
                        f"failed expectations: {json.dumps(failed, default=str)}")
    return outcome


def place_rows(model, valid: pd.DataFrame) -> prep.Placement:
    """Valid rows against the grid each KPI was trained on (the bundle's norm_stats.json): those that
    cannot sit on it (a KPI that now arrives more finely) go to quarantine, rule ``on_trained_grid``,
    rather than vanish in the regular grid (:func:`pipeline.data.prep.place_on_grid`)."""
    bundle = getattr(model, "bundle", None)
    return prep.place_on_grid(valid, bundle.norm if bundle is not None else {})


PROGRESS_GROUPS = 20  # KPI groups a progress bar advances over


def score_rows(model, valid: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp,
               progress: bool = False) -> pd.DataFrame:
    if not progress or valid.empty:
        scored = predict_with(model, valid)
    else:
        # Groups of whole KPIs, as the scoring DAG's shards are: each KPI is scored with all its rows.
        from tqdm.auto import tqdm

        kpis = pd.unique(valid[KPI_ID])
        groups = [g for g in np.array_split(kpis, min(PROGRESS_GROUPS, len(kpis))) if len(g)]
        parts = [predict_with(model, valid[valid[KPI_ID].isin(g)])
                 for g in tqdm(groups, desc="score", unit="KPI group", leave=False, file=sys.stderr)]
        scored = pd.concat(parts, ignore_index=True)
    return scored[_in(scored, start, end)].reset_index(drop=True)


def write_days(output: str, start: pd.Timestamp, end: pd.Timestamp, scored: pd.DataFrame,
               quarantine: pd.DataFrame, meta: dict, grid: dict[str, dict] | None = None) -> list[dict]:
    """One partition per day of ``[start, end)``, each replaced whole. ``grid``: per day (ISO date), its
    :meth:`pipeline.data.prep.Placement.summary` (rows snapped to the trained grid, KPIs whose interval
    changed), recorded with the day's quarantine counts by rule."""
    partitions = []
    for day in pd.date_range(start, end, freq="D", inclusive="left"):
        rows = scored[_in(scored, day, day + pd.Timedelta(days=1))].reset_index(drop=True)
        held = quarantine[_in(quarantine, day, day + pd.Timedelta(days=1))].reset_index(drop=True)
        by_rule = held["rule"].astype(str).value_counts().sort_index() if len(held) else pd.Series(dtype=int)
        day_meta = {"date": day.date().isoformat(), **meta, "rows": len(rows),
                    "kpis": int(rows[KPI_ID].nunique()), "anomalies": int(rows[IS_ANOMALY].sum()),
                    "quarantined": len(held), "quarantined_by_rule": {k: int(v) for k, v in by_rule.items()},
                    **prep.merge_summaries([(grid or {}).get(day.date().isoformat(), {})]),
                    "scored_at": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")}
        partitions.append({**write_partition(output, day, rows, held, day_meta), **day_meta})
    return partitions


def partition_path(output: str, day: pd.Timestamp) -> str:
    return storage.join(output, f"date={day.date().isoformat()}")


def write_partition(output: str, day: pd.Timestamp, rows: pd.DataFrame, held: pd.DataFrame, meta: dict) -> dict:
    target = partition_path(output, day)
    blobs = {"scores.parquet": _parquet(rows), "quarantine.parquet": _parquet(held),
             "_meta.json": (json.dumps(meta, indent=2, default=str) + "\n").encode()}
    if storage.is_s3(target):
        return {"path": target, "run": _write_s3_partition(target, blobs)}

    def write(tmp: Path) -> None:
        for name, data in blobs.items():
            (tmp / name).write_bytes(data)

    replace_dir_atomic(Path(target), write)  # one atomic exchange; writers of a day take turns
    return {"path": target}


# -- S3 partitions -----------------------------------------------------------------------------
# S3 has no rename: PUTting the files one by one over the old ones would let a reader (or a crash)
# mix two runs. So each write goes to its own prefix, <partition>/run=<UTC time>-<random>/, and then
# one small PUT of <partition>/_partition.json (atomic on S3) switches readers to it. The run the
# pointer named before is kept for readers that have just read it; older runs, and runs of writers
# that died before their switch, are deleted by the next write.
POINTER = "_partition.json"
RUN_PREFIX = "run="


def _write_s3_partition(target: str, blobs: dict[str, bytes]) -> str:
    previous = (_read_pointer(target) or {}).get("run")
    run = f"{RUN_PREFIX}{pd.Timestamp.now(tz='UTC'):%Y%m%dT%H%M%S%f}Z-{uuid.uuid4().hex[:8]}"
    for name, data in blobs.items():  # _meta.json last: a run with it is complete
        storage.write_bytes(storage.join(target, run, name), data)
    storage.write_bytes(storage.join(target, POINTER), (json.dumps(
        {"run": run, "files": list(blobs), "written_at": pd.Timestamp.now(tz="UTC").isoformat()}, indent=2)
        + "\n").encode())
    keep = {run, previous}
    stale = [p for p in storage.s3_objects(target) if p != storage.join(target, POINTER)
             and _run_of(target, p) not in keep and (_run_of(target, p) or "") < run]
    storage.s3_delete(stale)  # superseded runs, killed writers' runs, files of the old flat layout
    return run


def _run_of(target: str, path: str) -> str | None:
    rel = path[len(target.rstrip("/")) + 1:]
    first = rel.split("/", 1)[0]
    return first if first.startswith(RUN_PREFIX) and "/" in rel else None


def _read_pointer(target: str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(storage.join(target, POINTER)))
    except storage.StorageError as exc:
        if exc.rule == "file_exists":
            return None
        raise
    except ValueError:
        return None  # a damaged pointer: the newest complete run is used


def partition_file(output: str, date: str, name: str = "scores.parquet") -> str:
    """Where a partition's file is now: locally the directory; on S3 the run its pointer names (or,
    when that run is gone or there is no pointer, the newest complete run, then the flat layout)."""
    target = partition_path(output, pd.Timestamp(date))
    if not storage.is_s3(target):
        return storage.join(target, name)
    pointer = _read_pointer(target)
    objects = set(storage.s3_objects(target))
    if pointer and storage.join(target, pointer["run"], name) in objects:
        return storage.join(target, pointer["run"], name)
    complete = sorted({_run_of(target, p) for p in objects if p.endswith("/_meta.json") and _run_of(target, p)},
                      reverse=True)
    for run in complete:
        if storage.join(target, run, name) in objects:
            return storage.join(target, run, name)
    return storage.join(target, name)


def read_partition(output: str, date: str) -> pd.DataFrame:
    return storage.read_table(partition_file(output, date))


def read_partition_meta(output: str, date: str) -> dict:
    """A partition's ``_meta.json``: model, counts, quarantine by rule, grid changes."""
    return json.loads(storage.read_bytes(partition_file(output, date, "_meta.json")))


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _in(frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    ts = frame[TIMESTAMP]
    return (ts >= start) & (ts < end)
