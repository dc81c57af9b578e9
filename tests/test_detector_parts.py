"""Exact tests of the distinctive parts: windowing, the uncovered-point fill, masked losses, the
class-balanced sampler, the forecaster's alignment, the VAE-LSTM's sequences, the isolation-forest
export, device selection, the training loop's holdout/checkpoint and causal scoring."""
from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from models import registry
from models.base import SkipDetector, TrainConfig, fill_uncovered
from models.frame import KPI_ID, LABEL, MISSING, TIMESTAMP, VALUE, kpi_slices
from models.torch_base import balanced_sampler, masked_mse, resolve_device
from models.stacked_gbdt import class_balanced, onset_weights
from models.windowing import (covering_starts, covering_windows_by_kpi, last_position, n_windows,
                              scores_at_window_ends, sequence_window_starts, sliding_windows, spread_to_points,
                              window_starts, windows_at, windows_by_kpi)
from tests.detector_data import make_splits

CPU = TrainConfig(device="cpu", seed=0, max_epochs=2, patience=2, progress=False)


@pytest.fixture(scope="module")
def splits():
    return make_splits(n_kpis=2, n_points=2000)


def tiny_frame(values_per_kpi: dict[str, list[float]]) -> pd.DataFrame:
    parts = [pd.DataFrame({KPI_ID: k, TIMESTAMP: pd.date_range("2026-01-01", periods=len(v), freq="5min", tz="UTC"),
                           VALUE: np.asarray(v, float), MISSING: False}) for k, v in values_per_kpi.items()]
    return pd.concat(parts, ignore_index=True)


# -- windowing ----------------------------------------------------------------------------------
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


# -- the uncovered-point fill ---------------------------------------------------------------------
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


# -- masked losses ----------------------------------------------------------------------------------
def test_masked_mse_ignores_masked_points():
    pred, target = torch.zeros(2, 5), torch.ones(2, 5)
    observed = torch.ones(2, 5)
    observed[1, 3] = 0
    base = masked_mse(pred, target, observed)
    for huge in (1e6, float("inf"), float("nan")):
        poisoned = target.clone()
        poisoned[1, 3] = huge
        assert masked_mse(pred, poisoned, observed).item() == base.item() == 1.0
    assert masked_mse(pred, target, torch.zeros(2, 5)).item() == 0.0


class ConstantNet(nn.Module):
    """Ignores its input, so only the targets can move the loss."""

    def __init__(self, shape_fn):
        super().__init__()
        self.shape_fn = shape_fn

    def forward(self, x):
        return self.shape_fn(x)


@pytest.mark.parametrize("name, net", [
    ("lstm_forecaster", ConstantNet(lambda x: torch.zeros_like(x))),
    ("dense_autoencoder", ConstantNet(lambda x: (torch.zeros_like(x), torch.zeros(len(x), 3)))),
    # logits read only the window's last point, so the poisoned point moves one window's loss term
    ("cnn_classifier", ConstantNet(lambda x: torch.stack([torch.zeros(len(x)), x[:, -1]], 1))),
])
def test_a_masked_point_with_a_huge_value_does_not_change_the_loss(name, net, splits):
    train = splits[0].iloc[:400].copy()
    row = 300
    train.loc[row, MISSING] = True
    detector = registry.create(name, None, CPU)
    base = detector._loss(net.eval(), list(detector._train_tensors(train))).item()
    train.loc[row, VALUE] = 1e6
    assert detector._loss(net.eval(), list(detector._train_tensors(train))).item() == base
    train.loc[row, MISSING] = False  # the same point, observed: now it counts
    assert detector._loss(net.eval(), list(detector._train_tensors(train))).item() != base


def test_vae_lstm_losses_mask_missing_targets():
    detector = registry.create("vae_lstm", {"l_seq": 3}, CPU)
    detector.module = detector._build_module().eval()
    vae = ConstantNet(lambda x: (torch.zeros_like(x), torch.zeros(len(x), 6), torch.zeros(len(x), 6)))
    x, observed = torch.ones(4, 48), torch.ones(4, 48)
    observed[2, 10] = 0
    base = detector._vae_loss(vae, [x, observed]).item()
    x[2, 10] = 1e6
    assert detector._vae_loss(vae, [x, observed]).item() == base == 1.0
    codes, full = torch.zeros(4, 3, 6), torch.ones(4, 3)
    full[1, 2] = 0
    base = detector._lstm_loss(detector.module.predictor, [codes, full]).item()
    codes[1, 2] = 1e6  # the last embedding is only ever a target
    assert detector._lstm_loss(detector.module.predictor, [codes, full]).item() == base


