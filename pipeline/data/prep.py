"""Prepared frames: validated KPI rows -> regular, gap-masked, normalised splits and their windows.

Per KPI: sort -> regularise to the KPI's own interval -> interpolate gaps and keep a ``missing`` mask
-> split chronologically into train / val / test -> normalise with train-only statistics -> windows.
The windows stage (:mod:`pipeline.stages.windows`) writes them; the served bundle
(:mod:`pipeline.serving.bundle`) prepares new rows with the same statistics; :func:`load_splits`
reads the stage's output back for evaluation, the gate and the benchmark.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.frame import CLIPPED, KPI_ID, LABEL, MAD_TO_STD, MISSING, RAW_VALUE, TIMESTAMP, VALUE, kpi_slices
from models.windowing import windows_by_kpi
from pipeline.params import WindowParams

SPLITS = ("train", "val", "test")
DEFAULT_CLIP_SIGMA = WindowParams.model_fields["clip_sigma"].default


@dataclass(frozen=True)
class NormStats:
    center: float
    scale: float
    interval_s: float

    def apply(self, values: np.ndarray, clip_sigma: float | None = None) -> np.ndarray:
        """Normalised values in float64, clipped to ``+-clip_sigma`` when given."""
        return self.normalise(values, clip_sigma)[0] if clip_sigma is not None else \
            (np.asarray(values, dtype=np.float64) - self.center) / self.scale

    def normalise(self, values: np.ndarray, clip_sigma: float) -> tuple[np.ndarray, np.ndarray]:
        """(normalised values clipped to ``+-clip_sigma``, which were clipped).

        Validation passes any finite value (1e200 is a number), but detectors compute in float32,
        where such a value overflows to inf: a crash, or a NaN that scores as the minimum. Clipping
        in float64 keeps every score finite; the mask lets serving flag those points regardless.
        """
        with np.errstate(over="ignore", invalid="ignore"):
            z = (np.asarray(values, dtype=np.float64) - self.center) / self.scale
        clipped = ~(np.abs(z) <= clip_sigma)  # also catches inf
        return np.clip(np.nan_to_num(z, nan=0.0, posinf=clip_sigma, neginf=-clip_sigma),
                       -clip_sigma, clip_sigma), clipped & ~np.isnan(z)


def infer_interval(timestamps: pd.Series) -> pd.Timedelta:
    """The KPI's sampling interval: the most common step between consecutive timestamps."""
    steps = timestamps.diff().dropna()
    steps = steps[steps > pd.Timedelta(0)]
    if steps.empty:
        raise ValueError("cannot infer a sampling interval from fewer than two distinct timestamps")
    return steps.mode().iloc[0]


def regularise(kpi: pd.DataFrame, interval: pd.Timedelta | None = None) -> tuple[pd.DataFrame, dict]:
    """One KPI onto its regular grid: absent points are interpolated in time and marked ``missing``.

    Timestamps off the grid are snapped to the nearest grid point; when two land on one grid point
    the first is kept. Both are counted in the returned stats, so nothing disappears silently.
    """
    kpi = kpi.sort_values(TIMESTAMP, kind="stable")
    interval = interval or infer_interval(kpi[TIMESTAMP])
    origin = kpi[TIMESTAMP].iloc[0].as_unit("ns")
    step = ((kpi[TIMESTAMP] - origin) / interval).to_numpy(dtype=np.float64)
    slot = np.rint(step).astype(np.int64)
    off_grid = int((np.abs(step - slot) > 1e-9).sum())
    collided = pd.Series(slot).duplicated().to_numpy()
    kpi, slot = kpi[~collided], slot[~collided]

    n = int(slot[-1]) + 1
    grid = pd.DataFrame({TIMESTAMP: origin + np.arange(n) * interval})
    present = np.zeros(n, dtype=bool)
    present[slot] = True
    raw = np.full(n, np.nan)
    raw[slot] = kpi[VALUE].to_numpy(dtype=np.float64)
    idx = np.arange(n)
    raw = np.interp(idx, idx[present], raw[present])  # linear in time on a regular grid

    grid.insert(0, KPI_ID, kpi[KPI_ID].iloc[0])
    grid[RAW_VALUE] = raw
    grid[MISSING] = ~present
    if LABEL in kpi.columns:
        observed = np.full(n, np.nan)
        observed[slot] = kpi[LABEL].to_numpy(dtype=np.float64)
        # A gap inside a labelled event belongs to it (labelled, and masked as missing), so that the
        # event stays one event: metrics then neither split it nor score the unobserved points.
        before, after = pd.Series(observed).ffill().to_numpy(), pd.Series(observed).bfill().to_numpy()
        grid[LABEL] = np.where(present, observed, (before == 1) & (after == 1)).astype(np.int8)
    stats = {"interval_s": interval.total_seconds(), "points": n, "missing": int(n - present.sum()),
             "off_grid_snapped": off_grid, "collisions_dropped": int(collided.sum())}
    return grid, stats


def fit_norm(train_raw: np.ndarray, train_missing: np.ndarray, interval_s: float) -> NormStats:
    """Median / MAD of the observed train points: robust to the anomalies that train data contains."""
    observed = train_raw[~train_missing]
    center = float(np.median(observed))
    scale = float(np.median(np.abs(observed - center)) * MAD_TO_STD)
    if not np.isfinite(scale) or scale <= 1e-12:
        scale = float(np.std(observed)) or 1.0  # a nearly constant KPI
    return NormStats(center, scale, interval_s)


