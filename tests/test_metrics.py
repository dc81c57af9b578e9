"""pipeline.eval.metrics on small hand-computed cases (the computation is written beside each)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_curve

from pipeline.eval import metrics as M

# A 12-point series used by several tests.
#   index   0 1 2 3 4 5 6 7 8 9 10 11
#   label   0 0 1 1 1 1 0 0 1 1 0  0     events A = [2..5] (4 points), B = [8..9] (2 points)
#   alarm   0 0 0 0 1 0 0 0 0 0 0  1     alarm 4 is in A at offset 2; alarm 11 is a false positive
LAB = np.array([0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 0])
ALM = np.zeros(12, bool)
ALM[[4, 11]] = True


# ---------------------------------------------------------------------------- point-wise


def test_point_metrics_hand_case():
    # TP = {4}, FP = {11}, FN = {2, 3, 5, 8, 9}
    assert M.point_precision(LAB, ALM) == pytest.approx(1 / 2)
    assert M.point_recall(LAB, ALM) == pytest.approx(1 / 6)
    # F1 = 2TP / (2TP + FP + FN) = 2 / (2 + 1 + 5)
    assert M.point_f1(LAB, ALM) == pytest.approx(0.25)


def test_point_metrics_missing_mask_excludes_points():
    lab = np.array([1, 1, 0, 0])
    alm = np.array([1, 0, 1, 0], bool)
    # Without the mask: TP 1, FN 1, FP 1 -> F1 = 2 / (2 + 1 + 1) = 0.5
    assert M.point_f1(lab, alm) == pytest.approx(0.5)
    # Point 1 (a missed anomaly) missing: TP 1, FN 0, FP 1 -> P = 1/2, R = 1, F1 = 2/3
    miss = np.array([0, 1, 0, 0], bool)
    assert M.point_recall(lab, alm, miss) == pytest.approx(1.0)
    assert M.point_f1(lab, alm, miss) == pytest.approx(2 / 3)
    # Point 2 (the false alarm) missing as well: no FP left -> precision 1
    miss[2] = True
    assert M.point_precision(lab, alm, miss) == pytest.approx(1.0)


def test_point_metrics_undefined_is_none():
    lab = np.zeros(5, int)
    no_alarm = np.zeros(5, bool)
    assert M.point_precision(lab, no_alarm) is None  # 0 / 0
    assert M.point_recall(lab, no_alarm) is None
    assert M.point_f1(lab, no_alarm) is None
    # No positives but one alarm: F1 = 0 / (0 + 1 + 0) = 0, defined
    assert M.point_f1(lab, np.array([1, 0, 0, 0, 0], bool)) == 0.0


# ---------------------------------------------------------------------------- AIOps / PA / RPA


def test_aiops_f1_delay():
    # delay=1: A's detection window is [2, 3], no alarm there -> A's 4 points are FN; the late
    # alarm at 4 is inside A, so it is not an FP either. B missed -> 2 FN. FP = {11}.
    # F1 = 0 / (0 + 1 + 6) = 0
    assert M.aiops_f1(LAB, ALM, delay=1) == 0.0
    # delay=2: window [2, 4] holds the alarm -> A's 4 points TP; B 2 FN; 1 FP
    # F1 = 8 / (8 + 1 + 2) = 8/11
    assert M.aiops_f1(LAB, ALM, delay=2) == pytest.approx(8 / 11)
    # default delay=7 covers all of A: same as delay=2
    assert M.aiops_f1(LAB, ALM) == pytest.approx(8 / 11)


def test_aiops_f1_missing():
    # The published rule: a missing point is label 0 and never alarms, so a gap splits a segment.
    # The FP at 11 is missing: F1 = 8 / (8 + 0 + 2) = 0.8
    miss = np.zeros(12, bool)
    miss[11] = True
    assert M.aiops_f1(LAB, ALM, miss, delay=2) == pytest.approx(0.8)
    # The detecting alarm at 4 is missing: A splits into [2, 3] and [5], neither holding an alarm:
    # FN 2 + 1, B FN 2, FP 1: F1 = 0 / (0 + 1 + 5) = 0
    miss = np.zeros(12, bool)
    miss[4] = True
    assert M.aiops_f1(LAB, ALM, miss, delay=2) == 0.0
    # Point 2 missing: the segment is [3..5] and its delay-1 window [3, 4] holds the alarm at 4:
    # TP 3, B FN 2, FP 1 -> 6 / (6 + 1 + 2) = 2/3. (Before the published rule, A stayed [2..5]
    # with point 2 using up a slot of the window [2, 3], and F1 was 0.)
    miss = np.zeros(12, bool)
    miss[2] = True
    assert M.aiops_f1(LAB, ALM, miss, delay=1) == pytest.approx(2 / 3)
    # The label of a missing point is not read: label 1 or 0 there gives the same figure.
    lab = LAB.copy()
    lab[2] = 0
    assert M.aiops_f1(lab, ALM, miss, delay=1) == pytest.approx(2 / 3)


def test_a_gap_splits_an_aiops_segment_but_no_other_event():
    #   index   0 1 2 3 4 5 6 7 8 9
    #   label   0 1 1 0 1 1 1 1 0 0     point 3 missing (label 0 there, as regularise writes it)
    #   alarm   0 0 0 0 0 1 0 0 0 0
    lab = np.array([0, 1, 1, 0, 1, 1, 1, 1, 0, 0])
    alm = np.zeros(10, bool)
    alm[5] = True
    miss = np.zeros(10, bool)
    miss[3] = True
    # AIOps: segments [1, 2] (missed: FN 2) and [4..7] (alarm at offset 1: TP 4) -> 8 / (8 + 2)
    assert M.aiops_f1(lab, alm, miss, delay=1) == pytest.approx(0.8)
    # The others bridge the gap: one event [1..7], 6 observed points, detected.
    # PA: TP 6 -> 1.0; RPA: 1 event detected -> 1.0
    assert M.point_adjusted_f1(lab, alm, miss) == 1.0
    assert M.rpa_f1(lab, alm, miss) == 1.0
    # The label of a missing point is not read: label 1 at 3 gives the same figures.
    lab1 = lab.copy()
    lab1[3] = 1
    assert M.rpa_f1(lab1, alm, miss) == 1.0
    assert M.aiops_f1(lab1, alm, miss, delay=1) == pytest.approx(0.8)
    # A missing point at an event's edge is outside it: with 8 missing and labelled, the events
    # and counts are as before (an alarm there would not count either, being missing).
    lab1[8] = 1
    miss8 = miss.copy()
    miss8[8] = True
    alm8 = alm.copy()
    alm8[8] = True
    assert M.rpa_f1(lab1, alm8, miss8) == 1.0
    assert M.point_adjusted_f1(lab1, alm8, miss8) == 1.0
    miss[1:3] = True  # now [1..3] is all missing: no event there for any metric
    assert M.rpa_f1(lab1, alm, miss) == 1.0
    assert M.aiops_f1(lab1, alm, miss, delay=1) == 1.0


def test_aiops_f1_kpi_boundary():
    # Two KPIs of 5 points concatenated. KPI a ends with an anomaly [2..4] that nobody flags;
    # KPI b starts with an anomaly [5..7] flagged at its first point (index 5).
    lab = np.array([0, 0, 1, 1, 1, 1, 1, 1, 0, 0])
    alm = np.zeros(10, bool)
    alm[5] = True
    ids = np.array(["a"] * 5 + ["b"] * 5)
    # With boundaries: a's segment (3 pts) FN, b's segment (3 pts) TP: F1 = 6 / (6 + 0 + 3)
    assert M.aiops_f1(lab, alm, series_ids=ids, delay=2) == pytest.approx(2 / 3)
    # Without boundaries the two merge into one segment [2..7] whose alarm sits at offset 3 >
    # delay 2: all 6 points FN -> F1 = 0; with delay 7 the merged segment is detected -> 1.0.
    assert M.aiops_f1(lab, alm, delay=2) == 0.0
    assert M.aiops_f1(lab, alm, delay=7) == 1.0
    assert M.aiops_f1(lab, alm, series_ids=ids, delay=7) == pytest.approx(2 / 3)


def _aiops_reference(lab, alm, delay):
    """Loop transcription of the published ``get_range_proba`` (clipped window, an undetected
    segment set to 0) followed by sklearn's F1 -- the challenge's computation, for one KPI."""
    adj = alm.astype(int).copy()
    i, n = 0, len(lab)
    while i < n:
        if lab[i] == 1:
            j = i
            while j < n and lab[j] == 1:
                j += 1
            hit = alm[i:min(i + delay + 1, j)].any()
            adj[i:j] = 1 if hit else 0
            i = j
        else:
            i += 1
    return f1_score(lab, adj, zero_division=0)


def test_aiops_f1_matches_reference_loop_on_random_series():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(30, 200))
        lab = np.zeros(n, int)
        for a in rng.integers(0, n, 4):
            lab[a:a + int(rng.integers(1, 20))] = 1
        alm = rng.random(n) < 0.1
        delay = int(rng.integers(0, 10))
        ours = M.aiops_f1(lab, alm, delay=delay)
        assert (ours or 0.0) == pytest.approx(_aiops_reference(lab, alm, delay))


def test_point_adjusted_and_rpa_hand_case():
    # PA: any alarm anywhere in A -> A's 4 points TP; B 2 FN; FP 1 -> 8 / 11
    assert M.point_adjusted_f1(LAB, ALM) == pytest.approx(8 / 11)
    # RPA: events detected 1 (A), missed 1 (B), FP points 1
    # P = 1 / (1 + 1), R = 1 / 2, F1 = 0.5
    assert M.rpa_f1(LAB, ALM) == pytest.approx(0.5)
    # A fully missing event is dropped: B missing -> 1 event, detected; P = 1/2, R = 1 -> 2/3
    miss = np.zeros(12, bool)
    miss[8:10] = True
    assert M.rpa_f1(LAB, ALM, miss) == pytest.approx(2 / 3)


def test_point_adjusted_f1_inflation_on_random_scores():
    # 10 000 points, 10 anomalies of 200 points (20 % anomalous), uniform random scores, alarm
    # at the 99th percentile: about 1 % random alarms. Each 200-point event catches one with
    # probability 1 - 0.99**200 = 0.87, so PA-F1 credits ~87 % of all anomalous points to a
    # detector that knows nothing. Expected: PA-F1 ~ 0.9, point F1 ~ 0.02, RPA-F1 ~ 0.18.
    rng = np.random.default_rng(42)
    lab = np.zeros(10_000, int)
    for k in range(10):
        lab[500 + k * 950: 500 + k * 950 + 200] = 1
    scores = rng.random(lab.size)
    alarms = scores >= np.quantile(scores, 0.99)
    pa = M.point_adjusted_f1(lab, alarms)
    pf = M.point_f1(lab, alarms)
    rpa = M.rpa_f1(lab, alarms)
    assert M.auc_roc(lab, scores) == pytest.approx(0.5, abs=0.03)
    assert pa > 0.8
    assert pf < 0.05
    assert rpa < 0.3
    assert pa - pf > 0.75


# ---------------------------------------------------------------------------- AUCs


def test_auc_hand_case_and_missing():
    lab = np.array([0, 0, 1, 1])
    sc = np.array([0.1, 0.4, 0.35, 0.8])
    # pairs (pos, neg): (0.35, 0.1) ok, (0.35, 0.4) wrong, (0.8, *) ok -> 3/4
    assert M.auc_roc(lab, sc) == pytest.approx(0.75)
    # ranking 0.8 (+), 0.4 (-), 0.35 (+): AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert M.auc_pr(lab, sc) == pytest.approx(5 / 6)
    # the misranked negative missing: perfect ranking
    miss = np.array([0, 1, 0, 0], bool)
    assert M.auc_roc(lab, sc, miss) == 1.0
    assert M.auc_pr(lab, sc, miss) == 1.0
    # a NaN score is treated as missing
    assert M.auc_roc(lab, np.array([0.1, np.nan, 0.35, 0.8])) == 1.0


def test_auc_none_without_both_classes():
    assert M.auc_roc(np.zeros(4), np.arange(4.0)) is None
    assert M.auc_pr(np.zeros(4), np.arange(4.0)) is None
    assert M.auc_roc(np.ones(4), np.arange(4.0)) is None


# ---------------------------------------------------------------------------- VUS

VUS_LAB = np.zeros(30, int)
VUS_LAB[5:8] = 1
VUS_LAB[18:22] = 1
VUS_SC = np.array([0.1, 0.2, 0.1, 0.3, 0.6, 0.9, 0.4, 0.5, 0.2, 0.1,
                   0.7, 0.1, 0.2, 0.3, 0.1, 0.2, 0.4, 0.8, 0.3, 0.95,
                   0.6, 0.2, 0.1, 0.5, 0.1, 0.2, 0.3, 0.1, 0.2, 0.1])


def test_vus_pr_buffer_zero_by_hand():
    # sliding_window=0: no ramp, so P' = P = 7 and VUS-PR is a single range-PR area with
    # TPR = (TP/7) * (share of the 2 events hit). Thresholds at every rank (250 > 30 points);
    # repeated ones add nothing. Going down the distinct scores:
    #   0.95: alarms 1, TP 1 (B), events 1/2 -> TPR 1/14, prec 1     -> 1/14 * 1
    #   0.9 : alarms 2, TP 2 (A, B), 2/2     -> TPR 2/7,  prec 1     -> 3/14 * 1
    #   0.8, 0.7: no new TP
    #   0.6 : alarms 6, TP 3 -> TPR 3/7, prec 3/6                    -> 1/7 * 1/2
    #   0.5 : alarms 8, TP 4 -> TPR 4/7, prec 4/8                    -> 1/7 * 1/2
    #   0.4 : alarms 10, TP 5 -> TPR 5/7, prec 5/10                  -> 1/7 * 1/2
    #   0.3 : alarms 14, TP 6 -> TPR 6/7, prec 6/14                  -> 1/7 * 3/7
    #   0.2 : alarms 21, TP 7 -> TPR 1,   prec 7/21                  -> 1/7 * 1/3
    #   sum = 1/2 + 3/49 + 1/21 = 179/294
    assert M.vus_pr(VUS_LAB, VUS_SC, sliding_window=0) == pytest.approx(179 / 294, abs=1e-12)


def test_vus_matches_reference_implementation():
    # Expected numbers computed by the reference code: metricor().RangeAUC_volume_opt(
    #   labels_original=VUS_LAB, score=VUS_SC, windowSize=4, thre=250) from the PyPI package
    # vus 0.0.6 (TheDatumOrg/VUS, vus/utils/metrics.py), run with numpy 2.4 / scikit-learn 1.9;
    # it returned avg_auc_3d = 0.8883156122001287 (VUS-ROC), avg_ap_3d = 0.7294181194083665
    # (VUS-PR). The same comparison on 300 random series (ties, 0..30 buffers, 17..1000
    # thresholds) agreed to 4e-16 during development.
    roc, pr = M.range_auc_volumes(VUS_LAB, VUS_SC, sliding_window=4)
    assert pr == pytest.approx(0.7294181194083665, abs=1e-12)
    assert roc == pytest.approx(0.8883156122001287, abs=1e-12)
    assert M.vus_pr(VUS_LAB, VUS_SC, sliding_window=4) == pr
    assert M.vus_roc(VUS_LAB, VUS_SC, sliding_window=4) == roc


def test_vus_missing_point_far_from_events_equals_deleting_it():
    # Index 10 (score 0.7) lies outside every buffer of width 4 (ramps reach 3..9 and 16..23):
    # masking it is the same as removing it from the series.
    miss = np.zeros(30, bool)
    miss[10] = True
    masked = M.vus_pr(VUS_LAB, VUS_SC, miss, sliding_window=4)
    deleted = M.vus_pr(np.delete(VUS_LAB, 10), np.delete(VUS_SC, 10), sliding_window=4)
    assert masked == pytest.approx(deleted, abs=1e-12)
    assert masked > M.vus_pr(VUS_LAB, VUS_SC, sliding_window=4)  # a high-scoring FP is gone


def test_vus_ramps_stop_at_series_boundary():
    # An event at the end of KPI a; the high score at the start of KPI b would sit inside the
    # event's buffer if the series were one. With series ids it is a plain false positive.
    lab = np.array([0, 0, 0, 1, 1, 0, 0, 0])
    sc = np.array([0.1, 0.1, 0.2, 0.9, 0.3, 0.8, 0.1, 0.1])
    ids = np.array(list("aaaaabbb"))
    joined = M.vus_pr(lab, sc, sliding_window=4)
    split = M.vus_pr(lab, sc, series_ids=ids, sliding_window=4)
    assert split < joined


def test_vus_none_without_positives():
    assert M.vus_pr(np.zeros(10), np.arange(10.0), sliding_window=2) is None


# ---------------------------------------------------------------------------- NAB

# sigma(x) = 2 / (1 + exp(5x)) - 1 (NAB's scaled sigmoid); sigma(-1) = 0.986614
def _sig(x):
    return 2 / (1 + math.exp(5 * x)) - 1


def _alarms_at(n, *idx):
    a = np.zeros(n, bool)
    a[list(idx)] = True
    return a


# One series of 100 points, window [40, 49] (width 10); probation = floor(0.15 * 100) = 15.
WIN = [(40, 49)]


def test_nab_null_and_perfect():
    assert M.nab_probation_length(100) == 15
    assert M.nab_standard([(WIN, np.zeros(100, bool), None)]) == pytest.approx(0.0)
    # Perfect: alarm at the window start, reward sigma(-1)/sigma(-1) = 1 -> raw 1 = perfect
    assert M.nab_standard([(WIN, _alarms_at(100, 40), None)]) == pytest.approx(100.0)
    # Only the earliest detection in a window counts: a second, later one changes nothing
    assert M.nab_standard([(WIN, _alarms_at(100, 40, 45), None)]) == pytest.approx(100.0)


def test_nab_late_detection_earns_less():
    # Alarm at 45: position -(49 - 45 + 1)/10 = -0.5 -> reward sigma(-0.5)/sigma(-1) = 0.85979
    # normalised: 100 * (0.85979 - (-1)) / (1 - (-1)) = 92.99
    late = M.nab_standard([(WIN, _alarms_at(100, 45), None)])
    assert late == pytest.approx(100 * (_sig(-0.5) / _sig(-1) + 1) / 2)
    assert late == pytest.approx(92.99, abs=0.01)
    # Alarm at 49 (the last point): position -0.1, reward sigma(-0.1)/sigma(-1)
    last = M.nab_standard([(WIN, _alarms_at(100, 49), None)])
    assert last == pytest.approx(100 * (_sig(-0.1) / _sig(-1) + 1) / 2)
    assert 50 < last < late < 100


def test_nab_false_positives():
    # FP at 20, before any window: full -A_FP = -0.11; window missed -1. raw -1.11
    # normalised 100 * (-1.11 + 1) / 2 = -5.5
    assert M.nab_standard([(WIN, _alarms_at(100, 20), None)]) == pytest.approx(-5.5)
    # FP at 55 after a perfect detection: distance (55 - 49)/(10 - 1) = 2/3 past the window,
    # penalty 0.11 * sigma(2/3) = -0.10242; raw 1 - 0.10242
    s = M.nab_standard([(WIN, _alarms_at(100, 40, 55), None)])
    assert s == pytest.approx(100 * (1 + 0.11 * _sig(2 / 3) + 1) / 2)
    # Far behind (>= 3 window lengths) the full -A_FP: alarm at 49 + 27 = 76
    s = M.nab_standard([(WIN, _alarms_at(100, 40, 76), None)])
    assert s == pytest.approx(100 * (1 - 0.11 + 1) / 2)


def test_nab_probation_excluded():
    # An alarm at 10 (inside the 15-point probation) is ignored: same as the null detector.
    assert M.nab_standard([(WIN, _alarms_at(100, 10), None)]) == pytest.approx(0.0)
    # A window that ends inside probation is not scored: no window left -> undefined
    assert M.nab_standard([([(5, 10)], _alarms_at(100, 50), None)]) is None
    # Explicit probation of 45 points: the detection at 42 is ignored, the one at 47 counts
    s = M.nab_standard([(WIN, _alarms_at(100, 42, 47), 45)])
    assert s == pytest.approx(100 * (_sig(-0.3) / _sig(-1) + 1) / 2)


def test_nab_corpus_normalisation_and_inputs():
    labels = np.zeros(100, int)
    labels[40:50] = 1  # 0/1 labels give the same window as WIN
    perfect = (labels, _alarms_at(100, 40), None)
    missed = (WIN, np.zeros(100, bool), None)
    # raw 1 + (-1) = 0; null -2, perfect 2 -> 100 * (0 + 2) / 4 = 50
    assert M.nab_standard([perfect, missed]) == pytest.approx(50.0)
    # missing points never alarm: the detecting alarm masked -> null detector
    miss = np.zeros(100, bool)
    miss[40] = True
    assert M.nab_standard([(labels, _alarms_at(100, 40), None, miss)]) == pytest.approx(0.0)


def test_nab_best_threshold_is_the_sweep_maximum():
    rng = np.random.default_rng(3)
    series = []
    for _ in range(3):
        n = 300
        lab = np.zeros(n, int)
        for a in rng.integers(60, n - 30, 2):
            lab[a:a + 20] = 1
        sc = np.round(rng.random(n) + 0.6 * lab, 2)  # rounding creates ties
        series.append((lab, sc, None))
    thr, best = M.nab_best_threshold(series)
    at_thr = M.nab_standard([(lab, sc >= thr, p) for lab, sc, p in series])
    assert best == pytest.approx(at_thr)
    brute = max(M.nab_standard([(lab, sc >= t, p) for lab, sc, p in series])
                for t in np.unique(np.concatenate([s for _, s, _ in series])))
    assert best == pytest.approx(max(brute, 0.0))


# ---------------------------------------------------------------------------- best F1


def test_best_f1_threshold_hand_case():
    lab = np.array([0, 0, 1, 1])
    sc = np.array([0.1, 0.2, 0.8, 0.9])
    assert M.best_f1_threshold(lab, sc) == (0.8, 1.0)


def test_best_f1_threshold_matches_precision_recall_curve():
    rng = np.random.default_rng(1)
    lab = (rng.random(500) < 0.1).astype(int)
    sc = np.round(rng.random(500) + 0.5 * lab, 3)
    p, r, t = precision_recall_curve(lab, sc)
    f1 = np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0)[:-1]
    thr, best = M.best_f1_threshold(lab, sc)
    assert best == pytest.approx(f1.max())
    assert M.point_f1(lab, sc >= thr) == pytest.approx(best)


@pytest.mark.parametrize("metric", ["aiops_f1", "rpa_f1", "point_adjusted_f1"])
def test_best_f1_threshold_event_metrics_are_exact(metric):
    rng = np.random.default_rng(2)
    n = 400
    lab = np.zeros(n, int)
    for a in rng.integers(0, n - 30, 6):
        lab[a:a + int(rng.integers(2, 30))] = 1
    sc = np.round(rng.random(n) + 0.3 * lab, 2)
    miss = rng.random(n) < 0.05
    ids = np.repeat(["a", "b"], n // 2)
    fn = getattr(M, metric)
    thr, best = M.best_f1_threshold(lab, sc, miss, metric=metric, series_ids=ids)
    assert fn(lab, sc >= thr, miss, ids) == pytest.approx(best)
    brute = max(fn(lab, sc >= t, miss, ids) or 0.0 for t in np.unique(sc[~miss]))
    assert best == pytest.approx(brute)


def test_best_f1_threshold_needs_positives():
    with pytest.raises(ValueError, match="positive"):
        M.best_f1_threshold(np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="unknown metric"):
        M.best_f1_threshold(LAB, np.arange(12.0), metric="nope")


# ---------------------------------------------------------------------------- registry


def test_metrics_table_and_evaluate_all():
    assert {s.needs for s in M.METRICS.values()} == {"scores", "alarms"}
    assert M.METRICS["aiops_f1"].per_series and not M.METRICS["point_f1"].per_series
    scores = np.where(ALM, 0.9, 0.1)
    out = M.evaluate_all(LAB, scores, ALM, delay=2, vus_window=2)
    assert set(out) == set(M.METRICS)
    assert out["point_f1"] == pytest.approx(0.25)
    assert out["aiops_f1"] == pytest.approx(8 / 11)
    assert out["rpa_f1"] == pytest.approx(0.5)
    assert out["vus_pr"] == pytest.approx(M.vus_pr(LAB, scores, sliding_window=2))
    # probation = floor(0.15 * 12) = 1; window A detected at offset 2 of 4
    # (reward sigma(-0.5)/sigma(-1)), B missed (-1), FP at 11 after B:
    # distance (11 - 9)/(2 - 1) = 2 -> 0.11 * sigma(2)
    raw = _sig(-0.5) / _sig(-1) - 1 + 0.11 * _sig(2)
    assert out["nab_standard"] == pytest.approx(100 * (raw + 2) / 4)


def test_evaluate_all_not_applicable_is_none():
    lab = np.zeros(12, int)
    out = M.evaluate_all(lab, np.linspace(0, 1, 12), None)
    assert out["auc_roc"] is None and out["auc_pr"] is None and out["vus_pr"] is None
    assert all(out[k] is None for k, s in M.METRICS.items() if s.needs == "alarms")
    out = M.evaluate_all(LAB, None, ALM, series_ids=np.repeat(["a", "b"], 6), delay=2)
    assert out["auc_roc"] is None
    # with the KPI boundary at 6, A = [2..5] and B = [8..9] are unchanged
    assert out["aiops_f1"] == pytest.approx(8 / 11)


def test_vus_drops_an_event_that_was_never_observed():
    # Event A (5..7) entirely missing: it cannot be scored, so the result equals the one on
    # labels without A, with the same points missing.
    miss = np.zeros(30, bool)
    miss[5:8] = True
    without_a = VUS_LAB.copy()
    without_a[5:8] = 0
    got = M.vus_pr(VUS_LAB, VUS_SC, miss, sliding_window=4)
    assert got == pytest.approx(M.vus_pr(without_a, VUS_SC, miss, sliding_window=4), abs=1e-12)
    assert got != pytest.approx(M.vus_pr(VUS_LAB, VUS_SC, sliding_window=4))
