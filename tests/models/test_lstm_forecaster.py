"""Exact tests of models/lstm_forecaster.py: each row predicted from earlier rows of its KPI only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import registry
from models.frame import VALUE, kpi_slices
from models.windowing import covering_starts
from tests.models.conftest import CPU


@pytest.fixture(scope="module")
def forecaster(splits):
    return registry.create("lstm_forecaster", {"chunk_length": 64}, CPU).fit(splits[0], splits[1])


def test_forecaster_predicts_each_row_from_earlier_rows_of_its_kpi_only(forecaster, splits):
    test = splits[2]
    warm = forecaster.config.time_steps
    base = forecaster.predict(test)
    slices = kpi_slices(test)
    for _, sl in slices:
        assert np.isnan(base[sl][:warm]).all() and np.isfinite(base[sl][warm:]).all()
    (_, a), (_, b) = slices
    for t in (a.start + warm + 5, a.start + 200, a.start + 111, a.stop - 1):  # regular and tail chunks
        changed = test.copy()
        changed.loc[t, VALUE] += 5.0
        after = forecaster.predict(changed)
        np.testing.assert_array_equal(after[: t + 1], base[: t + 1])  # row t and earlier: unaffected
        np.testing.assert_array_equal(after[b], base[b])                # the other KPI: unaffected
        if t + 1 < a.stop:
            assert after[t + 1] != base[t + 1]                         # the next row reads row t


def test_forecaster_prediction_equals_a_direct_run_over_the_rows_before(forecaster, splits):
    test = splits[2]
    cfg = forecaster.config
    span, warm = cfg.time_steps + cfg.chunk_length, cfg.time_steps
    _, sl = kpi_slices(test)[0]
    values = test[VALUE].to_numpy(np.float32)[sl]
    n = len(values)
    starts = covering_starts(n, span, cfg.chunk_length)
    predictions = forecaster.predict(test)[sl]
    for t in (warm, warm + 1, span - 1, span, 3 * cfg.chunk_length + warm + 7, n - 1):
        # The documented rule: row t is read from the first chunk that predicts it.
        start = next(s for s in starts if s + warm <= t < s + span)
        with torch.inference_mode():
            direct = forecaster.module(torch.from_numpy(values[start:t].copy())[None])[0, -1].item()
        assert t - start >= warm
        assert predictions[t] == pytest.approx(direct, rel=1e-5, abs=1e-6)


def test_forecaster_score_is_normalised_by_validation_errors(forecaster, splits):
    val = splits[1]
    errors = np.abs(forecaster.predict(val) - val[VALUE].to_numpy())
    errors = errors[np.isfinite(errors)]
    assert forecaster.error_median == pytest.approx(np.median(errors))
    assert np.median(forecaster._score_core(val)[np.isfinite(forecaster.predict(val))]) == pytest.approx(0.0, abs=1e-9)
