"""Exact tests of models/stacked_gbdt.py: the tree export, features, onset weights, config rules."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from models import registry
from models.frame import KPI_ID, LABEL
from models.stacked_gbdt import class_balanced, onset_weights
from tests.models.conftest import CPU


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
