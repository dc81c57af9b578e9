"""The canonical KPI frame: the one data contract every source produces and every stage reads.

Long format, one row per (kpi_id, timestamp):

- ``kpi_id``: str
- ``timestamp``: timezone-aware UTC (``datetime64[ns, UTC]``)
- ``value``: float64
- ``label``: int8 in {0, 1}; the column may be absent for unlabelled data
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


def to_canonical(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Coerce a frame that already has the canonical column names to the canonical dtypes.

    Raises :class:`DataError` naming the source and column when a required column is absent or a
    column cannot be parsed. Value problems that concern single rows (NaN, inf, duplicates, labels
    outside {0, 1}) are *not* raised here: the validate stage quarantines those rows with a reason.
    """
    missing = [c for c in CANONICAL_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(source, "required_columns", f"missing {missing}; found {list(df.columns)}",
                        column=missing[0])
    out = pd.DataFrame(index=pd.RangeIndex(len(df)))
    # ``.array`` keeps the extension dtypes (and avoids millions of Python objects for timestamps).
    out[KPI_ID] = df[KPI_ID].astype("string").array
    out[TIMESTAMP] = _to_utc(df[TIMESTAMP], source).array
    out[VALUE] = _to_float(df[VALUE], source, VALUE).array
    if LABEL in df.columns:
        # Kept as float here so that a bad label (NaN, 2, -1) reaches validation and quarantine.
        out[LABEL] = _to_float(df[LABEL], source, LABEL).array
        if out[LABEL].isin([0.0, 1.0]).all():
            out[LABEL] = out[LABEL].astype("int8")
    return out


def _to_float(col: pd.Series, source: str, name: str) -> pd.Series:
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


def epoch_unit(values: np.ndarray, source: str) -> str:
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
                        f"(s, ms, us, ns), e.g. {bad}", column=TIMESTAMP)
    found = np.unique(band)
    if len(found) > 1:
        examples = {EPOCH_UNITS[b][0]: float(finite[band == b][0]) for b in found}
        raise DataError(source, "epoch_unit", f"numeric timestamps mix epoch units: {examples}; use one "
                        "unit (s, ms, us or ns) per column", column=TIMESTAMP)
    return EPOCH_UNITS[int(found[0])][0]


def _to_utc(col: pd.Series, source: str) -> pd.Series:
    try:
        if pd.api.types.is_bool_dtype(col):
            raise TypeError(f"booleans are not timestamps: {col.head(3).tolist()}")
        if pd.api.types.is_numeric_dtype(col):
            values = col.to_numpy(dtype="float64", na_value=np.nan)
            unit = epoch_unit(values, source)
            if pd.api.types.is_integer_dtype(col):  # integers stay exact (float64 would round ns)
                parsed = pd.to_datetime(col, unit=unit, utc=True)
            else:
                parsed = pd.to_datetime(values, unit=unit, utc=True)
        else:
            parsed = pd.to_datetime(col, utc=True, format="mixed")
        # Inside the try: text such as "1,5" parses as the year 1, which only the nanosecond cast rejects.
        return pd.Series(parsed, index=col.index).astype("datetime64[ns, UTC]")
    except (ValueError, TypeError, OverflowError, pd.errors.OutOfBoundsDatetime) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(source, "parseable_timestamps", str(exc).splitlines()[0],
                        column=TIMESTAMP) from exc
