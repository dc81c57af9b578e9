"""The scoring job, one step per function, for the ``kpiguard_score`` DAG (or by hand).

    ingest(slot) → validate(slot) → score_shard(slot, i, n) for i < n → write(slot) → report(slot)
      → publish(slot), alert(slot)

A slot is what one run scores: a day ``YYYY-MM-DD`` (the ``@daily`` schedule) or an interval
``START/END`` (a sub-daily ``score.schedule`` such as ``*/5 * * * *``: its data interval,
:func:`pipeline.batch.score.slot_range`). A day's slot replaces its partition whole; an interval's
replaces its own rows in the partition of its day (:func:`pipeline.batch.score.merge_slot`), so the
day's partition and report grow through the day and a rerun of an interval changes nothing.

Steps hand over files in the slot's staging directory, ``<score.staging>/<slot key>/``, which every worker
sees (a shared volume in a deployment). Each step writes its own files atomically and replaces
what a previous attempt wrote, so a step can be retried alone and a rerun of a day never
duplicates anything. KPIs are sharded by a stable hash of ``kpi_id``, so ``n`` workers score one
day in parallel and a KPI always lands in the same shard.
"""
from __future__ import annotations

import io
import json
import logging
import re
import shutil
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from models.frame import KPI_ID, TIMESTAMP
from pipeline.batch import alerts, guards
from pipeline.batch import incidents as incidents_mod
from pipeline.batch import report as report_mod
from pipeline.batch import score
from pipeline.data import prep
from pipeline.data import review_mutes as mutes_mod
from pipeline.errors import DataError, ReviewError
from pipeline.io import storage
from pipeline.io.outputs import replace_dir_atomic, write_json_atomic
from pipeline.params import Params

log = logging.getLogger(__name__)

RAW, VALID, QUARANTINE, VALIDATION, MODEL = "raw.parquet", "valid.parquet", "quarantine.parquet", "validation.json", "model.json"
# Beside each shard's scores: its rows that cannot sit on their KPI's trained grid, the summary (rows
# snapped, KPIs whose interval changed) that the day's partition metadata records, and what the model
# knows of its KPIs (training range, intervals, untrained KPIs: pipeline.batch.guards.Served).
GRID_QUARANTINE, GRID_SUMMARY, SERVED = ".grid-quarantine.parquet", ".grid.json", ".served.json"


def staging(params: Params, slot: str) -> Path:
    return Path(params.score.staging) / slot_key(slot)


def slot_key(slot: str) -> str:
    """The slot's staging directory name: the day, or ``<start>_<end>`` (``YYYY-MM-DDTHHMMSSZ``)."""
    start, end = score.slot_range(slot)
    if score.is_whole_days(start, end) and end - start == pd.Timedelta(days=1):
        return start.date().isoformat()
    return f"{start:%Y-%m-%dT%H%M%SZ}_{end:%Y-%m-%dT%H%M%SZ}"


def days_of(slot: str) -> list[str]:
    """The UTC days a slot touches (one, unless an interval crosses midnight)."""
    start, end = score.slot_range(slot)
    return [d.date().isoformat() for d in pd.date_range(start.normalize(), end, freq="D", inclusive="left")]


# An interval's staging directory is needed until its run is over (retries included); a day of them
# (288 at */5) is kept, older ones are removed by the next interval's ingest.
STAGING_KEEP = pd.Timedelta(days=1)
_INTERVAL_KEY = re.compile(r"\d{4}-\d{2}-\d{2}T\d{6}Z_(\d{4}-\d{2}-\d{2}T\d{6}Z)")


def ingest(params: Params, slot: str, input_spec: str | None = None) -> dict:
    """The slot's rows plus ``score.context`` of history, from ``score.input`` (or an allowed ``input_spec``)."""
    start, end = score.slot_range(slot)
    spec = check_input(params, input_spec) if input_spec else params.score.input
    raw = score.read_input(params, spec, start, end)
    def write(tmp: Path) -> None:  # a new ingest replaces everything downstream of it for that slot
        raw.to_parquet(tmp / RAW, index=False)
        write_json_atomic(tmp / "input.json", {"input": spec})

    replace_dir_atomic(staging(params, slot), write)
    if slot_key(slot) != days_of(slot)[0]:
        _prune_interval_staging(params, start - STAGING_KEEP)
    return {"slot": score.slot_text(start, end), "input": spec, "rows": len(raw), "kpis": int(raw[KPI_ID].nunique())}


