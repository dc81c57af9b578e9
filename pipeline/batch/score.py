"""Batch scoring: a date range of KPI data, scored by a registered model (the champion by default).

    read [start - score.context, end) from the input source
      → validate (the pipeline's GX suites; failing rows are quarantined with their reason)
      → place on each KPI's trained grid (rows that cannot sit on it are quarantined too)
      → score with the model (``models:/kpiguard@champion`` unless told otherwise)
      → keep [start, end) → one partition per day

The output is a Hive-partitioned Parquet dataset with one schema, read whole by
``pd.read_parquet(output)``, pyarrow or any ``**/*.parquet`` reader: ``<output>/date=YYYY-MM-DD/``
holds ``scores.parquet`` (``kpi_id, timestamp, value, expected, expected_low, expected_high, raw_score, score,
threshold, is_anomaly``: the expected value and band are in the KPI's units, NaN where unknown) and
``_meta.json`` (model, input, counts, quarantine by rule, rows snapped to the grid, KPIs whose
sampling interval changed, and the guards of :mod:`pipeline.batch.guards`: ``training_range``, ``alarm_check``,
``untrained_kpis``; not a data file). The rows that failed validation or cannot sit on their KPI's trained grid,
with rule and reason, go to a sibling dataset, ``<score.quarantine_output or output_quarantine>/date=YYYY-MM-DD/
quarantine.parquet``. Locally both partition directories are written, then each swapped in by one
atomic exchange (:mod:`pipeline.io.outputs`); on S3 each file is one PUT. Either way a reader of a
dataset sees the old day or the new one, never a mix, and rerunning a day never duplicates rows.
"""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models.frame import KPI_ID, TIMESTAMP
from pipeline.batch import guards
from pipeline.data import prep, sources
from pipeline.data.checks import Validator
from pipeline.errors import DataError
from pipeline.eval import metrics as M
from pipeline.io import storage
from pipeline.io.outputs import replace_dirs_atomic, target_lock
from pipeline.params import Params
from pipeline.serving import tracking
from pipeline.serving.bundle import IS_ANOMALY, OUTPUT_COLUMNS, predict_with

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


