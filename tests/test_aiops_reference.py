"""aiops_f1 against the challenge's published rule, transcribed as a plain loop over raw timestamps.

The reference below knows nothing of our grid: per KPI it sorts the raw rows, re-grids them at the
smallest timestamp step, inserts every absent timestamp as label 0 / prediction 0, then walks the
grid: a segment (maximal run of 1s) is detected iff an alarm lies in its first ``delay + 1`` grid
points (clipped at its end) -- then all its points are TP, else all FN, and its later alarms count
for nothing -- and an alarm outside segments is a FP; counts are summed over the KPIs (micro F1).
Our side is what the pipeline does: ``prep.regularise`` each KPI, then ``aiops_f1`` on the labels,
alarms, missing mask and KPI ids of the concatenated grids. Random alarms are put on the inserted
(missing) grid points as well: the metric must ignore them.

Precondition, as on the 29 AIOps KPIs: each KPI's most common step (our grid,
``prep.infer_interval``) is its smallest step (the reference's), every step a multiple of it.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from models.frame import KPI_ID, LABEL, MISSING, TIMESTAMP, VALUE
from pipeline.data import prep
from pipeline.eval import bootstrap as B
from pipeline.eval import metrics as M

INTERVALS = (60, 300)  # the AIOps KPIs' two sampling steps, in seconds


def reference_counts(kpis: list[tuple[np.ndarray, np.ndarray, np.ndarray]], delay: int
                     ) -> tuple[int, int, int, list[int], list[int]]:
    """(TP, FP, FN, all grid labels, all adjusted predictions) of the published rule, for raw
    ``(timestamps in s, labels, alarms)`` per KPI, rows in any order."""
    tp = fp = fn = 0
    y_all: list[int] = []
    p_all: list[int] = []
    for ts, label, alarm in kpis:
        order = sorted(range(len(ts)), key=lambda i: ts[i])
        t0 = ts[order[0]]
        step = min(ts[order[i + 1]] - ts[order[i]] for i in range(len(order) - 1))
        n = (ts[order[-1]] - t0) // step + 1
        y = [0] * n  # inserted timestamps: label 0 and prediction 0
        p = [0] * n
        for i in order:
            y[(ts[i] - t0) // step] = int(label[i])
            p[(ts[i] - t0) // step] = int(alarm[i])
        adjusted = list(p)
        i = 0
        while i < n:
            if y[i] == 1:
                j = i
                while j < n and y[j] == 1:
                    j += 1
                hit = any(p[i:min(i + delay + 1, j)])
                for k in range(i, j):
                    adjusted[k] = 1 if hit else 0
                if hit:
                    tp += j - i
                else:
                    fn += j - i
                i = j
            else:
                if p[i] == 1:
                    fp += 1
                i += 1
        y_all += y
        p_all += adjusted
    return tp, fp, fn, y_all, p_all


def random_kpi(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(timestamps in s, labels, scores) of one KPI's raw rows at 60 or 300 s: gaps (some of them
    inside segments), segments at the series' edges now and then, ties among the scores."""
    step = int(rng.choice(INTERVALS))
    n = int(rng.integers(20, 120))
    lab = np.zeros(n, dtype=np.int8)
    for _ in range(int(rng.integers(0, 6))):
        a = int(rng.integers(0, n))
        lab[a:a + int(rng.integers(1, 15))] = 1
    if rng.random() < 0.3:
        lab[:int(rng.integers(1, 6))] = 1  # a segment at the series start
    if rng.random() < 0.3:
        lab[n - int(rng.integers(1, 6)):] = 1  # and at its end
    present = np.ones(n, dtype=bool)
    budget = n // 4  # few, short gaps: the most common step stays the smallest
    for _ in range(int(rng.integers(0, 5))):
        inside = np.flatnonzero(lab[1:-1]) + 1
        a = int(rng.choice(inside)) if inside.size and rng.random() < 0.6 else int(rng.integers(1, n - 1))
        length = int(min(rng.integers(1, 6), budget, n - 1 - a))
        present[a:a + length] = False
        budget -= length
    present[[0, -1]] = True  # the grid runs from the first row to the last
    t0 = int(rng.integers(1_490_000_000, 1_500_000_000)) // step * step
    ts = t0 + step * np.flatnonzero(present)
    scores = np.round(rng.random(n) + 0.4 * lab * (rng.random() < 0.7), 2)
    return ts, lab[present], scores[present]


