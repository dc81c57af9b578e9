"""The canonical KPI frame: the one data contract every source produces and every stage reads.

Long format, one row per (kpi_id, timestamp):

- ``kpi_id``: str
- ``timestamp``: timezone-aware UTC (``datetime64[ns, UTC]``)
- ``value``: float64
- ``label``: int8 in {0, 1}; the column may be absent for unlabelled data

Timestamps are parsed here and nowhere else (:func:`to_utc`): text or datetimes with a UTC offset keep
it, naive ones are local times of the source's zone (``data.csv.timezone`` for csv: sources, UTC for
the others), numeric epochs are UTC.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from models.frame import KPI_ID, LABEL, TIMESTAMP, VALUE
from pipeline.errors import DataError

CANONICAL_COLUMNS = (KPI_ID, TIMESTAMP, VALUE)
OPTIONAL_COLUMNS = (LABEL,)
DTYPES = {KPI_ID: "string", TIMESTAMP: "datetime64[ns, UTC]", VALUE: "float64", LABEL: "int8"}


def empty_frame(with_label: bool = True) -> pd.DataFrame:
    cols = [*CANONICAL_COLUMNS, *(OPTIONAL_COLUMNS if with_label else ())]
    return pd.DataFrame({c: pd.Series(dtype=DTYPES[c]) for c in cols})


def to_canonical(df: pd.DataFrame, source: str, timezone: str = "UTC",
                 names: dict[str, str] | None = None) -> pd.DataFrame:
    """Coerce a frame that already has the canonical column names to the canonical dtypes.

    Naive timestamps are local times in ``timezone`` (see :func:`to_utc`; each KPI's rows, in the
    order given, resolve a repeated hour when the clocks go back). ``names`` maps canonical column
    names to the source's own, for the messages. Raises :class:`DataError` naming the source and
    column when a required column is absent or a column cannot be parsed. Value problems that concern
    single rows (NaN, inf, duplicates, labels outside {0, 1}) are *not* raised here: the validate
    stage quarantines those rows with a reason.
    """
    missing = [c for c in CANONICAL_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(source, "required_columns", f"missing {missing}; found {list(df.columns)}",
                        column=missing[0])
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    # ``.array`` keeps the extension dtypes (and avoids millions of Python objects for timestamps).
    out[KPI_ID] = df[KPI_ID].astype("string").array
    names = {c: c for c in (*CANONICAL_COLUMNS, *OPTIONAL_COLUMNS)} | (names or {})
    out[TIMESTAMP] = to_utc(df[TIMESTAMP], source, timezone, groups=df[KPI_ID], column=names[TIMESTAMP]).array
    out[VALUE] = to_float(df[VALUE], source, names[VALUE]).array
    if LABEL in df.columns:
        # Kept as float here so that a bad label (NaN, 2, -1) reaches validation and quarantine.
        out[LABEL] = to_float(df[LABEL], source, names[LABEL]).array
        if out[LABEL].isin([0.0, 1.0]).all():
            out[LABEL] = out[LABEL].astype("int8")
    return out


def to_float(col: pd.Series, source: str, name: str) -> pd.Series:
    """A column as float64: numbers as they are; empty text, ``nan``, ``none`` and ``null`` as NaN.

    Any other text raises :class:`DataError` (rule ``numeric_values``) naming ``source`` and the
    column ``name`` with up to three of the offending values.
    """
    if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
        return col.astype("float64")
    converted = pd.to_numeric(col, errors="coerce")
    suspect = converted.isna() & col.notna()  # only rows that just became NaN need a closer look
    bad = suspect.copy()
    bad[suspect] = ~col[suspect].astype("string").str.strip().str.lower().isin(["nan", "", "none", "null"])
    if bad.any():
        examples = col[bad].astype(str).unique()[:3].tolist()
        raise DataError(source, "numeric_values",
                        f"{int(bad.sum())} non-numeric value(s), e.g. {examples}", column=name)
    return converted.astype("float64")


# Magnitude bands of numeric epoch timestamps: |t| below 1e11 is seconds (up to the year 5138), then
# milliseconds, microseconds, nanoseconds (1e11 s would be year 5138, 1e11 ms is 1973: no overlap for
# any date between 1973 and 5138). Beyond the int64 nanosecond range nothing is representable.
EPOCH_UNITS = (("s", 1e11), ("ms", 1e14), ("us", 1e17), ("ns", 9.2e18))


def epoch_unit(values: np.ndarray, source: str, column: str = TIMESTAMP) -> str:
    """The unit (s, ms, us, ns) of numeric epoch timestamps, from their magnitude.

    Raises :class:`DataError` (rule ``epoch_unit``) when values of the column fall in different bands
    (seconds mixed with milliseconds, ...) or outside every band.
    """
    finite = np.abs(values[np.isfinite(values)])
    if finite.size == 0:
        return "s"
    bounds = np.array([b for _, b in EPOCH_UNITS])
    band = np.searchsorted(bounds, finite, side="right")
    if (band >= len(EPOCH_UNITS)).any():
        bad = values[np.isfinite(values)][band >= len(EPOCH_UNITS)][:3].tolist()
        raise DataError(source, "epoch_unit", f"numeric timestamp(s) out of range for any epoch unit "
                        f"(s, ms, us, ns), e.g. {bad}", column=column)
    found = np.unique(band)
    if len(found) > 1:
        examples = {EPOCH_UNITS[b][0]: float(finite[band == b][0]) for b in found}
        raise DataError(source, "epoch_unit", f"numeric timestamps mix epoch units: {examples}; use one "
                        "unit (s, ms, us or ns) per column", column=column)
    return EPOCH_UNITS[int(found[0])][0]


def utc_timestamp(value) -> pd.Timestamp:
    """One timestamp in UTC: a naive one is read as UTC, an aware one converted."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def to_utc(col: pd.Series, source: str, timezone: str = "UTC", groups: pd.Series | None = None,
           column: str = TIMESTAMP) -> pd.Series:
    """Parse a timestamp column to ``datetime64[ns, UTC]``.

    - numeric values are epochs in UTC, their unit (s, ms, us, ns) read from the magnitude;
    - text or datetimes with an offset (``+01:00``, ``Z``) keep it;
    - naive text or datetimes are wall-clock times in ``timezone`` (an IANA name). A time the clocks
      skip there (spring forward) raises rule ``timezone``: such a time was not written by a clock of
      that zone. A time they show twice (fall back) is resolved from the order of the rows, within
      each of ``groups`` (the KPI ids; None: the column is one series): of a repeated wall time the
      first is summer time, the second winter time; a repeated hour that does not appear twice in
      order raises rule ``timezone``. Nothing is shifted or dropped silently.

    Unparseable text raises rule ``parseable_timestamps``, mixed or impossible epoch units rule
    ``epoch_unit``; every error names ``source`` and ``column``.
    """
    try:
        if pd.api.types.is_bool_dtype(col):
            raise TypeError(f"booleans are not timestamps: {col.head(3).tolist()}")
        if pd.api.types.is_numeric_dtype(col):
            values = col.to_numpy(dtype="float64", na_value=np.nan)
            unit = epoch_unit(values, source, column)
            if pd.api.types.is_integer_dtype(col):  # integers stay exact (float64 would round ns)
                parsed = pd.to_datetime(col, unit=unit, utc=True)
            else:
                parsed = pd.to_datetime(values, unit=unit, utc=True)
        elif timezone == "UTC":  # naive means UTC: one vectorised parse (the default, and every non-csv source)
            parsed = pd.to_datetime(col, utc=True, format="mixed")
        else:
            parsed = _local_to_utc(col, source, timezone, groups, column).array  # positional
        # Inside the try: text such as "1,5" parses as the year 1, which only the nanosecond cast rejects.
        return pd.Series(parsed, index=col.index).astype("datetime64[ns, UTC]")
    except (ValueError, TypeError, OverflowError, pd.errors.OutOfBoundsDatetime) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(source, "parseable_timestamps", str(exc).splitlines()[0],
                        column=column) from exc


