"""A small, deterministic prepared frame for detector tests (no pipeline stage involved).

Each KPI: a level, a daily sine (5-minute sampling, 288 points a day), a slow trend and Gaussian
noise, plus labelled anomaly events every ~``event_every`` points, cycling through four kinds:

- ``spike``: one point, +2.5 x amplitude
- ``dip``: one point, -2.5 x amplitude
- ``level_shift``: 24 points shifted by +1.5 x amplitude
- ``variance_burst``: 36 points with 8 x the noise

About 1% of the other points are marked ``missing`` and hold the linear interpolation of their
neighbours, as the windows stage would write them. Values are z-normalised per KPI with the
statistics of its train part, again as the pipeline does.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from models.frame import KPI_ID, LABEL, MISSING, RAW_VALUE, TIMESTAMP, VALUE

PERIOD = 288
KINDS = ("spike", "dip", "level_shift", "variance_burst")
LENGTHS = {"spike": 1, "dip": 1, "level_shift": 24, "variance_burst": 36}


def _kpi(k: int, n: int, rng: np.random.Generator, event_every: int, train_fraction: float) -> pd.DataFrame:
    t = np.arange(n)
    level, amp, noise = 10.0 + 5 * k, 2.0 + 0.5 * k, 0.25
    raw = level + amp * np.sin(2 * np.pi * t / PERIOD + k) + 0.0005 * t + noise * rng.standard_normal(n)
    label = np.zeros(n, dtype=np.int8)
    centres = np.arange(event_every // 2, n - 40, event_every)
    starts = centres + rng.integers(-10, 10, size=len(centres))
    for i, s in enumerate(starts):  # a handful of events per KPI
        kind = KINDS[(i + k) % len(KINDS)]
        sl = slice(s, s + LENGTHS[kind])
        if kind == "spike":
            raw[sl] += 2.5 * amp
        elif kind == "dip":
            raw[sl] -= 2.5 * amp
        elif kind == "level_shift":
            raw[sl] += 1.5 * amp
        else:
            raw[sl] += 7 * noise * rng.standard_normal(LENGTHS[kind])
        label[sl] = 1
    missing = np.zeros(n, dtype=bool)
    candidates = np.flatnonzero((label == 0) & (t > 0) & (t < n - 1))
    missing[rng.choice(candidates, size=n // 100, replace=False)] = True
    missing &= ~np.roll(missing, 1)  # isolated gaps: each has two observed neighbours
    raw[missing] = 0.5 * (raw[np.flatnonzero(missing) - 1] + raw[np.flatnonzero(missing) + 1])
    cut = int(n * train_fraction)
    mean, std = raw[:cut].mean(), raw[:cut].std()
    return pd.DataFrame({
        KPI_ID: f"kpi_{k}",
        TIMESTAMP: pd.date_range("2026-01-01", periods=n, freq="5min", tz="UTC"),
        VALUE: (raw - mean) / std,
        RAW_VALUE: raw,
        MISSING: missing,
        LABEL: label,
    })


def make_frame(n_kpis: int = 3, n_points: int = 3000, seed: int = 0, event_every: int = 150,
               train_fraction: float = 0.6, labelled: bool = True) -> pd.DataFrame:
    """The whole prepared frame, sorted by (kpi_id, timestamp)."""
    rng = np.random.default_rng(seed)
    frame = pd.concat([_kpi(k, n_points, rng, event_every, train_fraction) for k in range(n_kpis)], ignore_index=True)
    frame[KPI_ID] = frame[KPI_ID].astype("string")
    return frame if labelled else frame.drop(columns=[LABEL])


def split(frame: pd.DataFrame, train_fraction: float = 0.6, val_fraction: float = 0.2):
    """Per-KPI chronological split into (train, val, test)."""
    position = frame.groupby(KPI_ID, sort=False).cumcount().to_numpy()
    size = frame.groupby(KPI_ID, sort=False)[VALUE].transform("size").to_numpy()
    a, b = (size * train_fraction).astype(int), (size * (train_fraction + val_fraction)).astype(int)
    parts = (position < a, (position >= a) & (position < b), position >= b)
    return tuple(frame[p].reset_index(drop=True) for p in parts)


def make_splits(**kwargs):
    """(train, val, test) of :func:`make_frame`."""
    return split(make_frame(**kwargs))
