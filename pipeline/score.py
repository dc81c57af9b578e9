"""Batch scoring: a date range of KPI data, scored by a registered model (the champion by default).

    read [start - score.context, end) from the input source
      → validate (the pipeline's GX suites; failing rows are quarantined with their reason)
      → score with the model (``models:/kpiguard@champion`` unless told otherwise)
      → keep [start, end) → one partition per day

A partition is ``<output>/date=YYYY-MM-DD/`` with ``scores.parquet`` (``kpi_id, timestamp, value,
score, threshold, is_anomaly``), ``quarantine.parquet`` (that day's rows that failed validation,
with rule and reason) and ``_meta.json`` (model, counts). Locally the partition directory is
replaced in one rename; on S3 each object is one PUT. Rerunning a day replaces its partition, so
rows are never duplicated.
"""
from __future__ import annotations

import datetime
import io
import json
import logging
import re
from pathlib import Path

import pandas as pd

from models.frame import KPI_ID, TIMESTAMP
from pipeline import metrics as M
from pipeline import sources, storage, tracking
from pipeline.contract import DataError
from pipeline.outputs import replace_dir_atomic
from pipeline.params import Params
from pipeline.serving import IS_ANOMALY, predict_with
from pipeline.validate import Validator

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

    The model is loaded by :func:`pipeline.model_store.load_version`: only its bundle, with kpiguard's
    own code, after checking its stored code is kpiguard's; nothing stored with the version is executed.
    """
    from pipeline import model_store

    client = tracking.connect(params.mlflow)
    info = describe_model(client, model_uri)
    return model_store.load_version(client, info["model"], info["version"]), info


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
        model_uri: str, model=None) -> dict:
    """Score ``[start, end)`` and write one partition per day. ``model``: (loaded model, info), preloaded."""
    loaded, info = model or load_model(params, model_uri)
    raw = read_input(params, input_spec, start, end)
    outcome = check(params, raw, input_spec, start, end)
    scored = score_rows(loaded, outcome.valid, start, end)
    return {"model": info, "partitions": write_days(output, start, end, scored, outcome.quarantine,
                                                    {"model": info, "input": input_spec})}


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


def score_rows(model, valid: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    scored = predict_with(model, valid)
    return scored[_in(scored, start, end)].reset_index(drop=True)


def write_days(output: str, start: pd.Timestamp, end: pd.Timestamp, scored: pd.DataFrame,
               quarantine: pd.DataFrame, meta: dict) -> list[dict]:
    """One partition per day of ``[start, end)``, each replaced whole."""
    partitions = []
    for day in pd.date_range(start, end, freq="D", inclusive="left"):
        rows = scored[_in(scored, day, day + pd.Timedelta(days=1))].reset_index(drop=True)
        held = quarantine[_in(quarantine, day, day + pd.Timedelta(days=1))].reset_index(drop=True)
        day_meta = {"date": day.date().isoformat(), **meta, "rows": len(rows),
                    "kpis": int(rows[KPI_ID].nunique()), "anomalies": int(rows[IS_ANOMALY].sum()),
                    "quarantined": len(held), "scored_at": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")}
        partitions.append({**write_partition(output, day, rows, held, day_meta), **day_meta})
    return partitions


def partition_path(output: str, day: pd.Timestamp) -> str:
    return storage.join(output, f"date={day.date().isoformat()}")


def write_partition(output: str, day: pd.Timestamp, rows: pd.DataFrame, held: pd.DataFrame, meta: dict) -> dict:
    target = partition_path(output, day)
    blobs = {"scores.parquet": _parquet(rows), "quarantine.parquet": _parquet(held),
             "_meta.json": (json.dumps(meta, indent=2, default=str) + "\n").encode()}
    if storage.is_s3(target):
        for name, data in blobs.items():  # _meta.json last: it marks a complete partition
            storage.write_bytes_atomic(storage.join(target, name), data)
    else:
        def write(tmp: Path) -> None:
            for name, data in blobs.items():
                (tmp / name).write_bytes(data)

        replace_dir_atomic(Path(target), write)
    return {"path": target}


def read_partition(output: str, date: str) -> pd.DataFrame:
    return storage.read_table(storage.join(partition_path(output, pd.Timestamp(date)), "scores.parquet"))


def _parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def _in(frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    ts = frame[TIMESTAMP]
    return (ts >= start) & (ts < end)