def pipeline_arrays(kpis: list[tuple[np.ndarray, np.ndarray, np.ndarray]], rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, values, missing, ids) of the concatenated regularised grids; ``values`` of a raw row
    is carried to its grid point, the inserted points get random values."""
    labels, values, missing, ids = [], [], [], []
    for k, (ts, lab, vals) in enumerate(kpis):
        order = rng.permutation(len(ts))  # rows in any order: regularise sorts them
        frame = pd.DataFrame({KPI_ID: f"kpi{k}", TIMESTAMP: pd.to_datetime(ts[order], unit="s", utc=True),
                              VALUE: vals[order].astype(float), LABEL: lab[order]})
        grid, stats = prep.regularise(frame)
        assert stats["interval_s"] == min(np.diff(np.sort(ts)))  # the precondition, on this case
        on_grid = pd.Series(vals.astype(float), index=pd.to_datetime(ts, unit="s", utc=True))
        v = on_grid.reindex(grid[TIMESTAMP]).to_numpy().copy()
        miss = grid[MISSING].to_numpy()
        assert np.isnan(v).sum() == miss.sum()
        v[miss] = rng.choice(np.unique(vals), size=int(miss.sum()))  # anything: never an alarm
        labels.append(grid[LABEL].to_numpy())
        values.append(v)
        missing.append(miss)
        ids.append(grid[KPI_ID].to_numpy())
    return tuple(np.concatenate(x) for x in (labels, values, missing, ids))


def test_hand_cases():
    # KPI a, 60 s: rows at 0, 60, 180, 240 s (120 absent); labels 1 1 1 1; alarm at 240.
    # Grid 0 60 [120] 180 240: segments [0, 60] and [180, 240]. delay 1: the first has no alarm
    # (FN 2), the second's at offset 1 (TP 2). The gap-merged segment [0..240] would have its
    # alarm at offset 4 > 1: missed.
    a = (np.array([0, 60, 180, 240]), np.array([1, 1, 1, 1]), np.array([0, 0, 0, 1]))
    assert reference_counts([a], 1)[:3] == (2, 0, 2)
    # KPI b, 300 s: rows at 0, 300, 600, 1200 (900 absent), labels 0 0 1 1, alarms at 0 and 1200:
    # segments [600] (missed: FN 1) and [1200] (TP 1); the alarm at 0 is a FP.
    b = (np.array([0, 300, 600, 1200]), np.array([0, 0, 1, 1]), np.array([1, 0, 0, 1]))
    assert reference_counts([b], 1)[:3] == (1, 1, 1)
    # Both: TP 3, FP 1, FN 3 -> F1 = 6 / (6 + 1 + 3) = 0.6
    assert reference_counts([a, b], 1)[:3] == (3, 1, 3)
    rng = np.random.default_rng(0)
    lab, alarm, miss, ids = pipeline_arrays([a, b], rng)
    assert lab.tolist() == [1, 1, 0, 1, 1, 0, 0, 1, 0, 1] and miss.tolist() == [0, 0, 1, 0, 0, 0, 0, 0, 1, 0]
    assert M.aiops_f1(lab, alarm.astype(bool), miss, ids, delay=1) == 0.6
    # A segment at each edge, one point each, detected by an alarm on it: TP 2. delay 0.
    c = (np.array([0, 60, 120]), np.array([1, 0, 1]), np.array([1, 0, 1]))
    assert reference_counts([c], 0)[:3] == (2, 0, 0)
    lab, alarm, miss, ids = pipeline_arrays([c], rng)
    assert M.aiops_f1(lab, alarm.astype(bool), miss, ids, delay=0) == 1.0


def random_case(rng) -> tuple[list, int]:
    """1-3 random KPIs (:func:`random_kpi`) and a delay of 0-7 grid points."""
    return [random_kpi(rng) for _ in range(int(rng.integers(1, 4)))], int(rng.integers(0, 8))


def test_aiops_f1_equals_the_published_rule_on_random_cases():
    rng = np.random.default_rng(2018)
    splits = 0
    for case in range(250):
        raw, delay = random_case(rng)
        thr = float(rng.choice([0.5, 0.8, 0.95]))
        kpis = [(ts, lab, (sc >= thr).astype(int)) for ts, lab, sc in raw]
        tp, fp, fn, y, adj = reference_counts(kpis, delay)
        lab, sc, miss, ids = pipeline_arrays(raw, rng)
        alarms = sc >= thr
        out = B.segment_outcomes(lab, alarms, miss, ids, metric="aiops_f1", delay=delay)
        assert (int(out.tp.sum()), out.fp, int(out.fn.sum())) == (tp, fp, fn), f"case {case}"
        expected = None if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
        assert M.aiops_f1(lab, alarms, miss, ids, delay=delay) == expected, f"case {case}"
        if expected is not None and case % 10 == 0:  # the scripts' own last step (sklearn is slow)
            assert expected == pytest.approx(f1_score(y, adj, zero_division=0))
        # how many cases a gap splits a labelled run (a grid gap between two labelled rows)
        for ts, lab_raw, _ in raw:
            o = np.argsort(ts)
            step = np.diff(ts[o]).min()
            splits += int(np.any((np.diff(ts[o]) > step) & (lab_raw[o][1:] == 1) & (lab_raw[o][:-1] == 1)))
    assert splits > 40  # the cases do exercise segments split by gaps


def test_best_f1_threshold_is_aiops_f1_at_its_threshold():
    rng = np.random.default_rng(7)
    checked = 0
    for _ in range(60):
        raw, delay = random_case(rng)
        lab, sc, miss, ids = pipeline_arrays(raw, rng)
        if not np.any(lab & ~miss):
            continue
        thr, best = M.best_f1_threshold(lab, sc, miss, metric="aiops_f1", series_ids=ids, delay=delay)
        assert best == M.aiops_f1(lab, sc >= thr, miss, ids, delay=delay)
        tp, fp, fn, *_ = reference_counts([(ts, lab_r, (s >= thr).astype(int)) for ts, lab_r, s in raw], delay)
        assert best == 2 * tp / (2 * tp + fp + fn)
        brute = max(M.aiops_f1(lab, sc >= t, miss, ids, delay=delay) or 0.0 for t in np.unique(sc[~miss]))
        assert best == brute
        checked += 1
    assert checked > 40
