"""Ensemble: the mean of the calibrated scores of chosen unsupervised detectors, for unlabelled data.

Raw scores of different detectors live on unrelated scales (a step in MADs, a spectral saliency
ratio, ...), so they cannot be averaged as they are. Each member's raw score is first mapped, per
KPI, to its **surprise** (``-log10`` of a tail probability, :mod:`models.calibration`) fitted on that
member's own train (+ validation) scores; on that common scale a 3 means "a 1-in-1,000 score" for
every member, and the ensemble's score is the mean of its members' surprises. With no label there is
nothing to learn weights from, so every member counts alike (a stacked model such as
:mod:`models.stacked_gbdt` is the labelled counterpart).

- ``fit``: the members are fitted and calibrated by :class:`models.members.CalibratedMembers` (each
  with its **default** hyperparameters and the ensemble's ``TrainConfig``, one calibration per member
  fitted on its own train + validation raw scores, ``EnsembleConfig.calibration_config``).
- ``score``: the mean over the members that scored the point. A member's first points of a KPI that
  no window covers (``Detector.score_unfilled`` gives NaN there) do not count, rather than pulling the
  mean down with a fill value; a point that no member scored is NaN, which ``Detector.score`` fills
  as for any detector. ``causal`` is passed to every member, and both calibration methods keep a
  causal score causal (``ecdf`` is a fixed map, ``likelihood`` only looks back).
- The evaluate stage (and the served bundle) calibrates the ensemble's output once more, like any
  detector's raw score: a mean of surprises is not itself a tail probability, and that second,
  per-KPI calibration makes it one, so the ensemble's threshold means what every other detector's does.
- ``save``/``load`` are the normal ones, the members nested in the ensemble's own ``config.json`` and
  ``weights.pt`` (:class:`models.members.CalibratedMembers`). Nothing is pickled.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from models.base import Detector
from models.configs.ensemble import EnsembleConfig
from models.members import CalibratedMembers


class Ensemble(Detector):
    name = "ensemble"
    config_class = EnsembleConfig
    config: EnsembleConfig

    def __init__(self, config=None, train_config=None):
        super().__init__(config, train_config)
        self.members = CalibratedMembers(self.name, self.config.members, self.config.calibration_config())

    def _fit_core(self, train: pd.DataFrame, val: pd.DataFrame | None) -> None:
        self.members.fit(train, val, self.train_config)
        self.device = self.members.device

    def _score_core(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        surprise = self.members.surprises(frame, causal)
        scored = ~np.isnan(surprise)
        count = scored.sum(axis=1)
        total = np.where(scored, surprise, 0.0).sum(axis=1)
        return np.divide(total, count, out=np.full(len(frame), np.nan), where=count > 0)

    def _fitted_scalars(self) -> dict[str, Any]:
        return self.members.to_scalars()

    def _load_fitted_scalars(self, scalars: dict[str, Any]) -> None:
        self.members.from_scalars(scalars, self.train_config)

    def _state_dict(self) -> dict:
        return self.members.state_dict()

    def _load_state_dict(self, state: dict) -> None:
        self.members.load_state_dict(state)
        self.device = self.members.device
