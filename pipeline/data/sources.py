"""Source specs (``data.train`` / ``data.test`` in params.yaml) and their readers.

=================  ==============================================================================
spec               reads
=================  ==============================================================================
``synthetic:``     the embedded generator (:mod:`pipeline.data.synthetic`, section ``synthetic:``)
``nab:DIR``        the Numenta Anomaly Benchmark layout: ``DIR/data/<category>/<name>.csv`` and
                   ``DIR/labels/combined_windows.json``; kpi_id ``<category>/<name>``
``aiops:FILE``     the 2018 AIOps challenge CSV (``timestamp`` unix s, ``value``, ``label``,
                   ``KPI ID``), optionally ``.gz``
``csv:PATH``       generic CSV / CSV.gz / Parquet, a file or a directory of them, laid out as
                   ``data.csv`` says. ``layout: long``: one row per point, column names from
                   ``data.csv`` (``kpi_id: null``: the file name is the KPI id). ``layout: wide``:
                   a timestamp column and one column per KPI, named by its header (Grafana's
                   "Series joined by time"); no labels; an empty cell is no point. Naive
                   timestamps are local times in ``data.csv.timezone``.
``prometheus:URL`` ``URL?query=PROMQL``: Prometheus's ``/api/v1/query_range`` at ``data.prometheus.step``
                   over ``[start, end)`` (default: the last ``data.prometheus.range`` up to now), one
                   KPI per returned series (:func:`prometheus_kpi_id`); no labels. Everything after
                   ``query=`` is the PromQL (percent-escapes decoded, ``+`` kept as it is).
=================  ==============================================================================

DIR, FILE and PATH may be local, ``s3://bucket/prefix`` or (single files) ``http(s)://``.

Every reader returns the canonical frame (:mod:`pipeline.data.contract`) sorted by kpi_id, timestamp,
and raises :class:`~pipeline.data.contract.DataError` naming the file, the column and the rule. Rows
with NaN, inf or duplicate timestamps are kept: the validate stage quarantines them with a reason.
"""
from __future__ import annotations

import json
import logging
import os
import urllib.parse

import numpy as np
import pandas as pd

from models.frame import KPI_ID, LABEL, TIMESTAMP, VALUE
from pipeline.data import synthetic
from pipeline.data.contract import DTYPES, empty_frame, to_canonical, to_float, to_utc, utc_timestamp
from pipeline.errors import DataError
from pipeline.io import storage
from pipeline.params import CsvColumns, Params

log = logging.getLogger(__name__)

SCHEMES = ("synthetic", "nab", "aiops", "csv", "prometheus")
NAB_COLUMNS = (TIMESTAMP, VALUE)
AIOPS_COLUMNS = {"timestamp": TIMESTAMP, "value": VALUE, "label": LABEL, "KPI ID": KPI_ID}


def parse_spec(spec: str) -> tuple[str, str]:
    """``"csv:s3://b/p"`` -> ``("csv", "s3://b/p")``. Unknown scheme or missing argument: DataError."""
    if not isinstance(spec, str) or ":" not in spec:
        raise DataError(str(spec), "source_spec",
                        f"a source spec looks like scheme:ARG with scheme one of {', '.join(SCHEMES)}")
    scheme, arg = spec.split(":", 1)
    scheme, arg = scheme.strip().lower(), arg.strip()
    if scheme not in SCHEMES:
        raise DataError(spec, "source_spec",
                        f"unknown scheme {scheme!r}; known: " + ", ".join(f"{s}:" for s in SCHEMES))
    if scheme == "synthetic" and arg:
        raise DataError(spec, "source_spec", "synthetic: takes no argument (settings live in the "
                                             "synthetic: section of params.yaml)")
    if scheme != "synthetic" and not arg:
        raise DataError(spec, "source_spec", f"{scheme}: needs a path, e.g. {scheme}:/data/file")
    return scheme, arg


def read_source(spec: str, params: Params, start=None, end=None) -> pd.DataFrame:
    """Read a source spec into the canonical frame, optionally restricted to ``[start, end)``.

    For ``synthetic:`` ``start``/``end`` set the generated range; for the others they filter.
    """
    scheme, arg = parse_spec(spec)
    if scheme == "synthetic":
        frame = to_canonical(synthetic.generate(params.synthetic, start, end), spec)
    elif scheme == "prometheus":
        frame = read_prometheus(arg, params, start, end)  # asks for [start, end) only
    else:
        reader = {"nab": read_nab, "aiops": read_aiops, "csv": read_csv}[scheme]
        frame = reader(arg, params) if scheme == "csv" else reader(arg)
        frame = _between(frame, start, end)
    return _sorted(frame)