def slot_range(slot: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    """What one scoring run covers: a day ``YYYY-MM-DD`` (``[D, D+1)``) or an interval ``START/END`` of
    ISO timestamps (UTC when naive; the sub-daily schedule's data interval), ``END`` exclusive."""
    if "/" not in str(slot):
        return day_range(slot)
    text = str(slot)
    try:
        start, end = (pd.Timestamp(part.strip()) for part in text.split("/", 1))
    except ValueError as exc:
        raise DataError(f"scoring interval {text!r}", "interval_format",
                        f"expected START/END as ISO timestamps, e.g. 2026-01-28T00:05:00Z/2026-01-28T00:10:00Z "
                        f"({exc})") from None
    start, end = (t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC") for t in (start, end))
    if end <= start:
        raise DataError(f"scoring interval {text!r}", "interval_format", "END must be after START")
    return start, end


def slot_text(start: pd.Timestamp, end: pd.Timestamp) -> str:
    """The slot of ``[start, end)``: the day when it is one whole UTC day, else ``START/END``."""
    start, end = pd.Timestamp(start).tz_convert("UTC"), pd.Timestamp(end).tz_convert("UTC")
    if start == start.normalize() and end == start + pd.Timedelta(days=1):
        return start.date().isoformat()
    return f"{start.isoformat()}/{end.isoformat()}"


def is_whole_days(start: pd.Timestamp, end: pd.Timestamp) -> bool:
    return start == start.normalize() and end == end.normalize()


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
    storage.check_output_dir(output)  # a bad --output is refused now, not after the whole scoring run
    loaded, info = model or load_model(params, model_uri)
    raw = read_input(params, input_spec, start, end)
    outcome = check(params, raw, input_spec, start, end)
    placed = place_rows(loaded, outcome.valid)
    facts = served_facts(params, loaded, info, placed.rows, input_spec, start, end)  # kpi_trained refuses here
    scored = score_rows(loaded, placed.rows, start, end, progress=progress)
    quarantine = pd.concat([outcome.quarantine, placed.quarantine], ignore_index=True)
    grid = {day.date().isoformat(): placed.summary(day, day + pd.Timedelta(days=1))
            for day in pd.date_range(start, end, freq="D", inclusive="left")}
    partitions = write_days(output, start, end, scored, quarantine, {"model": info, "input": input_spec},
                            params.score.quarantine_output, grid, params=params, facts=facts)
    guards.enforce_max_alarm_fraction(params, partitions, input_spec)  # after the writes: the evidence stays
    return {"model": info, "partitions": partitions,
            **alarm_spans(scored, params.score.incident_gap, info.get("detector"))}


def served_facts(params: Params, model, info: dict, rows: pd.DataFrame, input_spec: str, start: pd.Timestamp,
                 end: pd.Timestamp) -> guards.Served:
    """What the model knows about the KPIs of ``rows`` that have rows in ``[start, end)``; a DataError
    (rule ``kpi_trained``) for KPIs it has no statistics for, unless ``score.allow_untrained_kpis``."""
    facts = guards.served(model, rows[rows[KPI_ID].isin(pd.unique(rows.loc[_in(rows, start, end), KPI_ID]))])
    guards.require_trained(params, facts, info, input_spec)
    return facts


MAX_SPANS = 100  # spans (and incidents) listed in score's result (--json); the daily report has them all


def alarm_spans(scored: pd.DataFrame, gap: str, detector: str | None = None, limit: int = MAX_SPANS) -> dict:
    """The anomaly spans written (:func:`pipeline.batch.incidents.anomaly_spans`: runs of flagged points
    per KPI) and the incidents they make (:func:`pipeline.batch.incidents.incidents`, spans at most
    ``gap`` apart, found day by day as each day's report finds them, with the same ids), each most
    severe first: ``spans`` and ``incidents`` in all, the first ``limit`` of each listed."""
    from pipeline.batch import incidents as incidents_mod

    spans = incidents_mod.anomaly_spans(scored)
    days = scored[TIMESTAMP].dt.floor("D") if len(scored) else pd.Series(dtype=object)
    found = incidents_mod.most_severe_first(
        [i for _, rows in scored.groupby(days, sort=True) for i in incidents_mod.incidents(rows, gap, detector)])
    return {"spans": len(spans), "spans_listed": min(len(spans), limit),
            "anomaly_spans": incidents_mod.span_records(spans.head(limit)),
            "incidents": len(found), "incidents_listed": min(len(found), limit), "anomaly_incidents": found[:limit]}


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
               quarantine: pd.DataFrame, meta: dict, quarantine_output: str | None = None,
               grid: dict[str, dict] | None = None, params: Params | None = None,
               facts: guards.Served | None = None) -> list[dict]:
    """One partition per day of ``[start, end)`` in the scores dataset ``output`` and in the quarantine
    dataset (:func:`quarantine_dataset`), each replaced whole. ``grid``: per day (ISO date), its
    :meth:`pipeline.data.prep.Placement.summary` (rows snapped to the trained grid, KPIs whose interval
    changed), recorded with the day's quarantine counts by rule. ``facts``: what the model knows of the
    scored KPIs, for the day's guards (:func:`pipeline.batch.guards.day_checks`: ``training_range``,
    ``alarm_check``, ``untrained_kpis``), judged under ``params`` (default: the defaults)."""
    params, facts = params or Params(), facts or guards.Served()
    partitions = []
    for day in pd.date_range(start, end, freq="D", inclusive="left"):
        rows = scored[_in(scored, day, day + pd.Timedelta(days=1))].reset_index(drop=True)
        held = quarantine[_in(quarantine, day, day + pd.Timedelta(days=1))].reset_index(drop=True)
        by_rule = held["rule"].astype(str).value_counts().sort_index() if len(held) else pd.Series(dtype=int)
        day_meta = {"date": day.date().isoformat(), **meta, "rows": len(rows),
                    "kpis": int(rows[KPI_ID].nunique()), "anomalies": int(rows[IS_ANOMALY].sum()),
                    "quarantined": len(held), "quarantined_by_rule": {k: int(v) for k, v in by_rule.items()},
                    **prep.merge_summaries([(grid or {}).get(day.date().isoformat(), {})]),
                    **guards.day_checks(params, day, rows, rows[IS_ANOMALY], facts),
                    "scored_at": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")}
        partitions.append({**write_partition(output, day, rows, held, day_meta, quarantine_output), **day_meta})
    return partitions


def merge_slot(output: str, start: pd.Timestamp, end: pd.Timestamp, scored: pd.DataFrame,
               quarantine: pd.DataFrame, meta: dict, quarantine_output: str | None = None,
               grid: dict | None = None, params: Params | None = None,
               facts: guards.Served | None = None) -> list[dict]:
    """Write a sub-day slot ``[start, end)`` (the sub-daily schedule's data interval) into the partitions of
    the days it touches: each day's rows and quarantine inside the slot are replaced by these, the rest
    of the day is kept, and the partition is rewritten whole (:func:`write_days`), so rerunning a slot
    changes nothing and the day's counts and guards cover everything scored so far. ``_meta.json`` keeps
    one entry per slot in ``slots`` (its model version and grid summary, ``grid``), which the day's grid
    fields are merged from; ``model`` is the latest slot's. Writers of one day take turns (a lock
    beside the partition, local outputs); on S3 the scoring DAG runs one sub-daily run at a time."""
    params = params or Params()
    partitions = []
    for day in pd.date_range(start.normalize(), end, freq="D", inclusive="left"):
        lo, hi = max(start, day), min(end, day + pd.Timedelta(days=1))
        target = partition_path(output, day)
        lock = (contextlib.nullcontext() if storage.is_s3(target)
                else target_lock(Path(target).with_name(Path(target).name + ".merge")))
        with lock:
            old_rows, old_held, old_meta = _existing_day(output, day, quarantine_output)
            rows = pd.concat([old_rows[~_in(old_rows, lo, hi)], scored[_in(scored, lo, hi)]], ignore_index=True)
            held = pd.concat([old_held[~_in(old_held, lo, hi)], quarantine[_in(quarantine, lo, hi)]],
                             ignore_index=True)
            rows = rows.sort_values([KPI_ID, TIMESTAMP], kind="stable").reset_index(drop=True)
            slots = {**old_meta.get("slots", {}),
                     slot_text(lo, hi): {"model_version": (meta.get("model") or {}).get("version"), **(grid or {})}}
            day_grid = prep.merge_summaries([_grid_of_slots(slots)])
            partitions += write_days(output, day, day + pd.Timedelta(days=1), rows, held,
                                     {**meta, "slots": dict(sorted(slots.items()))}, quarantine_output,
                                     {day.date().isoformat(): day_grid}, params=params, facts=facts)
    return partitions


def _existing_day(output: str, day: pd.Timestamp, quarantine_output: str | None) -> tuple[pd.DataFrame, ...]:
    """(scores, quarantine, meta) of a day's partition as written, or empty ones."""
    date = day.date().isoformat()
    if not storage.exists(partition_file(output, date)):
        empty = SCORES_SCHEMA.empty_table().to_pandas()
        return empty, pd.DataFrame({TIMESTAMP: pd.Series(dtype="datetime64[ns, UTC]")}), {}
    rows = pd.read_parquet(io.BytesIO(storage.read_bytes(partition_file(output, date))))
    held_path = partition_file(output, date, QUARANTINED, quarantine_output)
    held = (pd.read_parquet(io.BytesIO(storage.read_bytes(held_path))) if storage.exists(held_path)
            else pd.DataFrame({TIMESTAMP: pd.Series(dtype="datetime64[ns, UTC]")}))
    return rows, held, read_meta(output, date)


def _grid_of_slots(slots: dict[str, dict]) -> dict:
    """One day's grid summary from its slots': rows snapped add up; a KPI whose interval changed is
    listed once, with the rows quarantined in all slots."""
    changed: dict[str, dict] = {}
    for entry in slots.values():
        for c in entry.get("interval_changed", []):
            seen = changed.setdefault(c["kpi_id"], {**c, "rows_quarantined": 0})
            seen["rows_quarantined"] += int(c.get("rows_quarantined", 0))
    return {"off_grid_snapped": sum(int(e.get("off_grid_snapped", 0)) for e in slots.values()),
            "interval_changed": list(changed.values())}


# -- the datasets ------------------------------------------------------------------------------
# Two Hive-partitioned Parquet datasets, one schema each, so that `pd.read_parquet(output)`, pyarrow's
# dataset reader and `**/*.parquet` readers (DuckDB, Spark) read either whole:
#   <output>/date=YYYY-MM-DD/scores.parquet                  SCORES_SCHEMA
#   <output>/date=YYYY-MM-DD/_meta.json                      the day's model and counts: not a data file
#                                                            (not *.parquet; `_` files are hidden to readers)
#   <quarantine>/date=YYYY-MM-DD/quarantine.parquet          the rows that failed validation, rule and reason
# <quarantine> is score.quarantine_output, or the sibling <output>_quarantine.
SCORES, QUARANTINED, META = "scores.parquet", "quarantine.parquet", "_meta.json"
SCORES_SCHEMA = pa.schema([(KPI_ID, pa.string()), (TIMESTAMP, pa.timestamp("ns", tz="UTC")),
                           *((c, pa.float64()) for c in OUTPUT_COLUMNS[2:-1]), (IS_ANOMALY, pa.bool_())])


def quarantine_dataset(output: str, configured: str | None = None) -> str:
    """Where the quarantine dataset of the scores dataset ``output`` lives: ``configured``
    (``score.quarantine_output``) or the sibling ``<output>_quarantine``."""
    return configured or str(output).rstrip("/") + "_quarantine"


def partition_path(output: str, day: pd.Timestamp) -> str:
    return storage.join(output, f"date={pd.Timestamp(day).date().isoformat()}")


def write_partition(output: str, day: pd.Timestamp, rows: pd.DataFrame, held: pd.DataFrame, meta: dict,
                    quarantine_output: str | None = None) -> dict:
    """Replace the day's partition of both datasets: ``rows`` (and ``meta``) in ``output``, ``held`` in the
    quarantine dataset."""
    target = partition_path(output, day)
    held_target = partition_path(quarantine_dataset(output, quarantine_output), day)
    scores = {SCORES: _parquet(rows, SCORES_SCHEMA), META: (json.dumps(meta, indent=2, default=str) + "\n").encode()}
    quarantined = {QUARANTINED: _parquet(held)}
    if storage.is_s3(target) or storage.is_s3(held_target):
        # S3 has no rename, and a reader of a dataset lists its files: each partition holds one data file,
        # replaced by one PUT (atomic), so a reader sees the old day or the new one, never both or a mix.
        # The quarantine goes first and _meta.json last: a _meta.json describes files already in place.
        for where, blobs in ((held_target, quarantined), (target, scores)):
            for name, data in blobs.items():
                storage.write_bytes(storage.join(where, name), data)
        _delete_others(held_target, quarantined)
        _delete_others(target, scores)
        return {"path": target, "quarantine_path": held_target}

    def write(blobs: dict[str, bytes]):
        def to(tmp: Path) -> None:
            for name, data in blobs.items():
                (tmp / name).write_bytes(data)
        return to

    # Both written before either is swapped in, each swap one atomic exchange; writers of a day take turns.
    replace_dirs_atomic([(Path(target), write(scores)), (Path(held_target), write(quarantined))])
    return {"path": target, "quarantine_path": held_target}


def _delete_others(target: str, keep: dict[str, bytes]) -> None:
    """Delete every other object of an S3 partition: what an earlier layout left there (``run=<id>/``
    prefixes, the ``_partition.json`` pointer, a quarantine file among the scores), which a reader of
    the dataset would otherwise list."""
    kept = {storage.join(target, name) for name in keep}
    storage.s3_delete([p for p in storage.s3_objects(target) if p not in kept])


def partition_file(output: str, date: str, name: str = SCORES, quarantine_output: str | None = None) -> str:
    """Where a day's file is: ``scores.parquet`` and ``_meta.json`` in the scores dataset,
    ``quarantine.parquet`` in the quarantine dataset."""
    dataset = quarantine_dataset(output, quarantine_output) if name == QUARANTINED else output
    return storage.join(partition_path(dataset, pd.Timestamp(date)), name)


def read_partition(output: str, date: str) -> pd.DataFrame:
    """One day of the scores dataset."""
    return storage.read_table(partition_file(output, date))


def read_meta(output: str, date: str) -> dict:
    """One day's ``_meta.json``: the model, the input, the counts, quarantine by rule, grid changes."""
    return json.loads(storage.read_bytes(partition_file(output, date, META)))


def _parquet(df: pd.DataFrame, schema: pa.Schema | None = None) -> bytes:
    """Parquet bytes of ``df``; with ``schema``, exactly its columns and types, so every partition of the
    dataset has one schema (an empty day too)."""
    if schema is not None and list(df.columns) != schema.names:
        raise ValueError(f"columns {list(df.columns)} are not the dataset's {schema.names}")
    buf = io.BytesIO()
    table = pa.Table.from_pandas(df, preserve_index=False)
    pq.write_table(table if schema is None else table.cast(schema), buf)
    return buf.getvalue()


def _in(frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    ts = frame[TIMESTAMP]
    return (ts >= start) & (ts < end)