def _prune_interval_staging(params: Params, before: pd.Timestamp) -> None:
    root = Path(params.score.staging)
    for folder in root.glob("*_*") if root.is_dir() else ():
        m = _INTERVAL_KEY.fullmatch(folder.name)
        if m and folder.is_dir() and pd.Timestamp(m[1]) < before:
            shutil.rmtree(folder, ignore_errors=True)


def check_input(params: Params, spec: str) -> str:
    """``spec`` if ``score.input`` or ``score.allowed_inputs`` permits it; DataError otherwise.

    Whoever can trigger the DAG sets its ``input`` conf, and workers read what it names with their
    own credentials: it must not reach any path or URL, only what the deployment configured.
    """
    allowed = [params.score.input, *params.score.allowed_inputs]
    for entry in allowed:
        if spec == entry:
            return spec
        rest = spec[len(entry):]
        if entry.endswith("/") and spec.startswith(entry) and not _escapes(rest):
            return spec
    raise DataError(f"kpiguard_score input {spec!r}", "allowed_input",
                    f"not score.input and not under score.allowed_inputs ({allowed}); add it to "
                    "score.allowed_inputs in params.yaml to allow it (below an allowed prefix a name may "
                    "use only ASCII letters, digits and _.=+@-, no segment starting with '.')")


# Below an allowed prefix a name may use only these: whatever else a server or a file system might
# reinterpret (``..;``, percent-escapes, backslashes, U+2025 and other dot look-alikes) is refused.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.=+@-]+")


def _escapes(rest: str) -> bool:
    """True when a path below an allowed prefix could climb out of it or be read as another name."""
    parts = rest.split("/")
    return rest.startswith("/") or any(not _SAFE_NAME.fullmatch(part) or part.startswith(".") for part in parts)


def validate(params: Params, slot: str) -> dict:
    """GX validation of the staged rows; raises DataError (the task fails) past the quarantine limit."""
    start, end = score.slot_range(slot)
    folder = staging(params, slot)
    spec = json.loads((folder / "input.json").read_text())["input"]
    raw = pd.read_parquet(folder / RAW)
    outcome = score.check(params, raw, spec, start, end)  # the DataError names the failed expectations
    storage.write_parquet(outcome.valid, folder / VALID)
    storage.write_parquet(outcome.quarantine, folder / QUARANTINE)
    summary = outcome.summary()
    write_json_atomic(folder / VALIDATION, summary)
    log.info("Great Expectations results: %s", json.dumps(summary, indent=1, default=str))
    return {k: summary[k] for k in ("rows_in", "rows_valid", "rows_quarantined", "kpis_valid")}


def shard_of(kpi_ids: pd.Series, shards: int) -> np.ndarray:
    """Stable shard number of each KPI (crc32 of its id), the same on every worker and every day."""
    codes = {k: zlib.crc32(str(k).encode()) % shards for k in pd.unique(kpi_ids)}
    return kpi_ids.map(codes).to_numpy()


def score_shard(params: Params, slot: str, shard: int, shards: int, model_uri: str | None = None) -> dict:
    """Score the KPIs of one shard with the model (``score.model_uri``, the champion, by default)."""
    start, end = score.slot_range(slot)
    folder = staging(params, slot)
    valid = pd.read_parquet(folder / VALID)
    mine = valid[shard_of(valid[KPI_ID].astype(str), shards) == shard]
    model, info = score.load_model(params, model_uri or params.score.model_uri)  # never runs stored code
    placed = score.place_rows(model, mine)  # rows off the KPI's trained grid: this shard's quarantine
    spec = json.loads((folder / "input.json").read_text())["input"]
    facts = score.served_facts(params, model, info, placed.rows, spec, start, end)  # kpi_trained fails the task
    scored = score.score_rows(model, placed.rows, start, end)  # an empty shard: no rows, the scores' columns
    stem = folder / "shards" / f"{shard:04d}-of-{shards:04d}"
    storage.write_parquet(placed.quarantine, stem.with_name(stem.name + GRID_QUARANTINE))
    write_json_atomic(stem.with_name(stem.name + GRID_SUMMARY), placed.summary(start, end))
    write_json_atomic(stem.with_name(stem.name + SERVED), facts.to_dict())
    storage.write_parquet(scored, stem.with_name(stem.name + ".parquet"))  # last: the shard is complete
    write_json_atomic(folder / MODEL, info)
    return {"shard": shard, "kpis": int(mine[KPI_ID].nunique()), "rows": len(scored),
            "quarantined": len(placed.quarantine)}