def split_bounds(n: int, wp: WindowParams, has_test_source: bool) -> dict[str, slice]:
    """Chronological split of one KPI's ``n`` points. With a separate test source, the rest is val."""
    n_train = min(int(round(n * wp.train_fraction)), wp.max_train_points or n)
    if has_test_source:
        return {"train": slice(0, n_train), "val": slice(n_train, n), "test": slice(n, n)}
    n_val = min(int(round(n * wp.val_fraction)), n if wp.max_val_points is None else wp.max_val_points)
    return {"train": slice(0, n_train), "val": slice(n_train, n_train + n_val),
            "test": slice(n_train + n_val, n)}


def prepare(frame: pd.DataFrame, norm: dict[str, NormStats], clip_sigma: float = DEFAULT_CLIP_SIGMA) -> pd.DataFrame:
    """Regularise and normalise a frame with known per-KPI statistics (used for scoring new data).

    Normalised values beyond ``+-clip_sigma`` are clipped and marked in the ``clipped`` column.

    KPIs without statistics are returned normalised by their own robust statistics and listed in
    ``frame.attrs["unseen_kpis"]`` so callers can report them.
    """
    parts, unseen = [], []
    for kpi_id, kpi in frame.groupby(KPI_ID, sort=True, observed=True):
        stats = norm.get(str(kpi_id))
        grid, reg = regularise(kpi, pd.Timedelta(seconds=stats.interval_s) if stats else None)
        if stats is None:
            unseen.append(str(kpi_id))
            stats = fit_norm(grid[RAW_VALUE].to_numpy(), grid[MISSING].to_numpy(), reg["interval_s"])
        grid[VALUE], grid[CLIPPED] = stats.normalise(grid[RAW_VALUE].to_numpy(), clip_sigma)
        parts.append(grid)
    out = _concat(parts, LABEL in frame.columns)
    out.attrs["unseen_kpis"] = unseen
    return out


def build(train_frame: pd.DataFrame, test_frame: pd.DataFrame | None, wp: WindowParams):
    """The windows stage as a pure function: returns (splits, norm_stats, summary)."""
    has_test = test_frame is not None
    with_label = LABEL in train_frame.columns
    parts = {s: [] for s in SPLITS}
    norm: dict[str, NormStats] = {}
    reg_stats = {}
    for kpi_id, kpi in train_frame.groupby(KPI_ID, sort=True, observed=True):
        grid, stats = regularise(kpi)
        bounds = split_bounds(len(grid), wp, has_test)
        tr = grid.iloc[bounds["train"]]
        norm[str(kpi_id)] = fit_norm(tr[RAW_VALUE].to_numpy(), tr[MISSING].to_numpy(), stats["interval_s"])
        grid[VALUE], grid[CLIPPED] = norm[str(kpi_id)].normalise(grid[RAW_VALUE].to_numpy(), wp.clip_sigma)
        for split, sl in bounds.items():
            parts[split].append(grid.iloc[sl])
        reg_stats[str(kpi_id)] = stats
    splits = {s: _concat(parts[s], with_label) for s in SPLITS}
    if has_test:
        known = test_frame[KPI_ID].astype(str).isin(norm.keys())
        splits["test"] = prepare(test_frame[known], norm, wp.clip_sigma)
        unknown = sorted(test_frame.loc[~known, KPI_ID].astype(str).unique())
    else:
        unknown = []
    summary = {
        "length": wp.length, "stride": wp.stride,
        "splits": {s: {"rows": len(f), "kpis": int(f[KPI_ID].nunique()),
                       "missing": int(f[MISSING].sum()),
                       "windows": int(_window_count(f, wp)),
                       "anomalous_points": int(f[LABEL].sum()) if LABEL in f.columns else None}
                   for s, f in splits.items()},
        "regularisation": reg_stats,
        "test_kpis_without_train_data": unknown,
    }
    return splits, norm, summary


def window_arrays(frame: pd.DataFrame, wp: WindowParams) -> dict[str, np.ndarray]:
    slices = kpi_slices(frame)
    values, start = windows_by_kpi(frame[VALUE].to_numpy(np.float32), slices, wp.length, wp.stride)
    missing, _ = windows_by_kpi(frame[MISSING].to_numpy(bool), slices, wp.length, wp.stride)
    out = {"values": values, "missing": missing, "start": start}
    if LABEL in frame.columns:
        out["labels"], _ = windows_by_kpi(frame[LABEL].to_numpy(np.int8), slices, wp.length, wp.stride)
    return out


def load_norm_stats(path: Path) -> dict[str, NormStats]:
    return {k: NormStats(**v) for k, v in json.loads(Path(path).read_text()).items()}


def _window_count(frame: pd.DataFrame, wp: WindowParams) -> int:
    sizes = frame.groupby(KPI_ID, observed=True).size().to_numpy()
    return int(np.clip((sizes - wp.length) // wp.stride + 1, 0, None).sum())


def _concat(parts: list[pd.DataFrame], with_label: bool) -> pd.DataFrame:
    cols = [KPI_ID, TIMESTAMP, VALUE, RAW_VALUE, MISSING, CLIPPED, *([LABEL] if with_label else [])]
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            cols, ["string", "datetime64[ns, UTC]", "float64", "float64", "bool", "bool", "int8"])})
    return pd.concat(parts, ignore_index=True)[cols]


def load_splits(windows_dir: Path) -> pd.DataFrame:
    """The windows stage's train + val + test prepared frames in one frame, with a ``split`` column,
    ordered by KPI and time."""
    parts = []
    for split in SPLITS:
        frame = pd.read_parquet(Path(windows_dir) / f"{split}.parquet")
        parts.append(frame.assign(split=split))
    full = pd.concat(parts, ignore_index=True)
    return full.sort_values([KPI_ID, TIMESTAMP], kind="stable").reset_index(drop=True)
