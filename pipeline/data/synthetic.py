"""The embedded default feed (``synthetic:``): labelled KPI series that look like on-call metrics.

Each KPI has its own level, daily profile (two harmonics, own peak hour), weekly rhythm, upward
trend and Gaussian noise, on a grid of ``interval`` anchored at the Unix epoch. Anomalies of six
kinds are injected and labelled 1 where injected:

===============  =========================================================================
kind             what happens
===============  =========================================================================
spike            1-3 points jump up by 6-12 noise scales
dip              1-3 points drop by 6-12 noise scales (floored at 0)
level_shift      1-6 hours shifted up or down by 3-6 noise scales
variance_burst   30 min - 3 hours with 3-6 times the noise
stuck            1-4 hours frozen at the value the block starts with (a flatlined exporter)
gap              15 min - 2 hours of rows removed (nothing labelled: the rows are absent)
===============  =========================================================================

**Deterministic per absolute time.** Noise and anomalies are drawn per KPI per UTC calendar day
from a generator seeded with ``(seed, kpi_index, day_number)``, the grid is anchored at the epoch
and the trend at the fixed :data:`TREND_ORIGIN`; so the value and label at a timestamp never depend
on the requested range. A daily run that generates only "today" gets exactly the rows that a
wider generation holds for that day. Events never cross midnight (they are placed inside their day).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from models.frame import KPI_ID, LABEL, TIMESTAMP, VALUE
from pipeline.data.contract import DTYPES, utc_timestamp
from pipeline.params import SyntheticParams

KINDS = ("spike", "dip", "level_shift", "variance_burst", "stuck", "gap")
KIND_WEIGHTS = np.array([0.24, 0.18, 0.16, 0.16, 0.12, 0.14])
# duration range of each kind: (min, max) as Timedelta strings; spikes and dips count points
DURATIONS = {
    "level_shift": ("1h", "6h"),
    "variance_burst": ("30min", "3h"),
    "stuck": ("1h", "4h"),
    "gap": ("15min", "2h"),
}
TREND_ORIGIN = pd.Timestamp("2026-01-01", tz="UTC")
MIN_TREND_FACTOR = 0.2          # the trend never takes a KPI below this share of its level
MIN_NOISE_SCALE = 0.02          # anomaly sizes use at least this share of the level as "noise"
# size of spikes, dips, shifts (signed for shifts) and bursts (noise multiplier), in noise scales
SIZES = {"spike": (6, 12), "dip": (6, 12), "level_shift": (3, 6), "variance_burst": (3, 6)}
EVENT_COLUMNS = (KPI_ID, "kind", "start", "end", "points")

_DAY_NS = 86_400 * 10**9
_WEEK_NS = 7 * _DAY_NS
_SEED_OFFSET = 2**31            # SeedSequence wants non-negative entropy; days before 1970 are < 0


def kpi_name(index: int) -> str:
    return f"synthetic/kpi_{index:03d}"


def generate(p: SyntheticParams, start=None, end=None, return_events: bool = False):
    """Generate the labelled canonical frame for ``[start, end)`` (defaults: ``p.start``, ``p.end``).

    Returns the frame (``kpi_id``, ``timestamp``, ``value``, ``label``), sorted by kpi_id then
    timestamp; with ``return_events=True`` returns ``(frame, events)`` where ``events`` has one
    row per injected anomaly that overlaps the range: ``kpi_id``, ``kind``, ``start``, ``end``
    (exclusive, UTC) and ``points`` (grid points covered).
    """
    t0 = utc_timestamp(p.start if start is None else start)
    t1 = utc_timestamp(p.end if end is None else end)
    step = int(pd.Timedelta(p.interval).value)
    if step <= 0:
        raise ValueError(f"interval must be positive, got {p.interval!r}")
    lo, hi = t0.value, t1.value
    frames, events = [], []
    if hi > lo:
        day_lo, day_hi = lo // _DAY_NS, -(-hi // _DAY_NS)
        n_lo, n_hi = _ceil_div(day_lo * _DAY_NS, step), _ceil_div(day_hi * _DAY_NS, step)
        t_ns = np.arange(n_lo, n_hi, dtype=np.int64) * step
        days = np.arange(day_lo, day_hi + 1, dtype=np.int64)
        bounds = np.array([_ceil_div(int(d) * _DAY_NS, step) for d in days], dtype=np.int64) - n_lo
        keep_range = (t_ns >= lo) & (t_ns < hi)
        for k in range(p.n_kpis):
            frame, ev = _kpi(p, k, t_ns, days[:-1], bounds, step)
            keep = keep_range & frame["present"]
            frames.append(pd.DataFrame({
                KPI_ID: kpi_name(k),
                TIMESTAMP: t_ns[keep],
                VALUE: frame["value"][keep],
                LABEL: frame["label"][keep],
            }))
            events.extend(e for e in ev if e["end"] > lo and e["start"] < hi)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        {KPI_ID: [], TIMESTAMP: np.array([], dtype=np.int64), VALUE: [], LABEL: []})
    out[KPI_ID] = out[KPI_ID].astype(DTYPES[KPI_ID])
    out[TIMESTAMP] = pd.to_datetime(out[TIMESTAMP].to_numpy(np.int64), utc=True).astype(DTYPES[TIMESTAMP])
    out[VALUE] = out[VALUE].astype(DTYPES[VALUE])
    out[LABEL] = out[LABEL].astype(DTYPES[LABEL])
    if not return_events:
        return out
    ev = pd.DataFrame(events, columns=list(EVENT_COLUMNS))
    ev[KPI_ID] = ev[KPI_ID].astype(DTYPES[KPI_ID])
    for col in ("start", "end"):
        ev[col] = pd.to_datetime(ev[col].to_numpy(np.int64), utc=True).astype(DTYPES[TIMESTAMP])
    ev["points"] = ev["points"].astype("int64")
    return out, ev


def injected_events(p: SyntheticParams, start=None, end=None) -> pd.DataFrame:
    """The anomalies :func:`generate` injects in ``[start, end)`` (see its ``return_events``)."""
    return generate(p, start, end, return_events=True)[1]


# ---------------------------------------------------------------------------------------------


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _profile(p: SyntheticParams, k: int) -> dict:
    """The KPI's own shape; depends only on (seed, k)."""
    rng = np.random.default_rng([p.seed + _SEED_OFFSET, k, 0xC0FFEE])
    return {
        "level": float(10 ** rng.uniform(1, 3)),
        "daily_amp": float(rng.uniform(0.15, 0.4)),
        "daily_amp2": float(rng.uniform(0.0, 0.1)),
        "peak_hour": float(rng.uniform(11, 20)),
        "weekly_amp": float(rng.uniform(0.03, 0.12)),
        "weekly_phase": float(rng.uniform(0, 2 * np.pi)),
        "trend": float(p.trend_per_day * rng.uniform(0.5, 1.5)),
    }