def write(params: Params, slot: str, shards: int, output: str | None = None) -> dict:
    """Join the shards into the day's partition (a day's slot: replaced whole; an interval: its rows
    replaced in the day's partition); then, past ``score.max_alarm_fraction``, fail (DataError, rule
    ``max_alarm_fraction``) with the partition written."""
    start, end = score.slot_range(slot)
    folder = staging(params, slot)
    parts = [folder / "shards" / f"{i:04d}-of-{shards:04d}.parquet" for i in range(shards)]
    absent = [q.name for p in parts for q in (p, p.with_name(p.stem + GRID_QUARANTINE),
                                              p.with_name(p.stem + GRID_SUMMARY), p.with_name(p.stem + SERVED))
              if not q.exists()]
    if absent:
        raise DataError(str(folder), "all_shards_scored", f"missing shard outputs: {absent}")
    scored = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    scored = scored.sort_values([KPI_ID, "timestamp"], kind="stable").reset_index(drop=True)
    info = json.loads((folder / MODEL).read_text())
    spec = json.loads((folder / "input.json").read_text())["input"]
    held = [pd.read_parquet(folder / QUARANTINE), *(pd.read_parquet(p.with_name(p.stem + GRID_QUARANTINE))
                                                    for p in parts)]
    grid = prep.merge_summaries([json.loads(p.with_name(p.stem + GRID_SUMMARY).read_text()) for p in parts])
    facts = guards.Served.merge([guards.Served.from_dict(json.loads(p.with_name(p.stem + SERVED).read_text()))
                                 for p in parts])
    held = pd.concat(held, ignore_index=True)
    if score.is_whole_days(start, end):
        partitions = score.write_days(output or params.score.output, start, end, scored, held,
                                      {"model": info, "input": spec}, params.score.quarantine_output,
                                      {day: grid for day in days_of(slot)}, params=params, facts=facts)
    else:
        partitions = score.merge_slot(output or params.score.output, start, end, scored, held,
                                      {"model": info, "input": spec}, params.score.quarantine_output, grid,
                                      params=params, facts=facts)
    guards.enforce_max_alarm_fraction(params, partitions, spec)  # after the write: the evidence stays
    return partitions[0] if len(partitions) == 1 else {"partitions": partitions}


REPORT_STEP_KEYS = ("day", "kpis_scored", "incident_count", "anomalies", "anomalous_kpis", "quarantined",
                    "interval_changed", "html", "json")


def report(params: Params, slot: str, output: str | None = None) -> dict:
    """The DAG's report step: :func:`build_day_report` of the slot's day (so far, for an interval),
    returning its counts and paths (the XCom)."""
    summaries = [build_day_report(params, day, output) for day in days_of(slot)]
    steps = [{k: s[k] for k in REPORT_STEP_KEYS} for s in summaries]
    return steps[0] if len(steps) == 1 else {"reports": steps}


def build_day_report(params: Params, day: str, output: str | None = None) -> dict:
    """The daily anomaly report (HTML and JSON in ``score.reports``) from the day's written partition of
    ``output`` (default ``score.output``), and its full summary with both paths: the DAG's report step
    and ``kpiguard report --date D``. The model it names is the one the partition's ``_meta.json``
    records (what scored it); no staging file is needed, so a day scored by ``kpiguard score`` reports
    the same way. A missing partition is a DataError (rule ``partition_exists``)."""
    day = _iso(day)
    scored, meta = read_day(params, day, output)
    rules, unavailable = mute_rules(params)
    return report_mod.build_report(scored, day, meta.get("model"), params.score.reports, partition=meta,
                                   incident_gap=params.score.incident_gap, mutes=rules,
                                   mutes_unavailable=unavailable)


def mute_rules(params: Params) -> tuple[list[dict], str | None]:
    """(the review store's active mute rules, None) or, where the store cannot be read, ([], why): a
    report and its alerts then go out unmuted, since a store that is down must not silence anything."""
    try:
        return mutes_mod.read_active_rules(params.reviews.store), None
    except ReviewError as exc:
        log.warning("mute rules not applied: %s", exc)
        return [], str(exc)


def unmuted(params: Params, found: list[dict]) -> tuple[list[dict], dict]:
    """(the incidents of ``found`` to alert on, what the mute rules held back): ``muted``, their ids."""
    rules, unavailable = mute_rules(params)
    kept, muted = mutes_mod.apply_mutes(found, rules)
    return kept, {"muted": [i["id"] for i in muted],
                  **({"mutes_unavailable": unavailable} if unavailable else {})}