def _local_to_utc(col: pd.Series, source: str, timezone: str, groups: pd.Series | None,
                  column: str) -> pd.Series:
    """Text or datetimes, the naive ones wall-clock times in ``timezone``, as UTC (see :func:`to_utc`)."""
    col = pd.Series(col.array, dtype=col.dtype)  # positional from here on, whatever the caller's index
    ids = None if groups is None else np.asarray(groups)
    try:
        plain = pd.Series(pd.to_datetime(col, format="mixed"))
    except ValueError:  # "Mixed timezones detected": naive and offset values, or several offsets
        plain = None
    if plain is not None:
        if plain.dt.tz is not None:  # offsets throughout: nothing is local
            return plain.dt.tz_convert("UTC")
        return _localize(plain, source, timezone, ids, column)
    out = pd.Series(pd.to_datetime(col, utc=True, format="mixed")).astype("datetime64[ns, UTC]")
    naive = _naive_mask(col)
    if naive.any():
        local = _localize(pd.Series(pd.to_datetime(col[naive], format="mixed")), source, timezone,
                          None if ids is None else ids[naive], column)
        out[naive] = local.array
    return out


def _naive_mask(col: pd.Series) -> np.ndarray:
    """Which values carry no UTC offset (the slow path: only a column that mixes offsets gets here)."""
    naive = {v: pd.Timestamp(v).tzinfo is None for v in pd.unique(col.dropna())}
    return col.map(naive).fillna(False).to_numpy(dtype=bool)


