"""Column names of the frames that flow between pipeline stages and detectors.

The canonical (raw) frame is owned by ``pipeline.contract``; it reuses these names so that
``models`` stays importable with only torch, numpy and pandas.

A *prepared* frame is what the windows stage writes and what every detector consumes:
one row per (kpi_id, timestamp), sorted by kpi_id then timestamp, on a regular grid per KPI.
Detectors ignore columns they do not know (``clipped``, ``split``, ...).

=========== ========= ===================================================================
column      dtype     meaning
=========== ========= ===================================================================
kpi_id      str       KPI identifier
timestamp   datetime  timezone-aware UTC, regular per KPI
value       float64   normalised value (train-split statistics of that KPI), gaps interpolated
raw_value   float64   the value in its original units, gaps interpolated
missing     bool      True where the point was absent from the source and interpolated
clipped     bool      True where the normalised value was beyond +-``windows.clip_sigma`` (an extreme
                      value: always an alarm when scored); its ``value`` is the median of the KPI's
                      observed values before it, so it does not dominate its neighbours' windows
label       int8      1 = anomalous; absent for unlabelled data
=========== ========= ===================================================================
"""
from __future__ import annotations

import numpy as np
import pandas as pd

KPI_ID = "kpi_id"
TIMESTAMP = "timestamp"
VALUE = "value"
RAW_VALUE = "raw_value"
LABEL = "label"
MISSING = "missing"
CLIPPED = "clipped"
# The MAD of a normal distribution is 1/1.4826 of its standard deviation: MAD * this is a robust std.
MAD_TO_STD = 1.4826

PREPARED_COLUMNS = (KPI_ID, TIMESTAMP, VALUE, RAW_VALUE, MISSING)


def has_labels(frame) -> bool:
    """True when the frame carries a label column with at least one non-null value."""
    return LABEL in frame.columns and frame[LABEL].notna().any()


def id_runs(ids) -> list[tuple[str, slice]]:
    """Contiguous runs of equal ids, as ``(id, row slice)``: each KPI's rows when sorted by KPI."""
    ids = np.asarray(ids)
    if ids.size == 0:
        return []
    bounds = np.r_[0, np.flatnonzero(ids[1:] != ids[:-1]) + 1, ids.size]
    return [(str(ids[a]), slice(int(a), int(b))) for a, b in zip(bounds[:-1], bounds[1:])]


def kpi_codes(frame) -> tuple[np.ndarray, pd.Index]:
    """Each row's KPI as an integer code (in order of first appearance) and the KPI ids the codes index.
    pandas' factorize reads an Arrow string column directly: several times faster than converting it to
    Python strings, which every detector's per-KPI split would otherwise pay."""
    codes, ids = pd.factorize(frame[KPI_ID], use_na_sentinel=False)
    return np.asarray(codes), ids


def kpi_slices(frame) -> list[tuple[str, slice]]:
    """Contiguous row ranges of each KPI in a frame sorted by kpi_id (no copy, no per-row loop)."""
    codes, ids = kpi_codes(frame)
    return [(str(ids[codes[sl.start]]), sl) for _, sl in id_runs(codes)]