# ---------------------------------------------------------------------------------------------
# readers


def read_nab(root: str) -> pd.DataFrame:
    """NAB layout under ``root``; points inside a labelled window (inclusive) get label 1."""
    data_dir = storage.join(root, "data")
    labels_path = storage.join(root, "labels", "combined_windows.json")
    windows = _nab_windows(labels_path)
    files = storage.list_files(data_dir, (".csv",))
    prefix = data_dir.rstrip("/") + "/"
    frames = []
    for path in files:
        rel = _relative(path, prefix)           # "<category>/<name>.csv"
        raw = storage.read_table(path)
        _require_columns(raw, NAB_COLUMNS, path)
        raw = pd.DataFrame({KPI_ID: rel[: -len(".csv")], TIMESTAMP: raw[TIMESTAMP], VALUE: raw[VALUE]})
        frame = to_canonical(raw, path)
        if rel not in windows:
            log.warning("%s: no entry in %s; all its points are labelled 0", path, labels_path)
        label = np.zeros(len(frame), dtype=np.int8)
        ts = frame[TIMESTAMP]
        for lo, hi in windows.get(rel, []):
            label[((ts >= lo) & (ts <= hi)).to_numpy()] = 1
        frame[LABEL] = label
        frames.append(frame)
    return _concat(frames)


def read_aiops(path: str) -> pd.DataFrame:
    """The 2018 AIOps challenge CSV (``KPI ID`` becomes ``kpi_id``)."""
    raw = storage.read_table(path, string_columns=("KPI ID",))
    _require_columns(raw, tuple(AIOPS_COLUMNS), path)
    raw = raw[list(AIOPS_COLUMNS)].rename(columns=AIOPS_COLUMNS)
    return to_canonical(raw, path)


def read_csv(path: str, params: Params) -> pd.DataFrame:
    """Generic CSV / CSV.gz / Parquet file or directory, laid out as ``data.csv`` says (long or wide).

    Naive timestamps are local times in ``data.csv.timezone`` (:func:`pipeline.data.contract.to_utc`).
    """
    cols = params.data.csv
    files = storage.list_files(path, storage.TABLE_SUFFIXES)
    if cols.layout == "wide":
        return _concat([_read_wide(f, cols) for f in files])
    mapping = {TIMESTAMP: cols.timestamp, VALUE: cols.value}
    if cols.kpi_id is not None:
        mapping = {KPI_ID: cols.kpi_id, **mapping}
    frames, stems = [], {}
    for f in files:
        raw = storage.read_table(f, string_columns=[cols.kpi_id] if cols.kpi_id else ())
        _require_columns(raw, tuple(mapping.values()), f, keys={v: f"data.csv.{k}" for k, v in mapping.items()})
        data = {canon: raw[src] for canon, src in mapping.items()}
        if cols.kpi_id is None:
            stem = storage.strip_suffix(storage.name_of(f))
            if stem in stems:
                raise DataError(f, "unique_kpi_ids",
                                f"data.csv.kpi_id is null, so the file name is the KPI id, but "
                                f"{stems[stem]} has the same name {stem!r}", column=KPI_ID)
            stems[stem] = f
            data[KPI_ID] = stem
        if cols.label is not None and cols.label in raw.columns:
            data[LABEL] = raw[cols.label]
        names = {**mapping, LABEL: cols.label or LABEL}
        frames.append(to_canonical(pd.DataFrame(data), f, cols.timezone, names=names))
    labelled = [LABEL in fr.columns for fr in frames]
    if any(labelled) and not all(labelled):
        missing = [f for f, has in zip(files, labelled) if not has]
        raise DataError(missing[0], "consistent_labels",
                        f"{sum(labelled)} of {len(files)} files have a '{cols.label}' column and "
                        f"{len(missing)} do not (e.g. this one); label all files or none",
                        column=cols.label)
    return _concat(frames)