# -- the class-balanced sampler --------------------------------------------------------------------
def test_balanced_sampler_weights():
    labels = np.array([0, 0, 0, 1, 1, 0])
    sampler = balanced_sampler(labels, num_samples=20_000, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(sampler.weights.numpy(), [1 / 4, 1 / 4, 1 / 4, 1 / 2, 1 / 2, 1 / 4])
    assert sampler.weights[labels == 0].sum() == pytest.approx(sampler.weights[labels == 1].sum())
    drawn = labels[np.fromiter(iter(sampler), int)]
    assert abs(drawn.mean() - 0.5) < 0.02


def test_classifier_skips_when_no_window_ends_on_a_positive(splits):
    train = splits[0].copy()
    first_rows = np.concatenate([np.arange(sl.start, sl.start + 10) for _, sl in kpi_slices(train)])
    train[LABEL] = np.int8(0)
    train.loc[first_rows, LABEL] = 1  # positives only where no full window ends
    with pytest.raises(SkipDetector, match="no train window ends on a positive"):
        registry.create("cnn_classifier", None, CPU).fit(train)


# -- the forecaster's alignment ---------------------------------------------------------------------
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


# -- VAE-LSTM -------------------------------------------------------------------------------------
def test_vae_lstm_sequence_shapes(splits):
    detector = registry.create("vae_lstm", None, CPU)
    cfg = detector.config
    detector.module = detector._build_module().eval()
    assert isinstance(detector.module.predictor.lstm, nn.LSTM)
    assert (detector.module.predictor.lstm.num_layers, detector.module.predictor.lstm.hidden_size) == (3, 64)
    test = splits[0]  # the test split is shorter than one sequence (l_win * l_seq = 576 points)
    _, sl = kpi_slices(test)[0]
    n = sl.stop - sl.start
    values, observed = test[VALUE].to_numpy(np.float32)[sl], (~test[MISSING].to_numpy())[sl].astype(np.float32)
    seq_starts = covering_starts(n, cfg.span, cfg.score_stride)
    codes, full, starts = detector.sequences(values, observed, seq_starts)
    assert codes.shape == (len(seq_starts), cfg.l_seq, cfg.code_size)
    assert full.shape == starts.shape == (len(seq_starts), cfg.l_seq)
    assert (np.diff(starts, axis=1) == cfg.l_win).all() and (starts[:, 0] == seq_starts).all()
    assert starts[-1, -1] + cfg.l_win == n  # the last sequence ends on the KPI's last row
    # A window's code does not depend on the sequence it sits in.
    direct = detector.module.vae.encode(torch.from_numpy(values[starts[0, 3]:starts[0, 3] + cfg.l_win].copy())[None])[0]
    np.testing.assert_allclose(codes[0, 3], direct[0].detach().numpy(), rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        recon = detector.module.reconstruct_next(torch.from_numpy(codes[:, :-1]))
    assert recon.shape == (len(seq_starts), cfg.l_seq - 1, cfg.l_win)
    train_codes, train_full = detector._sequence_tensors(splits[0])
    per_kpi = sum(n_windows(s.stop - s.start, cfg.span, cfg.train_stride) for _, s in kpi_slices(splits[0]))
    assert train_codes.shape == (per_kpi, cfg.l_seq, cfg.code_size) and train_full.shape == (per_kpi, cfg.l_seq)


def test_vae_lstm_trains_in_two_phases(splits):
    detector = registry.create("vae_lstm", {"max_train_windows": 512}, CPU).fit(splits[0], splits[1])
    phases = [h["phase"] for h in detector.history]
    assert phases == sorted(phases, key=["vae", "lstm"].index) and set(phases) == {"vae", "lstm"}


# -- isolation forest export ----------------------------------------------------------------------
def test_isolation_forest_export_matches_sklearn(splits, tmp_path):
    train, val, test = splits
    detector = registry.create("isolation_forest", {"n_estimators": 25}, CPU).fit(train, val)
    forest = detector.sklearn_forest
    windows, _ = detector.windows(test, stride=1)
    expected = -forest.score_samples(windows)
    np.testing.assert_allclose(detector.score_windows(windows), expected, rtol=0, atol=1e-12)
    detector.save(tmp_path)
    loaded = registry.load(tmp_path)
    assert loaded.sklearn_forest is None
    np.testing.assert_allclose(loaded.score_windows(windows), expected, rtol=0, atol=1e-12)
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert set(state) == {"children_left", "children_right", "feature", "threshold", "n_node_samples"}
    assert state["children_left"].shape[0] == 25


# -- device and training loop ---------------------------------------------------------------------
def test_device_selection_honours_cpu(splits):
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    detector = registry.create("dense_autoencoder", None, CPU).fit(splits[0])
    assert detector.device == "cpu"
    assert all(p.device.type == "cpu" for p in detector.module.parameters())
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="gpu")


def test_holdout_early_stopping_and_checkpoint(splits, tmp_path):
    config = TrainConfig(device="cpu", max_epochs=30, patience=1, progress=False, checkpoint_dir=str(tmp_path))
    detector = registry.create("dense_autoencoder", None, config).fit(splits[0], None)  # val: last 10%
    losses = [h["val_loss"] for h in detector.history]
    assert all(np.isfinite(losses)) and len(losses) <= 30
    best = torch.load(tmp_path / "dense_autoencoder.best.pt", weights_only=True)
    for key, value in detector.module.state_dict().items():
        torch.testing.assert_close(best[key], value)  # the best epoch is restored and checkpointed
    if len(losses) < 30:  # stopped early (patience 1): the last epoch did not improve on the best
        assert losses[-1] >= min(losses[:-1])


def test_train_config_validation():
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    with pytest.raises(ValueError, match="unknown key 'epochs'"):
        TrainConfig.from_dict({"epochs": 3})
    with pytest.raises(TypeError, match="batch_size"):
        TrainConfig(batch_size="big")
    assert TrainConfig(learning_rate=1).learning_rate == 1.0 and isinstance(TrainConfig(learning_rate=1).learning_rate, float)


# -- causal scoring ------------------------------------------------------------------------------
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


def test_cnn_classifier_sees_the_point_it_scores():
    """The last point of a window (the one being scored) must reach the output through the pooling."""
    import torch

    from models.cnn_classifier import CnnClassifierConfig, CnnClassifierNet

    torch.manual_seed(0)
    net = CnnClassifierNet(CnnClassifierConfig()).eval()
    x = torch.randn(4, CnnClassifierConfig().window)
    y = x.clone()
    y[:, -1] += 100.0
    with torch.no_grad():
        assert not torch.allclose(net(x), net(y))


# -- the fixed reference rules: windowed_gaussian and diff_z ----------------------------------------
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


# -- seasonal residual --------------------------------------------------------------------------------
def test_seasonal_residual_baseline_and_scale_hand_case():
    from models.seasonal_residual import row_nanmedian, seasonal_baseline
    np.testing.assert_array_equal(row_nanmedian(np.array([[3.0, np.nan, 1.0], [np.nan] * 3, [4.0, 2.0, 9.0]])),
                                  [2.0, np.nan, 4.0])
    # 1-minute grid, "day" = 4 minutes, "week" = 8 minutes: a period-4 pattern with one spike at t = 13
    pattern = np.tile([0.0, 1.0, 2.0, 1.0], 5)
    values = pattern.copy()
    values[13] += 10.0
    obs = values.copy()
    base = seasonal_baseline(obs, [4, 8], neighbours=0, fallback_window=2)
    # t < 4: trailing median of up to 2 values (t = 0 has none); t >= 4: median of x[t-4] (and x[t-8])
    np.testing.assert_array_equal(base[:4], [np.nan, 0.0, 0.5, 1.5])
    np.testing.assert_array_equal(base[4:13], pattern[4:13])
    assert base[13] == 1.0 and base[17] == 6.0  # the spike is a candidate a "day" later (median of 11, 1)
    frame = pd.DataFrame({KPI_ID: "a", TIMESTAMP: pd.date_range("2026-01-01", periods=20, freq="1min", tz="UTC"),
                          VALUE: values, MISSING: False})
    detector = registry.create("seasonal_residual", {"day": "4min", "week": "8min", "days": 1, "neighbours": 0,
                                                      "fallback_window": 2, "min_history": 2,
                                                      "scale_window": 4, "min_scale": 0.5,
                                                      "mean_scale": 0.0}).fit(frame)
    raw = detector._score_core(frame)
    # residuals are 0 from t = 4 on (before the spike): the scale is the floor, the spike scores 10 / 0.5
    assert raw[13] == pytest.approx(20.0) and (raw[8:13] == 0.0).all()
    assert np.isnan(raw[:3]).all()  # t = 0 has no baseline; t = 1, 2 have < min_history past residuals
    # a 5-minute grid with the same periods in time gives the same baseline lags in steps of 5 minutes
    frame5 = frame.assign(**{TIMESTAMP: pd.date_range("2026-01-01", periods=20, freq="5min", tz="UTC")})
    d5 = registry.create("seasonal_residual", {**detector.config.to_dict(), "day": "20min", "week": "40min"})
    np.testing.assert_array_equal(d5.fit(frame5)._score_core(frame5), raw)


def test_seasonal_residual_ignores_interpolated_candidates_and_short_kpis_get_scores():
    values = np.tile([0.0, 1.0, 2.0, 1.0], 5)
    frame = pd.DataFrame({KPI_ID: "a", TIMESTAMP: pd.date_range("2026-01-01", periods=20, freq="1min", tz="UTC"),
                          VALUE: values, MISSING: False})
    frame.loc[9, MISSING] = True
    frame.loc[9, VALUE] = 50.0  # a bad interpolation must not become a baseline candidate a period later
    cfg = {"day": "4min", "week": "8min", "neighbours": 0, "fallback_window": 2, "min_history": 2}
    raw = registry.create("seasonal_residual", cfg).fit(frame)._score_core(frame)
    assert raw[13] == 0.0  # x[13] = 1 against the week candidate x[5] = 1 (x[9] left out)
    assert np.isnan(raw[9]) and np.isfinite(raw[10:]).all()  # an interpolated point is not scored
    # no day of history at all (a 3-point KPI): the fallback baseline still scores from min_history on
    short = frame.iloc[:6].assign(**{TIMESTAMP: pd.date_range("2026-01-01", periods=6, freq="1h", tz="UTC")})
    assert np.isfinite(registry.create("seasonal_residual", cfg).fit(short)._score_core(short)[3:]).all()


def test_seasonal_residual_scale_and_periods_hand_case():
    from models.configs.seasonal_residual import SeasonalResidualConfig
    from models.seasonal_residual import seasonal_periods, trailing_scale
    x = np.array([0.0, 0.0, 0.0, -9.0, 5.0, 1.0])
    missing = np.array([False, False, False, False, True, False])
    # the 4 points before t, interpolated ones left out: at t = 5 they are 0, 0, -9 (x[4] skipped)
    np.testing.assert_allclose(trailing_scale(x, missing, 4, 1, 0.0), [np.nan, 0, 0, 0, 0, 0], rtol=1e-12)
    np.testing.assert_allclose(trailing_scale(x, missing, 4, 1, 1.0), [np.nan, 0, 0, 0, 2.25, 3.0], rtol=1e-12)
    np.testing.assert_allclose(trailing_scale(np.array([1.0, -2.0, 3.0, -4.0, 0.0]), np.zeros(5, bool), 3, 2, 1.0),
                               [np.nan, np.nan, 1.4826 * 1.5, 1.4826 * 2, 1.4826 * 3], rtol=1e-12)
    step = pd.Timedelta("5min")
    assert seasonal_periods(SeasonalResidualConfig(), step) == [288, 576, 864, 2016]
    assert seasonal_periods(SeasonalResidualConfig(days=7), step) == [288 * i for i in range(1, 8)]  # 7 days = the week
    assert seasonal_periods(SeasonalResidualConfig(days=1), None) == []
    # A two-point shift of +10 at t = 13, 14 on the period-4 pattern; every earlier residual is 0
    values = np.tile([0.0, 1.0, 2.0, 1.0], 5)
    values[13:15] += 10.0
    frame = pd.DataFrame({KPI_ID: "a", TIMESTAMP: pd.date_range("2026-01-01", periods=20, freq="1min", tz="UTC"),
                          VALUE: values, MISSING: False})
    cfg = {"day": "4min", "week": "8min", "days": 1, "neighbours": 0, "fallback_window": 2, "min_history": 2,
           "scale_window": 4, "min_scale": 0.5, "mean_scale": 0.0}
    raw = registry.create("seasonal_residual", cfg).fit(frame)._score_core(frame)
    assert (raw[8:13] == 0.0).all() and raw[13] == pytest.approx(20.0)
    assert raw[14] == pytest.approx(20.0)  # the median |r| of t = 10..13 is still 0: the floor
    # mean_scale 1: the scale at t = 14 is the mean |r| of t = 10..13, 10 / 4
    raw = registry.create("seasonal_residual", {**cfg, "mean_scale": 1.0}).fit(frame)._score_core(frame)
    assert raw[13] == pytest.approx(20.0) and raw[14] == pytest.approx(10 / 2.5)
    # days 2: the candidates 4 and 8 steps back (8 = the week: one period), the same scores here
    np.testing.assert_array_equal(registry.create("seasonal_residual", {**cfg, "days": 2}).fit(frame)._score_core(frame),
                                  registry.create("seasonal_residual", cfg).fit(frame)._score_core(frame))


# -- spectral residual --------------------------------------------------------------------------------
def spectral_residual_reference(x, window, m, q, z):
    """The paper's steps, one window at a time, with numpy's rfft/irfft (a loop per window: a test)."""
    out = []
    for n in range(window - 1, len(x)):
        w = list(x[n - window + 1: n + 1])
        g = np.mean([(w[-2] - w[-2 - i]) / i for i in range(1, m + 1)])  # gradients to x_{n-1}
        w = np.array(w + [w[-1 - m] + g * m] * m)
        spectrum = np.fft.rfft(w)
        log_amp = np.log(np.maximum(np.abs(spectrum), 1e-8))
        local_log = np.array([log_amp[max(0, k - q + 1): k + 1].mean() for k in range(len(log_amp))])
        saliency = np.abs(np.fft.irfft(np.exp(log_amp - local_log + 1j * np.angle(spectrum)), n=len(w)))
        local = saliency[window - 1 - z: window - 1].mean()
        out.append((saliency[window - 1] - local) / local)
    return np.array(out)


@pytest.mark.parametrize("config", [{"window": 24, "extend": 5, "score_window": 7, "batch_windows": 16},
                                    {"window": 25, "extend": 3, "amplitude_window": 4, "score_window": 5},
                                    {"window": 32, "extend": 4, "amplitude_window": 1, "score_window": 9,
                                     "batch_windows": 80}])  # several blocks, the last one partial
def test_spectral_residual_equals_a_per_window_reference(config):
    from models.spectral_residual import SpectralResidualConfig
    cfg = SpectralResidualConfig(**config)
    rng = np.random.default_rng(0)
    x = 3 * np.sin(np.arange(120) / 5) + rng.standard_normal(120) + 20
    x[70] += 8
    frame = tiny_frame({"a": x, "b": x[:cfg.window - 1]})  # b: shorter than a window, nothing scored
    raw = registry.create("spectral_residual", cfg).fit(frame)._score_core(frame)
    expected = spectral_residual_reference(x, cfg.window, cfg.extend, cfg.amplitude_window, cfg.score_window)
    assert np.isnan(raw[:cfg.window - 1]).all() and np.isnan(raw[120:]).all()
    np.testing.assert_allclose(raw[cfg.window - 1:120], expected, rtol=1e-9, atol=1e-9)
    assert np.nanargmax(raw[:120]) == 70  # the spike is the most salient point
    flat = tiny_frame({"c": np.r_[np.zeros(60), np.arange(20.0)]})  # all-zero spectra: clipped, finite
    assert np.isfinite(registry.create("spectral_residual", cfg).fit(flat).score(flat)).all()
    # causal prefix invariance is test_causal_scores_use_no_later_row (to 1e-6: BLAS may round a block
    # of windows differently from a shorter one, so the exact-equality test above does not apply)


def test_window_sums_equal_direct_sums():
    from models.spectral_residual import window_sums
    u = np.random.default_rng(1).integers(-50, 50, (40, 3)).astype(float)  # integers: every order sums exactly
    for width in (1, 2, 5, 8, 13, 16):
        count = len(u) - width + 1 - 2
        expected = np.array([u[r:r + width].sum(axis=0) for r in range(count)])
        got = window_sums(u.copy(), width, count, np.empty_like(u), np.empty_like(u))
        np.testing.assert_array_equal(got, expected)


# -- stacked GBDT -------------------------------------------------------------------------------------
def test_stacked_gbdt_export_matches_sklearn(splits, tmp_path):
    train, val, test = splits
    detector = registry.create("stacked_gbdt", {"max_iter": 15}, CPU).fit(train, val)
    model = detector.sklearn_model
    for frame in (train, test):  # the test split's first rows have NaN features: the routing of missing values
        x = detector.features(frame)
        assert np.isnan(x).any()
        np.testing.assert_allclose(detector.raw_predict(x, batch=333), model.decision_function(x), rtol=0, atol=1e-12)
    np.testing.assert_allclose(detector.score(test), model.decision_function(detector.features(test)), rtol=0, atol=1e-12)
    loaded = registry.load(detector.save(tmp_path))
    assert loaded.sklearn_model is None and loaded.scales == detector.scales
    np.testing.assert_array_equal(loaded.score(test), detector.score(test))
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert set(state) == {"value", "feature", "threshold", "missing_left", "left", "right", "is_leaf", "baseline",
                          *detector.members.state_dict()}
    assert state["left"].shape[0] == model.n_iter_ and loaded.fit_info == detector.fit_info
    taught = onset_weights(train[LABEL].to_numpy(), train[KPI_ID].to_numpy(), 8)
    assert detector.fit_info["early_stopping"]  # an anomaly's points after its first 8 are left out:
    assert detector.fit_info["rows"] == int(((train[LABEL] == 0).to_numpy() | (taught > 0)).sum()) < len(train)


def test_stacked_gbdt_features_are_the_members_calibrated_scores(splits):
    train, val, test = splits
    detector = registry.create("stacked_gbdt", {"max_iter": 5, "members": ["diff_z", "robust_zscore"]}, CPU).fit(train, val)
    assert detector.config.feature_names() == ["surprise_diff_z", "surprise_robust_zscore"]
    x = detector.features(test)
    for j, name in enumerate(("diff_z", "robust_zscore")):
        member = registry.create(name, None, CPU).fit(train, val)  # fitted alike: default config, same frames
        raw = member.score_unfilled(test)
        expected = detector.members.calibrations[name].transform(raw, test[KPI_ID].to_numpy())
        np.testing.assert_array_equal(x[:, j], np.where(np.isnan(raw), np.nan, expected))
    own = registry.create("stacked_gbdt", {"max_iter": 5, "members": ["diff_z"], "own_features": True}, CPU)
    assert own.fit(train, val).features(test).shape == (len(test), 1 + len(own.config.own_feature_names()))


def test_onset_weights_put_each_anomalys_length_on_its_first_points():
    labels = np.array([0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0])
    ids = np.array(["a"] * 9 + ["b"] * 2)  # the last anomaly of "a" is cut by the KPI boundary: two anomalies
    np.testing.assert_allclose(onset_weights(labels, ids, 2), [0, 2.5, 2.5, 0, 0, 0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(onset_weights(labels, ids, 0), labels)  # 0: every positive alike
    np.testing.assert_allclose(onset_weights(labels, ids, 8), [0, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0])
    assert onset_weights(labels, ids, 2).sum() == labels.sum()  # each anomaly keeps its length as weight
    w = class_balanced(np.array([0, 0, 0, 1, 1]), np.array([0.0, 0, 0, 3, 1]), negative_weight=2.0)
    assert w[:3].sum() == pytest.approx(w[3:].sum()) and w.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(w[3:] / w[3:].sum(), [0.75, 0.25])


@pytest.mark.parametrize("config, match", [({"members": [], "own_features": False}, "no feature"),
                                           ({"members": ["stacked_gbdt"]}, "'stacked_gbdt'; choose among"),
                                           ({"members": ["cnn_classifier"]}, "which is supervised"),
                                           ({"onset_points": -1}, "'onset_points' must be >= 0")])
def test_stacked_gbdt_config_refuses_bad_features(config, match):
    from models.configs.stacked_gbdt import StackedGbdtConfig
    with pytest.raises(ValueError, match=match):
        StackedGbdtConfig.from_dict(config)


def test_stacked_gbdt_features_are_scale_free_and_use_the_kpi_grid():
    from models.stacked_gbdt import StackedGbdtConfig, kpi_features
    cfg = StackedGbdtConfig(lags=(1, 3), widths=(4,), day="4min", week="8min")
    x = np.arange(12, dtype=float) ** 2
    f = kpi_features(x, pd.Timedelta("1min"), 2.0, cfg)
    names = cfg.own_feature_names()
    assert names == ["value", "diff_1", "diff_3", "med_4", "mad_4", "std_4", "day", "week"] and f.shape == (12, 8)
    col = dict(zip(names, f.T))
    np.testing.assert_array_equal(col["value"], x)
    np.testing.assert_array_equal(col["diff_3"][3:], (x[3:] - x[:-3]) / 2.0)
    assert np.isnan(col["diff_3"][:3]).all() and np.isnan(col["week"][:8]).all()
    assert col["med_4"][4] == (16 - np.median(x[:4])) / 2.0 and np.isnan(col["med_4"][3])
    np.testing.assert_array_equal(col["day"][4:], (x[4:] - x[:-4]) / 2.0)  # 4 min = 4 steps of 1 min
    f5 = kpi_features(x, pd.Timedelta("2min"), 2.0, cfg)  # 4 min = 2 steps of 2 min
    np.testing.assert_array_equal(dict(zip(names, f5.T))["day"][2:], (x[2:] - x[:-2]) / 2.0)
    # scale-free: a KPI twice as large with twice the difference scale gives the same differences
    np.testing.assert_allclose(kpi_features(2 * x, pd.Timedelta("1min"), 4.0, cfg)[:, 1:3], f[:, 1:3])


def test_stacked_gbdt_keeps_all_positives_when_subsampling(splits):
    train, val, _ = splits
    detector = registry.create("stacked_gbdt", {"max_iter": 5, "max_train_rows": 500}, CPU).fit(train, None)
    positives = int((onset_weights(train[LABEL].to_numpy(), train[KPI_ID].to_numpy(), 8) > 0).sum())
    assert detector.fit_info == {"rows": 500, "positives": positives, "iterations": 5, "early_stopping": False}
    assert np.isfinite(detector.score(splits[2], causal=True)).all()


# -- sequence_novelty ----------------------------------------------------------------------------
def test_sequence_novelty_transition_counts_are_from_the_past_only():
    from models.sequence_novelty import PRIOR_OUTCOMES, day_bins, earlier_counts, novelty
    np.testing.assert_array_equal(earlier_counts(np.array([3, 1, 3, 3, 1])), [0, 0, 1, 2, 1])
    # range [0, 1] in 2 buckets, one quantisation: values 0.2 / 0.7 are buckets 0 / 1
    x = np.array([0.2, 0.7, 0.2, 0.7, 0.2, 0.7])
    a = 0.5
    got = novelty(x, 0.0, 1.0, buckets=2, offsets=1, pseudo_count=a)
    # t=1: transition 0->1 never seen, bucket 0 left once before? no: counts are strictly earlier
    n_pair = np.array([0, 0, 0, 1, 1, 2])  # earlier (prev -> cur) pairs (t=0's "prev" is the padding)
    n_prev = np.array([0, 0, 0, 1, 1, 2])  # earlier departures from prev
    expected = -np.log(np.minimum((n_pair + a) / (n_prev + PRIOR_OUTCOMES * a), 1.0))
    np.testing.assert_allclose(got, expected)
    assert got[-1] < got[1]  # a transition seen before is less novel
    # with a context: the same bucket in another context is new again
    ctx = np.array([0, 0, 1, 1, 0, 0])
    x = np.array([0.2, 0.2, 0.2, 0.2, 0.2, 0.7])
    got = novelty(x, 0.0, 1.0, buckets=2, offsets=1, pseudo_count=a, context=ctx)
    n_pair, n_ctx = np.array([0, 1, 0, 1, 2, 0]), np.array([0, 1, 0, 1, 2, 3])
    np.testing.assert_allclose(got, -np.log(np.minimum((n_pair + a) / (n_ctx + PRIOR_OUTCOMES * a), 1.0)))
    stamps = pd.Series(pd.to_datetime(["2026-01-01 00:00", "2026-01-01 05:59", "2026-01-01 06:00",
                                       "2026-01-02 23:59"], utc=True))
    np.testing.assert_array_equal(day_bins(stamps, 4), [0, 0, 1, 3])


def test_sequence_novelty_nearest_earlier_window_matches_brute_force():
    from models.sequence_novelty import nearest_earlier_window
    rng = np.random.default_rng(3)
    x = rng.normal(size=300)
    m, excl, hist = 5, 3, 40
    got = nearest_earlier_window(x, m, excl, hist, block=17)
    want = np.zeros(x.size)
    for t in range(m - 1, x.size):
        cands = [np.linalg.norm(x[t - m + 1:t + 1] - x[s - m + 1:s + 1])
                 for s in range(max(m - 1, t - hist), t - excl + 1)]
        want[t] = min(cands) if cands else 0.0
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_sequence_novelty_new_extremes_widen_the_range_with_observed_points_only():
    from models.sequence_novelty import new_extremes
    x = np.array([0.5, 1.04, 1.2, 1.25, 5.0, -1.0, 9.0])
    observed = np.array([True, True, True, True, True, True, False])
    # fitted range [0, 1]; tolerance 5% of the range so far
    got = new_extremes(x, observed, 0.0, 1.0, 0.05)
    # 1.04 < 1 + 0.05; 1.2 > 1.05; 1.25 < 1.2 + 0.06; 5.0 > 1.25 + 0.0625; -1.0 < 0 - 0.25; 9.0 unobserved
    np.testing.assert_array_equal(got, [False, False, True, False, True, True, False])


def test_sequence_novelty_round_trips_and_serves_a_new_kpi(splits, tmp_path):
    train, val, test = splits
    detector = registry.create("sequence_novelty", None, CPU).fit(train, val)
    loaded = registry.load(detector.save(tmp_path / "sn"))
    np.testing.assert_array_equal(loaded.score(test), detector.score(test))
    renamed = test.assign(**{KPI_ID: test[KPI_ID].astype(str) + "_new"})
    scores = detector.score(renamed)
    assert np.isfinite(scores).all() and scores.max() > 5.0  # the test split's anomalies still stand out


def test_sequence_novelty_channels_are_chosen_by_config(splits):
    from models.configs.sequence_novelty import SequenceNoveltyConfig
    train, val, test = splits
    only = registry.create("sequence_novelty", {"channels": ["match"], "extreme_tolerance": None}, CPU).fit(train, val)
    full = registry.create("sequence_novelty", None, CPU).fit(train, val)
    assert set(only.calibrations) == {"match"} and set(full.calibrations) == {"novelty", "daily", "match"}
    # one channel, no rule: exactly that channel's calibrated surprise; the full detector is never below it
    channel = only._channels(test)["match"]
    np.testing.assert_array_equal(only.score(test), only.calibrations["match"].transform(channel, test[KPI_ID].to_numpy()))
    assert (full.score(test) >= only.score(test) - 1e-12).all()
    with pytest.raises(ValueError, match="'channels' must be distinct names"):
        SequenceNoveltyConfig(channels=("match", "seasonal"))


# -- ensemble -------------------------------------------------------------------------------------------
def test_ensemble_of_one_member_is_that_members_calibrated_score(splits):
    from models.calibration import EcdfCalibration

    train, val, test = splits
    ensemble = registry.create("ensemble", {"members": ["robust_zscore"]}, CPU).fit(train, val)
    member = registry.create("robust_zscore", None, CPU).fit(train, val)
    # train and val scored each on its own, then each KPI's train rows followed by its val rows
    history = pd.concat([train.assign(raw=member.score_unfilled(train)), val.assign(raw=member.score_unfilled(val))])
    history = history.sort_values(KPI_ID, kind="stable")
    calibration = EcdfCalibration().fit(history["raw"], history[KPI_ID], history[MISSING])
    raw = member.score_unfilled(test)
    assert np.isnan(raw).any()  # the first 2 x 48 points of each KPI: no reference yet, filled as any detector's
    np.testing.assert_array_equal(ensemble.score(test),
                                  fill_uncovered(calibration.transform(raw, test[KPI_ID]), test))


def test_ensemble_averages_the_members_that_scored_each_point(splits):
    train, val, test = splits
    one = {name: registry.create("ensemble", {"members": [name]}, CPU).fit(train, val).score_unfilled(test)
           for name in ("diff_z", "spectral_residual")}
    both = registry.create("ensemble", {"members": ["diff_z", "spectral_residual"]}, CPU).fit(train, val)
    got = both.score_unfilled(test)
    only_diff = np.isnan(one["spectral_residual"]) & ~np.isnan(one["diff_z"])
    assert only_diff.sum() > 200  # spectral_residual scores from the 128th point of a KPI on
    np.testing.assert_array_equal(got[only_diff], one["diff_z"][only_diff])  # not pulled down by a fill value
    scored = ~np.isnan(one["spectral_residual"]) & ~np.isnan(one["diff_z"])
    np.testing.assert_array_equal(got[scored], (one["diff_z"][scored] + one["spectral_residual"][scored]) / 2)
    assert np.isnan(got[~(scored | only_diff)]).all()  # each KPI's first row: no member scored it


def test_ensemble_nests_a_torch_member_in_its_own_files(splits, tmp_path):
    train, val, test = splits
    ensemble = registry.create("ensemble", {"members": ["diff_z", "dense_autoencoder"], "calibration": "likelihood"},
                               CPU).fit(train, val)
    assert ensemble.members.detectors["dense_autoencoder"].history  # fitted with the ensemble's TrainConfig (2 epochs)
    ensemble.save(tmp_path)
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert state and all(k.startswith("dense_autoencoder.") for k in state)
    fitted = json.loads((tmp_path / "config.json").read_text())["fitted"]
    assert fitted["members"]["diff_z"]["fitted"]["scales"] == ensemble.members.detectors["diff_z"].scales
    assert fitted["calibrations"]["dense_autoencoder"]["method"] == "likelihood"
    loaded = registry.load(tmp_path)
    assert loaded.members.detectors["dense_autoencoder"].history == ensemble.members.detectors["dense_autoencoder"].history
    for causal in (False, True):
        np.testing.assert_array_equal(loaded.score(test, causal=causal), ensemble.score(test, causal=causal))


@pytest.mark.parametrize("members, calibration, match", [
    ([], "ecdf", "at least one"), (["diff_z", "diff_z"], "ecdf", "distinct"),
    (["nope"], "ecdf", "'nope'; choose among"), (["ensemble"], "ecdf", "'ensemble'; choose among"),
    (["diff_z", "cnn_classifier"], "ecdf", "'cnn_classifier', which is supervised"),
    (["diff_z"], "none", "'calibration' must be ecdf or likelihood")])
def test_ensemble_config_refuses_bad_members_and_calibrations(members, calibration, match):
    from models.configs.ensemble import EnsembleConfig
    from pipeline.params import ParamsError, parse_params
    from tests.conftest import small_params_dict

    with pytest.raises(ValueError, match=match):
        EnsembleConfig.from_dict({"members": members, "calibration": calibration})
    with pytest.raises(ParamsError, match=f"detectors.ensemble: .*{match}"):  # at params load, before any work
        parse_params(small_params_dict(detectors={"ensemble": {"members": members, "calibration": calibration}}))


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
