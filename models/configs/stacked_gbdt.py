"""Hyperparameters of :mod:`models.stacked_gbdt`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.configs.shared import MembersConfig, positive_durations


@dataclasses.dataclass
class StackedGbdtConfig(MembersConfig):
    # The features: each member's calibrated score (models/members.py), and with own_features the
    # per-point features below. The four cheapest rules by default (spectral_residual, the fifth
    # member of the ensemble, costs as much to score as the rest together: BENCHMARKS.md, AIOps).
    members: tuple[str, ...] = ("diff_z", "robust_zscore", "seasonal_residual", "windowed_gaussian")
    own_features: bool = False        # also the lags/widths/day/week features below (they transfer worse)
    # Positive labels that carry weight: each anomaly's first onset_points points, weighted by its length
    # (delay-7 aiops_f1 credits a whole anomaly found in its first 8 points); 0: every positive point alike.
    onset_points: int = 8
    max_iter: int = 50                # boosting rounds (fewer with early stopping); scoring cost grows with it
    learning_rate: float = 0.1
    max_depth: int = 6                # levels of the scoring traversal: the main cost of a score
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 20
    l2_regularization: float = 0.0
    n_iter_no_change: int = 10        # early stopping patience (rounds), on the validation loss
    max_train_rows: int = 200_000     # rows handed to sklearn: all positives + random negatives
    lags: tuple[int, ...] = (1, 2, 5, 10)
    widths: tuple[int, ...] = (12, 48, 288)
    day: str = "1D"
    week: str = "7D"
    min_scale: float = 1e-3           # floor of diff_scale and of the rolling MAD, normalised units

    def validate(self) -> None:
        self.validate_members("stacked_gbdt", allow_none=True)
        if not self.members and not self.own_features:
            raise ValueError("StackedGbdtConfig: no feature: give 'members' or set 'own_features: true'")
        if self.onset_points < 0:
            raise ValueError(f"StackedGbdtConfig: 'onset_points' must be >= 0, got {self.onset_points}")
        self._positive("max_iter", "learning_rate", "max_depth", "max_leaf_nodes", "min_samples_leaf",
                       "n_iter_no_change", "max_train_rows", "min_scale")
        if self.l2_regularization < 0:
            raise ValueError(f"StackedGbdtConfig: 'l2_regularization' must be >= 0, got {self.l2_regularization}")
        for key in ("lags", "widths"):
            v = getattr(self, key)
            if not v or min(v) < 1 or len(set(v)) < len(v):
                raise ValueError(f"StackedGbdtConfig: '{key}' must be distinct positive integers, got {list(v)}")
        positive_durations(self, "day", "week")

    def feature_names(self) -> list[str]:
        return [f"surprise_{m}" for m in self.members] + (self.own_feature_names() if self.own_features else [])

    def own_feature_names(self) -> list[str]:
        return (["value"] + [f"diff_{l}" for l in self.lags] + [f"{k}_{w}" for w in self.widths for k in ("med", "mad")]
                + [f"std_{w}" for w in self.widths] + ["day", "week"])
