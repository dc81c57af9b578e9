"""Exact tests of models/windowing.py: window counts, starts, KPI boundaries, read-outs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.windowing import (covering_starts, covering_windows_by_kpi, last_position, n_windows,
                              scores_at_window_ends, sequence_window_starts, sliding_windows, spread_to_points,
                              window_starts, windows_at, windows_by_kpi)


def test_window_counts_and_shapes():
    assert n_windows(10, 4, 3) == 3 and n_windows(3, 4) == 0 and n_windows(4, 4) == 1
    w = sliding_windows(np.arange(10), 4, 3)
    assert w.shape == (3, 4) and w.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    assert sliding_windows(np.zeros((10, 2)), 4).shape == (7, 4, 2)
    assert sliding_windows(np.arange(3), 4).shape == (0, 4)
    with pytest.raises(ValueError):
        n_windows(10, 0)


def test_windows_never_cross_kpi_boundaries():
    ids = np.repeat([0, 1, 2], [7, 3, 5])  # KPI 1 is shorter than a window
    slices = [(str(k), slice(s, e)) for k, s, e in [(0, 0, 7), (1, 7, 10), (2, 10, 15)]]
    windows, starts = windows_by_kpi(ids, slices, 4)
    assert len(windows) == n_windows(7, 4) + n_windows(5, 4) == 6
    assert (windows == windows[:, :1]).all()  # every window holds one KPI only
    assert starts.tolist() == [0, 1, 2, 3, 10, 11]
    windows, starts = covering_windows_by_kpi(ids, slices, 4, stride=3)
    assert starts.tolist() == [0, 3, 10, 11] and (windows == windows[:, :1]).all()


def test_covering_starts_cover_the_tail():
    assert covering_starts(10, 4, 3).tolist() == [0, 3, 6]
    assert covering_starts(11, 4, 3).tolist() == [0, 3, 6, 7]
    assert covering_starts(3, 4, 3).tolist() == []
    for n in range(4, 40):
        for stride in (1, 3, 4):
            starts = covering_starts(n, 4, stride)
            covered = np.zeros(n, bool)
            covered[(starts[:, None] + np.arange(4)).ravel()] = True
            assert covered.all() and starts[-1] == n - 4 and (np.diff(starts) > 0).all()
    with pytest.raises(ValueError, match="stride <= length"):
        covering_starts(20, 4, 5)


def test_windows_at_and_sequence_starts():
    x = np.arange(20)
    assert windows_at(x, np.array([0, 5, 16]), 4).tolist() == [[0, 1, 2, 3], [5, 6, 7, 8], [16, 17, 18, 19]]
    with pytest.raises(ValueError):
        windows_at(x, np.array([17]), 4)
    assert sequence_window_starts(np.array([0, 5]), 3, 2).tolist() == [[0, 3], [5, 8]]
    assert window_starts(10, 4, 3).tolist() == [0, 3, 6]


def test_spread_to_points_hand_case():
    scores = np.array([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    starts = np.array([0, 2])
    mean = spread_to_points(scores, starts, 6, 3)
    np.testing.assert_array_equal(mean[:5], [1.0, 2.0, (3.0 + 10.0) / 2, 20.0, 30.0])
    assert np.isnan(mean[5])  # no window covers it
    np.testing.assert_array_equal(spread_to_points(scores, starts, 5, 3, reduce="max"), [1, 2, 10, 20, 30])
    np.testing.assert_array_equal(spread_to_points(np.array([5.0, 7.0]), starts, 5, 3), [5, 5, 6, 7, 7])


def test_scores_at_window_ends_hand_case():
    values = np.arange(10.0)
    slices = [("a", slice(0, 6)), ("b", slice(6, 8)), ("c", slice(8, 10))]  # b and c: shorter than a window
    seen = []

    def score_fn(windows):
        seen.append(windows.shape)
        return windows.sum(axis=1)
    out = scores_at_window_ends(values, slices, 3, score_fn)
    np.testing.assert_array_equal(out, [np.nan, np.nan, 3, 6, 9, 12, np.nan, np.nan, np.nan, np.nan])
    assert seen == [(4, 3)]  # one call per KPI with a window, on all of its windows (a view)
    two_d = scores_at_window_ends(np.stack([values, -values], 1), slices[:1], 3, lambda w: last_position(w))
    np.testing.assert_array_equal(two_d[2:6], [[2, -2], [3, -3], [4, -4], [5, -5]])  # the row each window ends on
    assert np.isnan(two_d[:2]).all() and two_d.shape == (10, 2)
    assert np.isnan(scores_at_window_ends(values, slices[1:], 3, score_fn)).all()
    assert last_position(torch.arange(6).reshape(2, 3)).tolist() == [2, 5]