def _read_wide(path: str, cols: CsvColumns) -> pd.DataFrame:
    """One wide file: a timestamp column and one column per KPI (Grafana's "Series joined by time").

    The KPI id is the column name (``data.csv.stem_prefix``: ``<file stem>/<column>``), so the same
    column in several files (daily exports) is one KPI. An empty cell is no point: it becomes no row.
    Wide files carry no labels.
    """
    raw = storage.read_table(path)
    ts_col = cols.timestamp
    _require_columns(raw, (ts_col,), path, keys={ts_col: "data.csv.timestamp"})
    header = [str(c) for c in raw.columns]
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(path, "unique_kpi_ids", f"the header repeats {repeated}: in the wide layout every "
                        "column is one KPI, named by its header; rename the duplicates", column=repeated[0])
    if cols.columns is not None:
        _require_columns(raw, tuple(cols.columns), path, keys={c: "data.csv.columns" for c in cols.columns})
        kpis = list(cols.columns)
    else:
        kpis = [c for c in header if c != ts_col]
        if cols.label is not None and cols.label in kpis:
            raise DataError(path, "wide_unlabelled",
                            f"wide files carry no labels, and every column but '{ts_col}' is a KPI, so "
                            f"'{cols.label}' would be read as one; write labelled data in the long layout, "
                            "or list the KPI columns in data.csv.columns", column=cols.label)
    if not kpis:
        raise DataError(path, "required_columns", f"no KPI column beside '{ts_col}': the wide layout needs "
                        f"one column per KPI; found {header}", column=ts_col)
    # Parsed once per file, as one series: a repeated local hour is resolved by the file's own order.
    stamps = to_utc(raw[ts_col], path, cols.timezone, column=ts_col).dt.tz_convert(None).to_numpy()  # UTC, naive
    prefix = storage.strip_suffix(storage.name_of(path)) + "/" if cols.stem_prefix else ""
    ids, times, values = [], [], []
    for name in kpis:
        v = to_float(raw[name], path, name).to_numpy()
        present = ~np.isnan(v)
        if not present.any():
            log.warning("%s: column %r has no value; KPI %r gets no point from this file", path, name,
                        prefix + name)
        ids.append(np.full(int(present.sum()), prefix + name, dtype=object))
        times.append(stamps[present])
        values.append(v[present])
    long = pd.DataFrame({KPI_ID: np.concatenate(ids), TIMESTAMP: np.concatenate(times),
                         VALUE: np.concatenate(values)})
    return to_canonical(long, path)