def read_day(params: Params, day: str, output: str | None = None) -> tuple[pd.DataFrame, dict]:
    """(scored rows, ``_meta.json``) of the day's written partition of ``output`` (default ``score.output``);
    a missing partition is a DataError (rule ``partition_exists``)."""
    output, day = output or params.score.output, _iso(day)
    path = score.partition_file(output, day)
    if not storage.exists(path):
        raise DataError(path, "partition_exists", f"no scored partition for {day} under {output}; run "
                        f"`kpiguard score --date {day}` first (or give --output where it was written)")
    # Not score.read_partition: a day whose every row was quarantined has a scores file without rows, and
    # its report (nothing scored, the quarantine by rule) is what the on-call engineer needs to see.
    scored = pd.read_parquet(io.BytesIO(storage.read_bytes(path)))
    return scored, score.read_meta(output, day)


def day_incidents(params: Params, day: str, output: str | None = None) -> list[dict]:
    """The incidents of the day's written partition, as its report lists them (same ids, same detector)."""
    scored, meta = read_day(params, day, output)
    scored = scored.assign(**{TIMESTAMP: pd.to_datetime(scored[TIMESTAMP], utc=True)})
    return incidents_mod.incidents(scored, params.score.incident_gap, (meta.get("model") or {}).get("detector"))


def push_day(params: Params, day: str, now: pd.Timestamp | None = None, *, output: str | None = None) -> dict:
    """:func:`pipeline.batch.alerts.push` the incidents of the day's written partition of ``output``
    (default ``score.output``), the ones its report lists, with the day's ``alerts.report_url``; those
    the review store's mute rules mute are not pushed (``muted``: their ids)."""
    day = pd.Timestamp(day).date().isoformat()
    found, held = unmuted(params, day_incidents(params, day, output))
    url = params.alerts.report_url.format(day=day) if params.alerts.report_url else None
    return {"day": day, **alerts.push(params, found, now=pd.Timestamp.now(tz="UTC") if now is None else now,
                                      report_url=url), **held}


def window_incidents(params: Params, start: pd.Timestamp, end: pd.Timestamp, output: str | None = None) -> list[dict]:
    """The incidents of the scored rows of ``[start, end)`` (the written partitions of the days it
    touches; a day not written yet adds nothing): what a sub-daily run pushes, so that an incident
    that began in an earlier interval, or the day before, keeps its start and is updated."""
    frames, detector = [], None
    for day in pd.date_range(start.normalize(), end, freq="D", inclusive="left"):
        try:
            scored, meta = read_day(params, day.date().isoformat(), output)
        except DataError:
            continue
        stamps = pd.to_datetime(scored[TIMESTAMP], utc=True)
        frames.append(scored.assign(**{TIMESTAMP: stamps})[(stamps >= start) & (stamps < end)])
        detector = (meta.get("model") or {}).get("detector") or detector
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return incidents_mod.incidents(rows, params.score.incident_gap, detector) if len(rows) else []


def alert(params: Params, slot: str, output: str | None = None) -> dict:
    """The DAG's alert step: push the slot's incidents to the sinks of ``alerts:`` (none: nothing to do).

    A day's slot pushes that day's incidents (:func:`push_day`); an interval pushes
    those of the ``score.alert_lookback`` before its end, judged at its end. The ledger sends each
    incident once and updates a continuing one; a sink that stays down raises AlertError (the task
    fails) after recording what was delivered, and the next run resends the rest."""
    if not alerts.enabled(params):
        return {"slot": slot, "sinks": {}, "skipped": "no sink configured (alerts: in params.yaml)"}
    start, end = score.slot_range(slot)
    if score.is_whole_days(start, end):
        pushed = [push_day(params, day, output=output) for day in days_of(slot)]
        return pushed[0] if len(pushed) == 1 else {"days": pushed}
    found, held = unmuted(params, window_incidents(params, end - pd.Timedelta(params.score.alert_lookback), end, output))
    # report_url None: each incident links the report of its start day (alerts.report_url)
    return {"slot": score.slot_text(start, end), **alerts.push(params, found, now=end), **held}


def publish(params: Params, slot: str, bucket: str | None = None) -> dict:
    """Copy the slot's day report to ``s3://<bucket>/daily/`` when a bucket is configured (it is already
    in reports/)."""
    bucket = bucket or params.score.report_bucket
    local = {f"{day}.{ext}": Path(params.score.reports) / f"{day}.{ext}"
             for day in days_of(slot) for ext in ("html", "json")}
    if not bucket:
        return {"published": [str(p) for p in local.values()]}
    targets = []
    for name, path in local.items():
        target = f"s3://{bucket}/daily/{name}"
        storage.write_bytes(target, path.read_bytes())
        targets.append(target)
    return {"published": [*map(str, local.values()), *targets]}


def _iso(day) -> str:
    return pd.Timestamp(day).date().isoformat()
