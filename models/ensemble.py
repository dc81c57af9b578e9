"""Ensemble: the mean of the calibrated scores of chosen unsupervised detectors, for unlabelled data.

Raw scores of different detectors live on unrelated scales (a step in MADs, a spectral saliency
ratio, ...), so they cannot be averaged as they are. Each member's raw score is first mapped, per
KPI, to its **surprise** (``-log10`` of a tail probability, :mod:`models.calibration`) fitted on that
member's own train (+ validation) scores; on that common scale a 3 means "a 1-in-1,000 score" for
every member, and the ensemble's score is the mean of its members' surprises. With no label there is
nothing to learn weights from, so every member counts alike (a stacked model such as
:mod:`models.stacked_gbdt` is the labelled counterpart).

- ``fit``: every member is fitted on the same train (and validation) frames with the ensemble's
  ``TrainConfig``, and with its **default** hyperparameters (:mod:`models.configs`), not params.yaml's
  ``detectors.<member>``: the ensemble's artifact then depends on ``detectors.ensemble`` alone, which
  is what its DVC stage lists. Each member then scores the train and the validation frames, each on its
  own (nothing says validation follows train in time: ``kpiguard speed`` hands two unrelated frames),
  and one calibration per member is fitted on those raw scores (``EnsembleConfig.calibration_config``).
- ``score``: the mean over the members that scored the point. A member's first points of a KPI that
  no window covers (``Detector.score_unfilled`` gives NaN there) do not count, rather than pulling the
  mean down with a fill value; a point that no member scored is NaN, which ``Detector.score`` fills
  as for any detector. ``causal`` is passed to every member, and both calibration methods keep a
  causal score causal (``ecdf`` is a fixed map, ``likelihood`` only looks back).
- The evaluate stage (and the served bundle) calibrates the ensemble's output once more, like any
  detector's raw score: a mean of surprises is not itself a tail probability, and that second,
  per-KPI calibration makes it one, so the ensemble's threshold means what every other detector's does.
- ``save``/``load`` are the normal ones: the members' configs, fitted scalars and histories and the
  fitted calibrations go into ``config.json`` (``fitted``), the members' tensors into the one
  ``weights.pt``, each name prefixed with ``<member>.``. Nothing is pickled.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from models import registry
from models.base import Detector
from models.calibration import Calibration, CalibrationError, make_calibration
from models.configs import EnsembleConfig
from models.frame import KPI_ID, MISSING


class Ensemble(Detector):
    name = "ensemble"
    config_class = EnsembleConfig
    config: EnsembleConfig

    def __init__(self, config=None, train_config=None):
        super().__init__(config, train_config)
        self.members: dict[str, Detector] = {}
        self.calibrations: dict[str, Calibration] = {}

    def _fit_core(self, train: pd.DataFrame, val: pd.DataFrame | None) -> None:
        parts = [train] if val is None else [train, val]
        ids = np.concatenate([p[KPI_ID].to_numpy().astype(str) for p in parts])
        by_kpi = np.argsort(ids, kind="stable")  # each KPI's train rows, then its val rows: contiguous, in time order
        ids = ids[by_kpi]
        missing = np.concatenate([p[MISSING].to_numpy(dtype=bool) for p in parts])[by_kpi]
        members, calibrations = {}, {}
        for name in self.config.members:
            member = registry.create(name, None, self.train_config).fit(train, val)
            raw = np.concatenate([member.score_unfilled(p) for p in parts])[by_kpi]
            try:
                calibrations[name] = make_calibration(self.config.calibration_config()).fit(raw, ids, missing)
            except CalibrationError as exc:  # e.g. every KPI shorter than the member's window
                raise ValueError(f"ensemble: member {name}'s train + val scores: {exc}") from None
            members[name] = member
        self.members, self.calibrations = members, calibrations
        self._set_device()

    def _score_core(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        ids = frame[KPI_ID].to_numpy()
        total, count = np.zeros(len(frame)), np.zeros(len(frame))
        for name, member in self.members.items():
            raw = member.score_unfilled(frame, causal=causal)
            if np.isinf(raw).any():
                raise RuntimeError(f"ensemble: member {name} gave infinite scores; this is a detector bug")
            scored = ~np.isnan(raw)
            surprise = self.calibrations[name].transform(raw, ids)
            total += np.where(scored, surprise, 0.0)
            count += scored
        return np.divide(total, count, out=np.full(len(frame), np.nan), where=count > 0)

    def _set_device(self) -> None:
        # The rules run on the CPU whatever TrainConfig says; the networks' device is the one to report.
        self.device = next((m.device for m in self.members.values() if m.device != "cpu"), "cpu")

    # -- persistence: the members nested in the ensemble's own config.json and weights.pt -------------
    def _fitted_scalars(self) -> dict[str, Any]:
        return {"members": {name: {"config": m.config.to_dict(), "fitted": m._fitted_scalars(),
                                   "history": m.history, "fit_seconds": m.fit_seconds}
                            for name, m in self.members.items()},
                "calibrations": {name: c.to_dict() for name, c in self.calibrations.items()}}

    def _load_fitted_scalars(self, scalars: dict[str, Any]) -> None:
        saved = scalars.get("members") or {}
        if list(saved) != list(self.config.members):
            raise ValueError(f"ensemble: the saved members {list(saved)} are not the config's "
                             f"{list(self.config.members)}")
        self.members = {}
        for name, state in saved.items():
            member = registry.create(name, state["config"], self.train_config)
            member._load_fitted_scalars(state.get("fitted") or {})
            member.history = list(state.get("history") or [])
            member.fit_seconds = float(state.get("fit_seconds") or 0.0)
            self.members[name] = member
        self.calibrations = {name: Calibration.from_dict(d) for name, d in (scalars.get("calibrations") or {}).items()}
        if set(self.calibrations) != set(self.members):
            raise ValueError(f"ensemble: calibrations saved for {sorted(self.calibrations)}, members are "
                             f"{sorted(self.members)}")

    def _state_dict(self) -> dict:
        return {f"{name}.{key}": tensor for name, m in self.members.items() for key, tensor in m._state_dict().items()}

    def _load_state_dict(self, state: dict) -> None:
        unknown = sorted(k for k in state if k.split(".", 1)[0] not in self.members)
        if unknown:
            raise ValueError(f"ensemble: weights {unknown} belong to no member")
        for name, member in self.members.items():
            prefix = f"{name}."
            member._load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            member._fitted = True
        self._set_device()
