"""Exact tests of models/base.py: the uncovered-point fill, TrainConfig, FixedRule's threads."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from models import registry
from models.base import TrainConfig, fill_uncovered
from models.frame import KPI_ID, TIMESTAMP, kpi_slices
from tests.models.conftest import CPU, tiny_frame


def test_fill_uncovered_uses_the_kpi_minimum():
    frame = tiny_frame({"a": [0] * 4, "b": [0] * 3, "c": [0] * 2})
    raw = np.array([np.nan, np.nan, 5.0, 3.0, np.nan, 9.0, 8.0, np.nan, np.nan])
    np.testing.assert_array_equal(fill_uncovered(raw, frame), [3, 3, 5, 3, 8, 9, 8, 3, 3])  # c: frame min
    assert fill_uncovered(np.full(9, np.nan), frame).tolist() == [0.0] * 9
    with pytest.raises(RuntimeError, match="infinite"):
        fill_uncovered(np.full(9, np.inf), frame)


def test_points_before_the_first_window_get_the_kpi_minimum(splits):
    train, val, test = splits
    detector = registry.create("lstm_forecaster", {"chunk_length": 64}, CPU).fit(train, val)
    raw, scores = detector._score_core(test), detector.score(test)
    warm = detector.config.time_steps
    for _, sl in kpi_slices(test):
        assert np.isnan(raw[sl][:warm]).all() and np.isfinite(raw[sl][warm:]).all()
        assert (scores[sl][:warm] == np.nanmin(raw[sl])).all()
        np.testing.assert_array_equal(scores[sl][warm:], raw[sl][warm:])


def test_train_config_validation():
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    with pytest.raises(ValueError, match="unknown key 'epochs'"):
        TrainConfig.from_dict({"epochs": 3})
    with pytest.raises(TypeError, match="batch_size"):
        TrainConfig(batch_size="big")
    assert TrainConfig(learning_rate=1).learning_rate == 1.0 and isinstance(TrainConfig(learning_rate=1).learning_rate, float)


@pytest.mark.parametrize("name", ["robust_zscore", "seasonal_residual", "spectral_residual", "windowed_gaussian"])
def test_fixed_rules_score_the_same_on_one_thread_and_on_several(name, splits):
    from models.base import FixedRule
    train, val, test = splits
    frame = pd.concat([train, val, test]).sort_values([KPI_ID, TIMESTAMP]).reset_index(drop=True)
    detector = registry.create(name, None, CPU).fit(train, val)
    assert isinstance(detector, FixedRule) and frame[KPI_ID].nunique() > 1
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = detector.score(frame)
        torch.set_num_threads(3)  # more threads than this test's KPIs: one KPI per thread
        several = detector.score(frame)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(one, several)
