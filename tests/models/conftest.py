"""Shared by tests/models: the CPU training config, the synthetic splits, tiny hand-made frames and a
network that ignores its input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from torch import nn

from models.base import TrainConfig
from models.frame import KPI_ID, MISSING, TIMESTAMP, VALUE
from tests.detector_data import make_splits

CPU = TrainConfig(device="cpu", seed=0, max_epochs=2, patience=2, progress=False)


@pytest.fixture(scope="module")
def splits():
    return make_splits(n_kpis=2, n_points=2000)


def tiny_frame(values_per_kpi: dict[str, list[float]]) -> pd.DataFrame:
    parts = [pd.DataFrame({KPI_ID: k, TIMESTAMP: pd.date_range("2026-01-01", periods=len(v), freq="5min", tz="UTC"),
                           VALUE: np.asarray(v, float), MISSING: False}) for k, v in values_per_kpi.items()]
    return pd.concat(parts, ignore_index=True)


class ConstantNet(nn.Module):
    """Ignores its input, so only the targets can move the loss."""

    def __init__(self, shape_fn):
        super().__init__()
        self.shape_fn = shape_fn

    def forward(self, x):
        return self.shape_fn(x)