def _localize(naive: pd.Series, source: str, timezone: str, groups: np.ndarray | None, column: str) -> pd.Series:
    """Naive wall-clock datetimes in ``timezone`` -> UTC; DST gaps and unresolvable repeats raise rule ``timezone``."""
    naive = naive.astype("datetime64[ns]").reset_index(drop=True)
    local = naive.dt.tz_localize(timezone, ambiguous="NaT", nonexistent="NaT")
    unresolved = (local.isna() & naive.notna()).to_numpy()
    if not unresolved.any():  # the fast path: no time within a DST change
        return local.dt.tz_convert("UTC")
    as_summer = naive.dt.tz_localize(timezone, ambiguous=np.ones(len(naive), dtype=bool), nonexistent="NaT")
    skipped = (as_summer.isna() & naive.notna()).to_numpy()
    if skipped.any():
        examples = naive[skipped].astype(str).unique()[:3].tolist()
        raise DataError(source, "timezone", f"{int(skipped.sum())} naive timestamp(s) do not exist in "
                        f"{timezone} (the clocks skip them when summer time starts), e.g. {examples}; "
                        "they were not written by a clock of that zone: set data.csv.timezone to the zone "
                        "that wrote them, or write the times with UTC offsets", column=column)
    # A repeated hour is told apart by the order of each KPI's rows (pandas' "infer"), so per KPI.
    codes = np.zeros(len(naive), dtype=np.int64) if groups is None else pd.factorize(groups)[0]
    for code in np.unique(codes[unresolved]):
        rows = np.flatnonzero(codes == code)
        try:
            local.iloc[rows] = naive.iloc[rows].dt.tz_localize(timezone, ambiguous="infer").array
        except ValueError as exc:
            repeated = naive.iloc[rows][unresolved[rows]].astype(str).unique()[:3].tolist()
            which = "" if groups is None else f" of KPI {groups[rows[0]]!r}"
            raise DataError(source, "timezone", f"timestamp(s){which} in the hour that {timezone} shows "
                            f"twice when summer time ends cannot be told apart, e.g. {repeated}: each such "
                            "time must appear twice, in order (first summer, then winter time), or the "
                            f"file must carry UTC offsets ({exc})", column=column) from exc
    return local.dt.tz_convert("UTC")
