"""What several detectors' configs share: the neural detectors' bases and the nested members' base.

:class:`TorchConfig`, :class:`ReconstructorConfig` and :class:`ClassifierConfig` hold the fields of
:mod:`models.torch_base`'s detectors; :class:`MembersConfig` those of the detectors that nest calibrated
members (:mod:`models.members`: ``ensemble``, ``stacked_gbdt``). Importable without torch, like every
module of :mod:`models.configs`.
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from models import registry
from models.base import DetectorConfig
from models.calibration import make_calibration


def positive_durations(config: DetectorConfig, *keys: str) -> None:
    """Each of ``keys`` must be a positive duration pandas reads, such as '1D' or '7D'."""
    for key in keys:
        try:
            ok = pd.Timedelta(getattr(config, key)) > pd.Timedelta(0)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{type(config).__name__}: '{key}' must be a positive duration such as '1D', "
                             f"got {getattr(config, key)!r}")


@dataclasses.dataclass
class TorchConfig(DetectorConfig):
    """Fields every neural detector has, on top of its own."""

    max_epochs: int | None = None          # caps train.max_epochs for this detector; null = no cap
    max_train_windows: int | None = None   # training samples drawn per epoch; null = all of them
    score_batch_size: int = 4096           # samples per inference batch (also for validation loss)

    def validate(self) -> None:
        self._positive("max_epochs", "max_train_windows", "score_batch_size")


@dataclasses.dataclass
class ReconstructorConfig(TorchConfig):
    window: int = 48
    train_stride: int = 1    # stride of training windows
    score_stride: int = 24   # stride of scoring windows (+ one covering each KPI's tail); points average
                             # the errors of the windows covering them (causal scoring ignores it)

    def validate(self) -> None:
        super().validate()
        self._positive("window", "train_stride", "score_stride")
        if self.window < 2 or self.score_stride > self.window:
            raise ValueError(f"{type(self).__name__}: need 2 <= 'window' and 'score_stride' <= 'window' (every "
                             f"point covered), got window={self.window}, score_stride={self.score_stride}")


@dataclasses.dataclass
class ClassifierConfig(TorchConfig):
    window: int = 48
    noise_std: float = 0.05  # std of Gaussian noise added to training windows (augmentation)

    def validate(self) -> None:
        super().validate()
        self._positive("window")
        if self.noise_std < 0:
            raise ValueError(f"{type(self).__name__}: 'noise_std' must be >= 0, got {self.noise_std}")


@dataclasses.dataclass
class MembersConfig(DetectorConfig):
    """Unsupervised detectors nested in this one, each run with its defaults and calibrated per KPI."""
    members: tuple[str, ...] = ()
    # One per-KPI calibration per member (models/calibration.py): ecdf | likelihood; `none` would mix
    # raw scores on unrelated scales. The keys below are that calibration's, as in evaluate.calibration.
    calibration: str = "ecdf"
    min_points: int = 50        # a KPI with fewer observed train + val scores uses the all-KPI fit
    knots: int = 512            # ecdf: quantile knots per KPI
    tail_level: float = 0.99    # ecdf: beyond this quantile, an exponential tail
    short_window: int = 10      # likelihood: raw scores averaged into each point's value
    long_window: int = 8640     # likelihood: earlier points the rolling Gaussian is estimated on

    def validate_members(self, owner: str, allow_none: bool = False) -> None:
        what = type(self).__name__
        self._positive("min_points", "knots", "short_window", "long_window")
        if (not self.members and not allow_none) or len(set(self.members)) < len(self.members):
            raise ValueError(f"{what}: 'members' must be distinct detector names"
                             f"{'' if allow_none else ', at least one'}, got {list(self.members)}")
        nested = ("ensemble", "stacked_gbdt")  # members that nest members: no recursion
        known = registry.names()
        for name in self.members:
            if name in nested or name not in known:
                raise ValueError(f"{what}: 'members' holds {name!r}; choose among "
                                 f"{', '.join(n for n in known if n not in nested)}")
            if registry.is_supervised(name):
                raise ValueError(f"{what}: 'members' holds {name!r}, which is supervised; the {owner}'s "
                                 f"members must not need labels")
        if self.calibration not in ("ecdf", "likelihood"):
            raise ValueError(f"{what}: 'calibration' must be ecdf or likelihood, got {self.calibration!r}")
        make_calibration(self.calibration_config())  # its own range checks (tail_level, ...) name the key

    def calibration_config(self) -> dict:
        """The members' calibration as ``make_calibration`` takes it."""
        keys = ("min_points", "knots", "tail_level", "short_window", "long_window")
        return {"method": self.calibration, **{k: getattr(self, k) for k in keys}}
