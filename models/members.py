"""Calibrated members: unsupervised detectors nested in another detector, each on the surprise scale.

Two detectors build on other detectors' scores: the ``ensemble`` (:mod:`models.ensemble`) averages
them, ``stacked_gbdt`` (:mod:`models.stacked_gbdt`) learns from them. Both need the same thing: each
member fitted on the same train (and validation) frames, and its raw score mapped, per KPI, to its
**surprise** (``-log10`` of a tail probability, :mod:`models.calibration`) fitted on that member's own
train (+ validation) raw scores. On that common scale a 3 means "a 1-in-1,000 score" for every member
and every KPI. This module is that piece, once.

- ``fit``: every member is created with its **default** hyperparameters (:mod:`models.configs`), not
  params.yaml's ``detectors.<member>``, so the owner's artifact depends on its own config alone (what
  its DVC stage lists), and fitted with the owner's ``TrainConfig``. Each member then scores the train
  and the validation frames, each on its own (nothing says validation follows train in time:
  ``kpiguard speed`` hands two unrelated frames), and one calibration per member is fitted on those
  raw scores.
- ``surprises``: an ``(n_rows, n_members)`` array; NaN where a member gave no score (its first points
  of a KPI, before its window is full: :meth:`models.base.Detector.score_unfilled`). The owner has
  checked the frame; members skip that check (it is a third of a cheap rule's cost).
- ``to_scalars``/``from_scalars`` and ``state_dict``/``load_state_dict``: the members' configs, fitted
  scalars, histories and calibrations go into the owner's ``config.json``, their tensors into its one
  ``weights.pt`` under ``<member>.<key>``. Nothing is pickled.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from models import registry
from models.base import Detector, TrainConfig
from models.calibration import Calibration, CalibrationError, make_calibration
from models.checks import blame, mapping
from models.frame import KPI_ID, MISSING


class CalibratedMembers:
    def __init__(self, owner: str, names: tuple[str, ...], calibration: dict[str, Any]):
        self.owner, self.names, self.calibration = owner, tuple(names), dict(calibration)
        self.detectors: dict[str, Detector] = {}
        self.calibrations: dict[str, Calibration] = {}

    def fit(self, train: pd.DataFrame, val: pd.DataFrame | None, train_config: TrainConfig) -> "CalibratedMembers":
        parts = [train] if val is None else [train, val]
        ids = np.concatenate([p[KPI_ID].to_numpy().astype(str) for p in parts])
        by_kpi = np.argsort(ids, kind="stable")  # each KPI's train rows, then its val rows: contiguous, in time order
        ids = ids[by_kpi]
        missing = np.concatenate([p[MISSING].to_numpy(dtype=bool) for p in parts])[by_kpi]
        detectors, calibrations = {}, {}
        for name in self.names:
            member = registry.create(name, None, train_config).fit(train, val)
            raw = np.concatenate([member.score_unfilled(p) for p in parts])[by_kpi]
            try:
                calibrations[name] = make_calibration(self.calibration).fit(raw, ids, missing)
            except CalibrationError as exc:  # e.g. every KPI shorter than the member's window
                raise ValueError(f"{self.owner}: member {name}'s train + val scores: {exc}") from None
            detectors[name] = member
        self.detectors, self.calibrations = detectors, calibrations
        return self

    def surprises(self, frame: pd.DataFrame, causal: bool = False) -> np.ndarray:
        """Each member's calibrated score of each row (columns in member order); NaN where it gave none."""
        ids = frame[KPI_ID].to_numpy().astype(str)  # once: an Arrow column's conversion is the slow part
        out = np.empty((len(frame), len(self.detectors)))
        for j, (name, member) in enumerate(self.detectors.items()):
            raw = member.score_checked(frame, causal=causal)
            if np.isinf(raw).any():
                raise RuntimeError(f"{self.owner}: member {name} gave infinite scores; this is a detector bug")
            out[:, j] = np.where(np.isnan(raw), np.nan, self.calibrations[name].transform(raw, ids))
        return out

    @property
    def device(self) -> str:
        # The rules run on the CPU whatever TrainConfig says; the networks' device is the one to report.
        return next((m.device for m in self.detectors.values() if m.device != "cpu"), "cpu")

    # -- persistence, nested in the owner's config.json and weights.pt ------------------------------
    def to_scalars(self) -> dict[str, Any]:
        return {"members": {name: {"config": m.config.to_dict(), "fitted": m._fitted_scalars(),
                                   "history": m.history, "fit_seconds": m.fit_seconds}
                            for name, m in self.detectors.items()},
                "calibrations": {name: c.to_dict() for name, c in self.calibrations.items()}}

    def from_scalars(self, scalars: dict[str, Any], train_config: TrainConfig) -> None:
        saved = mapping(scalars.get("members"), "members")
        if list(saved) != list(self.names):
            raise ValueError(f"{self.owner}: the saved members {list(saved)} are not the config's {list(self.names)}")
        self.detectors = {}
        for name, state in saved.items():
            with blame(f"members.{name}"):
                state = mapping(state, "")
                with blame("config"):
                    member = registry.create(name, mapping(state.get("config"), ""), train_config)
                with blame("fitted"):
                    member._load_fitted_scalars(mapping(state.get("fitted"), ""))
                member.history = list(state.get("history") or [])
                member.fit_seconds = float(state.get("fit_seconds") or 0.0)
            self.detectors[name] = member
        self.calibrations = {}
        for name, d in mapping(scalars.get("calibrations"), "calibrations").items():
            with blame(f"calibrations.{name}"):
                self.calibrations[name] = Calibration.from_dict(mapping(d, ""))
        if set(self.calibrations) != set(self.detectors):
            raise ValueError(f"{self.owner}: calibrations saved for {sorted(self.calibrations)}, members are "
                             f"{sorted(self.detectors)}")

    def state_dict(self) -> dict:
        return {f"{name}.{key}": tensor for name, m in self.detectors.items() for key, tensor in m._state_dict().items()}

    def load_state_dict(self, state: dict, owner_keys: tuple[str, ...] = ()) -> None:
        """The members' tensors from ``state`` (keys ``<member>.<key>``); ``owner_keys`` are the owner's
        own, and any other key is an error."""
        unknown = sorted(k for k in state if k not in owner_keys and k.split(".", 1)[0] not in self.detectors)
        if unknown:
            raise ValueError(f"{self.owner}: weights {unknown} belong neither to it nor to a member")
        for name, member in self.detectors.items():
            prefix = f"{name}."
            with blame(name):  # a member's tensor "<key>" is "<member>.<key>" in the owner's weights.pt
                member._load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            member._fitted = True