def _baseline(prof: dict, t_ns: np.ndarray) -> np.ndarray:
    day_frac = (t_ns % _DAY_NS) / _DAY_NS
    week_frac = (t_ns % _WEEK_NS) / _WEEK_NS
    phase = 2 * np.pi * (day_frac - prof["peak_hour"] / 24)
    seasonal = (1 + prof["daily_amp"] * np.cos(phase) + prof["daily_amp2"] * np.cos(2 * phase)
                + prof["weekly_amp"] * np.sin(2 * np.pi * week_frac + prof["weekly_phase"]))
    days = (t_ns - TREND_ORIGIN.value) / _DAY_NS
    trend = np.maximum(1 + prof["trend"] * days, MIN_TREND_FACTOR)
    return prof["level"] * trend * seasonal


def _kpi(p: SyntheticParams, k: int, t_ns: np.ndarray, days: np.ndarray, bounds: np.ndarray,
         step: int):
    """Values, labels and presence for KPI ``k`` on ``t_ns`` (whole days), plus its events."""
    prof = _profile(p, k)
    n = len(t_ns)
    value = _baseline(prof, t_ns)
    scale = prof["level"] * max(p.noise, MIN_NOISE_SCALE)   # size unit of anomalies
    noise_std = prof["level"] * p.noise
    noise = np.empty(n)
    label = np.zeros(n, dtype=np.int8)
    present = np.ones(n, dtype=bool)
    rate = p.anomalies_per_week / 7
    # per-kind operations collected first, applied in a fixed order afterwards
    ops: dict[str, list] = {kind: [] for kind in KINDS}
    events = []
    for i, day in enumerate(days):
        a, b = int(bounds[i]), int(bounds[i + 1])
        m = b - a
        noise_rng, event_rng = (np.random.default_rng(s) for s in
                                np.random.SeedSequence([p.seed + _SEED_OFFSET, k,
                                                        int(day) + _SEED_OFFSET]).spawn(2))
        noise[a:b] = noise_rng.standard_normal(m) * noise_std
        if m == 0 or rate <= 0:
            continue
        for _ in range(int(event_rng.poisson(rate))):
            kind = KINDS[int(event_rng.choice(len(KINDS), p=KIND_WEIGHTS))]
            if kind in DURATIONS:
                lo_d, hi_d = (pd.Timedelta(x).value for x in DURATIONS[kind])
                length = max(1, int(round(event_rng.uniform(lo_d, hi_d) / step)))
            else:
                length = int(event_rng.integers(1, 4))
            length = min(length, m)
            s = a + int(event_rng.integers(0, m - length + 1))
            size = float(event_rng.uniform(*SIZES[kind])) if kind in SIZES else 0.0
            sign = 1.0 if event_rng.random() < 0.5 else -1.0
            burst = event_rng.standard_normal(length) if kind == "variance_burst" else None
            ops[kind].append((s, s + length, size * sign, burst))
            events.append({KPI_ID: kpi_name(k), "kind": kind, "start": int(t_ns[s]),
                           "end": int(t_ns[s + length - 1]) + step, "points": length})
    value = value + noise
    for s, e, size, _ in ops["level_shift"]:
        value[s:e] += size * scale
    for s, e, size, burst in ops["variance_burst"]:
        value[s:e] += burst * abs(size) * scale
    for s, e, size, _ in ops["spike"]:
        value[s:e] += abs(size) * scale
    for s, e, size, _ in ops["dip"]:
        value[s:e] -= abs(size) * scale
    for s, e, _, _ in ops["stuck"]:
        value[s:e] = value[s]
    np.maximum(value, 0.0, out=value)      # counts, rates and latencies are never negative
    for kind in KINDS:
        for s, e, _, _ in ops[kind]:
            if kind == "gap":
                present[s:e] = False
            else:
                label[s:e] = 1
    return {"value": value, "label": label, "present": present}, events
