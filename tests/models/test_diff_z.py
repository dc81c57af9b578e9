"""Exact tests of models/diff_z.py."""
from __future__ import annotations

import json

import numpy as np
import pytest

from models import registry
from models.frame import KPI_ID, MISSING
from tests.models.conftest import tiny_frame


def test_diff_z_hand_case_and_unseen_kpi(tmp_path):
    train = tiny_frame({"a": [0, 1, 3, 4, 8], "b": [0, 2, 4, 6], "c": [0, 2, 3, 50, 6, 10]})
    train.loc[(train[KPI_ID] == "c").to_numpy().nonzero()[0][3], MISSING] = True  # c's 50 was interpolated
    detector = registry.create("diff_z", {"min_scale": 0.01}).fit(train)
    # a: d = [1, 2, 1, 4], median 1.5, MAD 0.5; b: d = [2, 2, 2], MAD 0 -> floor 0.01;
    # c: the two differences touching the missing point and the a/b, b/c boundaries are left out:
    # d = [2, 1, 4], median 2, MAD 1
    expected = {"a": 1.4826 * 0.5, "b": 0.01, "c": 1.4826}
    assert detector.scales == pytest.approx(expected, rel=1e-12)
    assert detector.global_scale == pytest.approx(1.4826 * 0.5, rel=1e-12)  # median over KPIs
    frame = tiny_frame({"a": [0, 5, 4], "c": [0, 1.4826], "z": [1, 4]})  # z: not in training
    raw = detector._score_core(frame)
    np.testing.assert_allclose(raw, [np.nan, 5 / 0.7413, 1 / 0.7413, np.nan, 1.0, np.nan, 3 / 0.7413], rtol=1e-12)
    np.testing.assert_allclose(detector.score(frame)[[0, 3, 5]], [1 / 0.7413, 1.0, 3 / 0.7413], rtol=1e-12)
    loaded = registry.load(detector.save(tmp_path))  # the nested scales survive config.json
    assert loaded.scales == detector.scales and loaded.global_scale == detector.global_scale
    np.testing.assert_array_equal(loaded.score(frame), detector.score(frame))
    saved = json.loads((tmp_path / "config.json").read_text())["fitted"]
    assert saved == {"scales": detector.scales, "global_scale": detector.global_scale}