def read_prometheus(arg: str, params: Params, start=None, end=None) -> pd.DataFrame:
    """``URL?query=PROMQL`` through ``/api/v1/query_range``: one KPI per series, a point per step in
    ``[start, end)``; NaN samples and the steps a series has no sample at (gaps, stale series) are no row.

    The range is split into queries of at most ``data.prometheus.max_points_per_query`` steps (Prometheus
    refuses more than 11,000 points per series in one query); each is one bounded HTTP read
    (``storage:``). Errors name the URL, the query and Prometheus's own error text.
    """
    cfg = params.data.prometheus
    base, promql = _prometheus_target(arg)
    shown = f"prometheus:{storage.shown_url(base)} query {promql!r}"
    step = pd.Timedelta(cfg.step)
    stop = utc_timestamp(end if end is not None else cfg.end if cfg.end is not None else pd.Timestamp.now(tz="UTC"))
    first = utc_timestamp(start) if start is not None else (utc_timestamp(cfg.start) if cfg.start is not None else stop - pd.Timedelta(cfg.range))
    first, stop = first.ceil(step), stop  # steps at first, first + step, ... < stop
    if stop <= first:
        raise DataError(shown, "prometheus_range", f"empty range: start {first} is not before end {stop}")
    headers = {"Accept": "application/json"}
    if cfg.auth_header_env:
        value = os.environ.get(cfg.auth_header_env)
        if not value:
            raise DataError(shown, "prometheus_auth", f"data.prometheus.auth_header_env names {cfg.auth_header_env}, "
                            "which is not set in the environment (it holds the Authorization header value)")
        headers["Authorization"] = value
    per_query = cfg.max_points_per_query - 1  # the end of a query_range is inclusive
    series: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    chunk_start = first
    while chunk_start < stop:
        chunk_end = min(chunk_start + per_query * step, stop - pd.Timedelta(1, "ns"))
        chunk_end = chunk_start + ((chunk_end - chunk_start) // step) * step  # the last step before stop
        for labels, times, values in _prometheus_chunk(base, promql, chunk_start, chunk_end, step, headers, shown):
            kpi = prometheus_kpi_id(labels, cfg.kpi_labels)
            owner = series.setdefault(kpi, ([], [], labels))
            if owner[2] != labels:
                raise DataError(shown, "unique_kpi_ids", f"series {_series_text(owner[2])} and {_series_text(labels)} "
                                f"both get KPI id {kpi!r} from data.prometheus.kpi_labels = {cfg.kpi_labels}; add a "
                                "label that tells them apart, or aggregate them in the query", column=KPI_ID)
            owner[0].append(times)
            owner[1].append(values)
        chunk_start = chunk_end + step
    if not series:
        raise DataError(shown, "prometheus_no_series",
                        f"the query returned no series between {first.isoformat()} and {stop.isoformat()}; check "
                        "the metric name and label matchers (try the query in Prometheus's graph page) and the "
                        "range (data.prometheus.start / end / range)")
    frames = []
    for kpi, (times, values, _) in sorted(series.items()):
        t, v = np.concatenate(times), np.concatenate(values)
        present = ~np.isnan(v)  # a NaN sample is no point, as a step without a sample is
        frames.append(pd.DataFrame({KPI_ID: kpi, TIMESTAMP: pd.to_datetime(t[present], unit="s", utc=True),
                                    VALUE: v[present]}))
    return to_canonical(pd.concat(frames, ignore_index=True), shown)


def prometheus_kpi_id(labels: dict[str, str], kpi_labels: list[str] | None) -> str:
    """The KPI id of a series: with ``kpi_labels``, their values joined by ``/`` in that order (a missing
    label is empty), e.g. ``api/host-1``; without, the series as Prometheus writes it,
    ``name{a="x",b="y"}`` (labels sorted, values escaped as in its exposition format). Control
    characters are escaped, so an id is one printable line."""
    if kpi_labels:
        return "/".join(_printable(labels.get(name, "")) for name in kpi_labels)
    name = labels.get("__name__", "")
    rest = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(labels.items()) if k != "__name__")
    return _printable(f"{name}{{{rest}}}" if rest or not name else name)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _series_text(labels: dict[str, str]) -> str:
    return prometheus_kpi_id(labels, None)


def _prometheus_target(arg: str) -> tuple[str, str]:
    """``(base URL, PromQL)`` of ``URL?query=PROMQL``."""
    url, sep, rest = arg.partition("?")
    if not sep or not rest.startswith("query=") or not rest[len("query="):].strip():
        raise DataError(f"prometheus:{arg}", "source_spec",
                        "a Prometheus source looks like prometheus:http://host:9090?query=<PromQL>, e.g. "
                        "prometheus:http://127.0.0.1:9090?query=rate(http_requests_total[5m])")
    if not storage.is_http(url):
        raise DataError(f"prometheus:{arg}", "source_spec", f"{url!r} is not an http:// or https:// URL")
    return url.rstrip("/"), urllib.parse.unquote(rest[len("query="):]).strip()


def _prometheus_chunk(base: str, promql: str, first: pd.Timestamp, last: pd.Timestamp, step: pd.Timedelta,
                      headers: dict[str, str], shown: str):
    """(labels, unix seconds, values) of each series of one ``query_range`` call over ``[first, last]``."""
    query = urllib.parse.urlencode({"query": promql, "start": f"{first.timestamp():.3f}",
                                    "end": f"{last.timestamp():.3f}", "step": f"{step.total_seconds():g}"})
    try:
        body = storage.http_get(f"{base}/api/v1/query_range?{query}", headers, shown)
    except DataError as exc:
        raise DataError(shown, exc.rule, _prometheus_error(str(exc.detail))) from None
    try:
        answer = json.loads(body)
        if answer.get("status") != "success":
            raise DataError(shown, "prometheus_query", _prometheus_error(body.decode("utf-8", "replace")))
        data = answer["data"]
        if data.get("resultType") != "matrix":
            raise DataError(shown, "prometheus_query", f"the query gives a {data.get('resultType')}, not a range "
                            "vector of series; query an instant vector (e.g. a metric or rate(...))")
        for warning in answer.get("warnings") or []:
            log.warning("%s: Prometheus warns: %s", shown, warning)
        for item in data["result"]:
            pairs = np.asarray(item.get("values") or [], dtype=object).reshape(-1, 2)
            yield (dict(item.get("metric") or {}), pairs[:, 0].astype(float),
                   pd.to_numeric(pd.Series(pairs[:, 1], dtype=object), errors="coerce").to_numpy(float))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(shown, "prometheus_answer", f"not a Prometheus query_range answer ({exc}): "
                        f"{body[:200].decode('utf-8', 'replace')!r}") from None


