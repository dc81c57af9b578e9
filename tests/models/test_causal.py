"""Causal scoring, across detectors: no score reads a later row, and each detector's causal read-out rule."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from models import registry
from models.frame import VALUE, kpi_slices
from tests.models.conftest import CPU, ConstantNet

# Short training: causality and the read-out rules do not depend on how well a detector learnt.
TINY = {
    "isolation_forest": {"n_estimators": 25},
    "lstm_forecaster": {"chunk_length": 64, "max_train_windows": 256},
    "vae_lstm": {"l_win": 24, "l_seq": 4, "max_train_windows": 512},  # a 96-row sequence fits the test split
    "stacked_gbdt": {"max_iter": 20},
}
SAME_PATH = {"windowed_gaussian", "diff_z", "robust_zscore", "seasonal_residual",  # causal as they are
             "spectral_residual", "stacked_gbdt", "sequence_novelty", "ensemble",
             "cnn_classifier", "convlstm_classifier"}
NO_KNOBS = {"windowed_gaussian", "diff_z", "robust_zscore", "seasonal_residual", "spectral_residual",
            "sequence_novelty", "ensemble"}  # no max_train_windows
RECONSTRUCTORS = ["lstm_autoencoder", "conv1d_autoencoder", "dense_autoencoder"]


@pytest.fixture(scope="module")
def tiny(splits):
    cache = {}

    def get(name):
        if name not in cache:
            default = None if name in NO_KNOBS else {"max_train_windows": 512}
            cache[name] = registry.create(name, TINY.get(name, default), CPU).fit(splits[0], splits[1])
        return cache[name]
    return get


@pytest.mark.parametrize("name", registry.names())
def test_causal_scores_use_no_later_row(name, tiny, splits):
    test = splits[2]
    detector = tiny(name)
    base = detector.score(test, causal=True)
    raw = detector._score_core(test, causal=True)
    assert base.dtype == np.float64 and base.shape == (len(test),) and np.isfinite(base).all()
    assert np.isfinite(raw[~np.isnan(raw)]).all() and (~np.isnan(raw)).sum() > len(test) // 2
    np.testing.assert_array_equal(detector.score(test, causal=False), detector.score(test))
    if name in SAME_PATH:
        np.testing.assert_array_equal(base, detector.score(test))
    (_, a), (_, b) = kpi_slices(test)
    for t in (a.start + 300, a.stop - 12, b.start + 250):
        changed = test.copy()
        changed.loc[t + 1:t + 10, VALUE] += 1000.0  # a huge spike just after t
        after_raw = detector._score_core(changed, causal=True)
        np.testing.assert_allclose(after_raw[: t + 1], raw[: t + 1], rtol=0, atol=1e-6)  # NaN where NaN
        after = detector.score(changed, causal=True)
        scored = ~np.isnan(raw[: t + 1])  # filled rows take the KPI minimum, later rows included
        np.testing.assert_allclose(after[: t + 1][scored], base[: t + 1][scored], rtol=0, atol=1e-6)
        assert (after_raw[t + 1:] != raw[t + 1:]).any()  # the spike is seen, from t + 1 on
        # A streaming detector that has seen rows up to t only: the frame cut after t scores the same.
        np.testing.assert_allclose(detector._score_core(test.iloc[: t + 1], causal=True), raw[: t + 1],
                                   rtol=0, atol=1e-6)
    with pytest.raises(TypeError, match="causal"):
        detector.score(test, causal="yes")


@pytest.mark.parametrize("name", RECONSTRUCTORS)
def test_causal_reconstruction_error_is_the_last_position_of_the_window_ending_at_t(name, tiny, splits):
    test = splits[2]
    detector = tiny(name)
    w = detector.config.window
    raw = detector._score_core(test, causal=True)
    values = test[VALUE].to_numpy(np.float32)
    for _, sl in kpi_slices(test):
        assert np.isnan(raw[sl][: w - 1]).all() and np.isfinite(raw[sl][w - 1:]).all()
        for t in (sl.start + w - 1, sl.start + 200, sl.stop - 1):
            with torch.inference_mode():
                recon = detector.module(torch.from_numpy(values[t - w + 1: t + 1].copy())[None])[0][0]
            assert raw[t] == pytest.approx(abs(recon[-1].item() - values[t]), rel=1e-5, abs=1e-6)


def test_causal_vae_lstm_predicts_the_last_window_of_the_sequence_ending_at_t(splits):
    detector = registry.create("vae_lstm", None, CPU)  # default l_win 48, l_seq 12; weights untrained
    detector.module = detector._build_module().eval()
    cfg, frame = detector.config, splits[0]  # 1,200 rows per KPI: at least one full sequence
    raw = detector._score_core(frame, causal=True)
    values = frame[VALUE].to_numpy(np.float32)
    for _, sl in kpi_slices(frame):
        assert np.isnan(raw[sl][: cfg.span - 1]).all() and np.isfinite(raw[sl][cfg.span - 1:]).all()
        for t in (sl.start + cfg.span - 1, sl.start + 700, sl.stop - 1):
            first = t - cfg.span + 1
            history = values[first: t + 1 - cfg.l_win].reshape(cfg.l_seq - 1, cfg.l_win)  # windows 0 .. l_seq - 2
            with torch.inference_mode():
                codes = detector.module.vae.encode(torch.from_numpy(history))[0]  # (l_seq - 1, code)
                window = detector.module.reconstruct_next(codes[None])[0, -1]   # the window ending at t
            assert raw[t] == pytest.approx(abs(window[-1].item() - values[t]), rel=1e-5, abs=1e-6)


def test_causal_isolation_forest_scores_the_feature_window_ending_at_t(tiny, splits):
    test = splits[2]
    detector = tiny("isolation_forest")
    w = detector.config.window
    raw = detector._score_core(test, causal=True)
    features = detector.point_features(test)
    for _, sl in kpi_slices(test):
        assert np.isnan(raw[sl][: w - 1]).all()
        ends = np.arange(sl.start + w - 1, sl.stop)
        windows = np.stack([features[t - w + 1: t + 1].ravel() for t in ends])
        np.testing.assert_allclose(raw[ends], -detector.sklearn_forest.score_samples(windows), rtol=0, atol=1e-12)


def test_causal_forecaster_reads_chunks_on_the_fixed_grid(tiny, splits):
    test = splits[2]
    detector = tiny("lstm_forecaster")
    cfg = detector.config
    warm, step = cfg.time_steps, cfg.chunk_length
    _, sl = kpi_slices(test)[0]
    values = test[VALUE].to_numpy(np.float32)[sl]
    n = len(values)
    # The trained LSTM forgets fast, so its predictions hardly show where a chunk starts. This stand-in
    # predicts the sum of its chunk so far: the prediction of row t is sum(values[chunk start .. t - 1]).
    stand_in = copy.copy(detector)
    stand_in.module = ConstantNet(lambda x: torch.cumsum(x.double(), 1).float())
    causal, offline = stand_in.predict(test, causal=True)[sl], stand_in.predict(test)[sl]
    rows = np.arange(warm, n)
    grid = (rows - warm) // step * step  # row t reads from the chunk of the fixed grid that predicts it
    cumsum = np.concatenate([[0.0], np.cumsum(values, dtype=np.float64)])
    assert np.isnan(causal[:warm]).all()
    np.testing.assert_allclose(causal[rows], cumsum[rows] - cumsum[grid], rtol=1e-6, atol=1e-4)
    tail = n - cfg.span  # the offline rule's last chunk ends on the KPI's last row instead
    assert tail % step and abs(offline[n - 1] - (cumsum[n - 1] - cumsum[tail])) < 1e-3
    assert abs(offline[n - 1] - causal[n - 1]) > 1e-2
    for t in (warm + 5, tail + warm + 3, n - 12):  # a streaming forecaster that has seen rows up to t
        np.testing.assert_allclose(stand_in.predict(test.iloc[: t + 1], causal=True), causal[: t + 1], rtol=1e-6)
    causal = detector.predict(test, causal=True)[sl]
    for t in (warm, step + warm - 1, step + warm, n - 1):
        start = (t - warm) // step * step
        with torch.inference_mode():
            direct = detector.module(torch.from_numpy(values[start:t].copy())[None])[0, -1].item()
        assert causal[t] == pytest.approx(direct, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name, config", [("windowed_gaussian", {"window": 50}), ("diff_z", None),
                                          ("seasonal_residual", {"day": "1h", "week": "2h"})])
def test_reference_rules_are_causal_and_prefix_invariant(name, config, splits):
    train, val, test = splits
    detector = registry.create(name, config).fit(train, val)
    full = detector._score_core(test)
    np.testing.assert_array_equal(detector.score(test, causal=True), detector.score(test))
    np.testing.assert_array_equal(detector._score_core(test, causal=True), full)
    for t in (1, 2, 37, 400, len(test) - 2):  # a cut inside the first KPI and inside the second
        np.testing.assert_array_equal(detector._score_core(test.iloc[: t + 1]), full[: t + 1])
    changed = test.copy()
    changed.loc[401:, VALUE] += 1000.0
    np.testing.assert_array_equal(detector._score_core(changed)[:401], full[:401])
