"""Exact tests of models/windowed_gaussian.py (NAB's reference rule)."""
from __future__ import annotations

import numpy as np

from models import registry
from tests.models.conftest import tiny_frame


def test_windowed_gaussian_hand_case():
    frame = tiny_frame({"a": [1, 3, 5, 0, 10], "b": [2, 2, 2, 5]})
    detector = registry.create("windowed_gaussian").fit(frame)
    raw = detector._score_core(frame)
    # a: t=2 reads [1, 3] (mean 2, population std 1); t=3 reads [1, 3, 5]; t=4 reads [1, 3, 5, 0]
    expected_a = [np.nan, np.nan, 3.0, 3.0 / np.sqrt(8 / 3), 7.75 / np.sqrt(3.6875)]
    # b: a constant history has std 0, floored at min_std = 1e-6
    expected_b = [np.nan, np.nan, 0.0, 3.0 / 1e-6]
    np.testing.assert_allclose(raw, expected_a + expected_b, rtol=1e-12)
    s = detector.score(frame)  # the first two rows of each KPI take that KPI's minimum
    np.testing.assert_allclose(s[[0, 1, 5, 6]], [min(expected_a[2:])] * 2 + [0.0, 0.0], rtol=1e-12)
    small = registry.create("windowed_gaussian", {"window": 2}).fit(frame)
    # window 2: t=3 reads [3, 5] (mean 4, std 1), t=4 reads [5, 0] (mean 2.5, std 2.5)
    np.testing.assert_allclose(small._score_core(frame)[:5], [np.nan, np.nan, 3.0, 4.0, 3.0], rtol=1e-12)
