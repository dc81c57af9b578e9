"""Exact tests of models/isolation_forest.py: the exported forest scores as sklearn's."""
from __future__ import annotations

import numpy as np
import torch

from models import registry
from tests.models.conftest import CPU


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