def _prometheus_error(text: str) -> str:
    """Prometheus's own ``errorType: error`` out of an answer (or an error detail quoting one)."""
    start = text.find("{")
    try:
        answer = json.loads(text[start:]) if start >= 0 else None
    except ValueError:
        answer = None
    if isinstance(answer, dict) and answer.get("error"):
        prefix = text[:start].rstrip(": ")
        return f"{prefix + ': ' if prefix else ''}Prometheus says {answer.get('errorType', 'error')}: {answer['error']}"
    return text


# ---------------------------------------------------------------------------------------------
# helpers


def _nab_windows(path: str) -> dict[str, list[tuple[pd.Timestamp, pd.Timestamp]]]:
    try:
        raw = json.loads(storage.read_bytes(path))
    except json.JSONDecodeError as exc:
        raise DataError(path, "valid_json", str(exc)) from exc
    if not isinstance(raw, dict):
        raise DataError(path, "nab_labels", "expected a mapping {\"<category>/<name>.csv\": [[start, end], ...]}")
    out = {}
    for name, windows in raw.items():
        try:
            out[name] = [(pd.Timestamp(lo, tz="UTC"), pd.Timestamp(hi, tz="UTC")) for lo, hi in windows]
        except (TypeError, ValueError) as exc:
            raise DataError(path, "nab_labels", f"entry {name!r}: windows must be [[start, end], ...]: "
                                                f"{exc}") from exc
    return out


def _relative(path: str, prefix: str) -> str:
    path = path.replace("\\", "/")
    prefix = prefix.replace("\\", "/")
    return path[len(prefix):] if path.startswith(prefix) else storage.name_of(path)


def _require_columns(df: pd.DataFrame, expected: tuple[str, ...], path: str,
                     keys: dict[str, str] | None = None) -> None:
    missing = [c for c in expected if c not in df.columns]
    if missing:
        hint = ""
        if keys:
            hint = "; set " + ", ".join(f"{keys[c]}" for c in missing) + " in params.yaml to the right names"
        raise DataError(path, "required_columns",
                        f"missing {missing}; expected {list(expected)}, found {list(df.columns)}{hint}",
                        column=missing[0])


def _concat(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return empty_frame()
    out = pd.concat(frames, ignore_index=True)
    if LABEL in out.columns and out[LABEL].dtype != "int8" and out[LABEL].isin([0.0, 1.0]).all():
        out[LABEL] = out[LABEL].astype("int8")
    return out


def _between(frame: pd.DataFrame, start, end) -> pd.DataFrame:
    if start is None and end is None:
        return frame
    keep = np.ones(len(frame), dtype=bool)
    if start is not None:
        keep &= (frame[TIMESTAMP] >= utc_timestamp(start)).to_numpy()
    if end is not None:
        keep &= (frame[TIMESTAMP] < utc_timestamp(end)).to_numpy()
    return frame.loc[keep]


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    """Sort by kpi_id, timestamp (skipped when already in order) and set the contract's dtypes."""
    ids = frame[KPI_ID]
    if ids.dtype != DTYPES[KPI_ID]:
        frame = frame.assign(**{KPI_ID: ids.astype(DTYPES[KPI_ID])})
        ids = frame[KPI_ID]
    in_order = ids.is_monotonic_increasing
    if in_order and len(frame) > 1:
        id_arr = ids.to_numpy()
        ts = frame[TIMESTAMP].to_numpy(dtype="datetime64[ns]")   # no per-row Timestamp objects
        in_order = not ((id_arr[1:] == id_arr[:-1]) & (ts[1:] < ts[:-1])).any()
    if not in_order:
        frame = frame.sort_values([KPI_ID, TIMESTAMP], kind="stable")
    return frame.reset_index(drop=True)
