"""pipeline.eval.bootstrap: segment outcomes equal the metrics, paired draws, intervals."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.eval import bootstrap as B
from pipeline.eval import metrics as M

# Two KPIs of 10 points (a, b) and one without any label (c).
#   index   0 1 2 3 4 5 6 7 8 9 | 10 11 12 13 14 15 16 17 18 19 | 20..24
#   label   0 1 1 0 1 1 1 0 0 0 |  1  1  1  1  0  0  0  0  1  0 | 0
#   missing       3             |                               |
#   alarm   0 0 0 0 0 1 0 0 1 0 |  0  0  0  1  0  0  1  0  0  0 | 22
LAB = np.zeros(25, int)
LAB[[1, 2, 4, 5, 6, 10, 11, 12, 13, 18]] = 1
MISS = np.zeros(25, bool)
MISS[3] = True
ALM = np.zeros(25, bool)
ALM[[5, 8, 13, 16, 22]] = True
IDS = np.repeat(["a", "b", "c"], [10, 10, 5])


def test_outcomes_hand_case():
    # aiops, delay 1: a's segments [1, 2] (missed), [4..6] (alarm 5 at offset 1: TP 3);
    # b's [10..13] (alarm 13 at offset 3 > 1: missed, FN 4), [18] (missed); FP 8, 16, 22.
    out = B.segment_outcomes(LAB, ALM, MISS, IDS, metric="aiops_f1", delay=1)
    assert out.kpi.tolist() == [0, 0, 1, 1]
    assert out.tp.tolist() == [0, 3, 0, 0] and out.fn.tolist() == [2, 0, 4, 1] and out.fp == 3
    # PA: the gap at 3 is bridged: a's event [1..6] (5 observed points) detected, b's [10..13]
    # detected (alarm 13), [18] missed.
    out = B.segment_outcomes(LAB, ALM, MISS, IDS, metric="point_adjusted_f1")
    assert out.kpi.tolist() == [0, 1, 1]
    assert out.tp.tolist() == [5, 4, 0] and out.fn.tolist() == [0, 0, 1] and out.fp == 3
    # point: the same events, each crediting its alarmed points
    out = B.segment_outcomes(LAB, ALM, MISS, IDS, metric="point_f1")
    assert out.tp.tolist() == [1, 1, 0] and out.fn.tolist() == [4, 3, 1] and out.fp == 3


@pytest.mark.parametrize("metric", B.BOOTSTRAP_METRICS)
def test_identity_resample_equals_the_metric_exactly(metric):
    rng = np.random.default_rng(3)
    fn = {"aiops_f1": lambda *a: M.aiops_f1(*a, delay=3), "point_f1": lambda lab, al, miss, ids:
          M.point_f1(lab, al, miss), "point_adjusted_f1": M.point_adjusted_f1}[metric]
    for _ in range(100):
        n = int(rng.integers(5, 120))
        lab = (rng.random(n) < rng.choice([0.05, 0.3, 0.7])).astype(int)
        alm = rng.random(n) < 0.2
        miss = rng.random(n) < 0.15
        ids = np.sort(rng.integers(0, 4, n))
        out = B.segment_outcomes(lab, alm, miss, ids, metric=metric, delay=3)
        f1 = B._resampled_f1(out, np.arange(out.kpi.size)[None, :])[0]
        expected = fn(lab, alm, miss, ids)
        assert (None if np.isnan(f1) else f1) == expected
        tp, fn_ = int(out.tp.sum()), int(out.fn.sum())
        assert (None if 2 * tp + out.fp + fn_ == 0 else 2 * tp / (2 * tp + out.fp + fn_)) == expected


def test_draws_depend_on_the_labels_only():
    other = np.zeros(25, bool)
    other[[1, 11, 18, 20]] = True
    a = B.segment_outcomes(LAB, ALM, MISS, IDS)
    b = B.segment_outcomes(LAB, other, MISS, IDS)
    assert np.array_equal(a.kpi, b.kpi)
    draws = B.segment_draws(np.bincount(a.kpi), draws=50, seed=7)
    assert np.array_equal(draws, B.segment_draws(np.bincount(b.kpi), draws=50, seed=7))
    # bootstrap_f1 uses exactly those draws, for either detector: a paired comparison
    assert np.array_equal(B.bootstrap_f1(a, 50, seed=7), B._resampled_f1(a, draws), equal_nan=True)
    assert np.array_equal(B.bootstrap_f1(b, 50, seed=7), B._resampled_f1(b, draws), equal_nan=True)
    assert not np.array_equal(draws, B.segment_draws(np.bincount(a.kpi), draws=50, seed=8))


def test_draws_stay_within_each_kpi_and_an_empty_kpi_contributes_none():
    draws = B.segment_draws(np.array([2, 0, 3, 1]), draws=400, seed=0)
    assert draws.shape == (400, 6) and draws.dtype.kind == "i"
    assert set(np.unique(draws[:, :2])) == {0, 1}
    assert set(np.unique(draws[:, 2:5])) == {2, 3, 4}
    assert set(np.unique(draws[:, 5])) == {5}
    # a KPI without segment takes no column and no random number
    assert np.array_equal(draws, B.segment_draws(np.array([2, 3, 1]), draws=400, seed=0))
    # nor does it in outcomes: KPI c has no segment, and b's codes are 1 either way
    assert B.segment_outcomes(LAB, ALM, MISS, IDS).kpi.max() == 1
    assert B.segment_draws(np.array([0, 0]), draws=3).shape == (3, 0)
    with pytest.raises(ValueError, match="counts"):
        B.segment_draws(np.array([1, -1]))
    with pytest.raises(ValueError, match="draws"):
        B.segment_draws(np.array([1]), draws=0)


def test_bootstrap_nan_where_undefined_and_fixed_fp():
    none = B.SegmentOutcomes(kpi=np.zeros(0, np.int64), tp=np.zeros(0, np.int64), fn=np.zeros(0, np.int64), fp=0)
    assert np.isnan(B.bootstrap_f1(none, draws=4)).all()
    fp_only = B.SegmentOutcomes(kpi=np.zeros(0, np.int64), tp=np.zeros(0, np.int64), fn=np.zeros(0, np.int64), fp=2)
    assert B.bootstrap_f1(fp_only, draws=4).tolist() == [0.0] * 4
    # one segment, detected, 3 points, 1 FP: every resample is that segment: 6 / (6 + 1)
    one = B.SegmentOutcomes(kpi=np.array([0]), tp=np.array([3]), fn=np.array([0]), fp=1)
    assert B.bootstrap_f1(one, draws=5).tolist() == pytest.approx([6 / 7] * 5)
    with pytest.raises(ValueError, match="grouped by KPI"):
        B.SegmentOutcomes(kpi=np.array([1, 0]), tp=np.array([1, 1]), fn=np.array([0, 0]), fp=0)
    with pytest.raises(ValueError, match="unknown bootstrap metric"):
        B.segment_outcomes(LAB, ALM, metric="rpa_f1")


def test_interval_covers_the_point_figure():
    # 40 segments of 2 points on one KPI, half detected, 10 FP: TP 40, FN 40 -> F1 = 80 / (80 + 10 + 40)
    out = B.SegmentOutcomes(kpi=np.zeros(40, np.int64), tp=np.tile([2, 0], 20), fn=np.tile([0, 2], 20), fp=10)
    point = 80 / 130
    values = B.bootstrap_f1(out, draws=500, seed=1)
    lo, hi = B.interval(values, 0.9)
    assert lo < point < hi and hi - lo < 0.3
    assert B.interval(values, 0.5)[1] - B.interval(values, 0.5)[0] < hi - lo


def test_interval_is_nan_aware():
    assert B.interval(np.array([np.nan, 1.0, 2.0, 3.0, np.nan]), 0.5) == (1.5, 2.5)
    assert B.interval(np.array([np.nan, np.nan])) is None
    assert B.interval(np.array([])) is None
    with pytest.raises(ValueError, match="level"):
        B.interval(np.array([1.0]), 1.0)
