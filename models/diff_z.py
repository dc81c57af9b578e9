"""Difference z-score: the size of a step, in units of the KPI's typical step in training.

``score_t = |x_t - x_{t-1}| / scale_k`` for a point of KPI ``k``, where ``scale_k`` is fitted on
the train split: ``1.4826 * median(|d - median(d)|)`` (the MAD of the first differences ``d``, as a
standard deviation), floored at ``min_scale``. Only differences between two observed points count
(a difference touching an interpolated point, and a KPI's first row, are left out). A KPI absent
from training gets the median of the fitted KPI scales (``global_scale``). The first row of each KPI
has no difference (NaN, filled by :meth:`models.base.Detector.score`).

The fitted scales are small scalars: they live in ``config.json`` (``fitted``), there are no
weights. The score at ``t`` reads rows ``t - 1`` and ``t`` of its KPI only: causal as it stands,
and ``causal=True`` takes the same path.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from models.base import Detector
from models.checks import number, positive_scales
from models.configs.diff_z import DiffZConfig
from models.frame import MAD_TO_STD, MISSING, VALUE, kpi_slices


def diff_mad_scale(values: np.ndarray, missing: np.ndarray) -> float | None:
    """``1.4826 * MAD`` of the first differences between consecutive observed points (None when
    there is no such pair)."""
    d = np.diff(values)
    ok = ~missing[1:] & ~missing[:-1]
    d = d[ok]
    if d.size == 0:
        return None
    return float(MAD_TO_STD * np.median(np.abs(d - np.median(d))))


class DiffZ(Detector):
    name = "diff_z"
    config_class = DiffZConfig
    config: DiffZConfig

    def __init__(self, config=None, train_config=None):
        super().__init__(config, train_config)
        self.scales: dict[str, float] = {}
        self.global_scale = self.config.min_scale

    def _fit_core(self, train: pd.DataFrame, val: pd.DataFrame | None) -> None:
        values = train[VALUE].to_numpy(dtype=np.float64)
        missing = train[MISSING].to_numpy(dtype=bool)
        scales = {}
        for kpi, sl in kpi_slices(train):
            scale = diff_mad_scale(values[sl], missing[sl])
            if scale is not None:
                scales[kpi] = max(scale, self.config.min_scale)
        self.scales = scales
        self.global_scale = float(np.median(list(scales.values()))) if scales else self.config.min_scale

    def _score_core(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        # One row back only: already causal, the same in both modes.
        values = frame[VALUE].to_numpy(dtype=np.float64)
        out = np.full(len(frame), np.nan)
        for kpi, sl in kpi_slices(frame):
            step = np.abs(np.diff(values[sl]))
            out[sl.start + 1:sl.stop] = step / self.scales.get(kpi, self.global_scale)
        return out

    def _fitted_scalars(self) -> dict[str, Any]:
        return {"scales": dict(self.scales), "global_scale": self.global_scale}

    def _load_fitted_scalars(self, scalars: dict[str, Any]) -> None:
        # Every score is divided by one of these: a scale <= 0 would flip or blow up all of them.
        self.scales = positive_scales(scalars.get("scales"), "scales")
        self.global_scale = number(scalars.get("global_scale", self.config.min_scale), "global_scale", positive=True)
