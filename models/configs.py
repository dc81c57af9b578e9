"""Every detector's hyperparameters: one config dataclass per detector, importable without torch.

The detectors' modules import torch (their networks are ``nn.Module`` subclasses) and import their
config class from here. Keeping the configs apart lets ``pipeline.params`` validate every
``detectors.<name>`` section of params.yaml on load, with the detectors' own rules, without paying for
a torch import: a typo in params.yaml is reported in a fraction of a second, before any work starts.
:data:`CONFIGS` maps a registered detector name to its config class (``models.registry`` checks that
each detector class uses the one named here).
"""
from __future__ import annotations

import dataclasses

import pandas as pd

from models.base import DetectorConfig
from models.calibration import make_calibration

FEATURES = ("value", "diff")  # isolation_forest's per-point window features
# The detectors that learn from labels, known here without importing them (models.registry checks it
# against each class's `supervised`), so the ensemble's members are validated with params, torch-free.
SUPERVISED = ("stacked_gbdt", "cnn_classifier", "convlstm_classifier")


def _positive_durations(config: DetectorConfig, *keys: str) -> None:
    """Each of ``keys`` must be a positive duration pandas reads, such as '1D' or '7D'."""
    for key in keys:
        try:
            ok = pd.Timedelta(getattr(config, key)) > pd.Timedelta(0)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"{type(config).__name__}: '{key}' must be a positive duration such as '1D', "
                             f"got {getattr(config, key)!r}")


# models/torch_base.py
@dataclasses.dataclass
class TorchConfig(DetectorConfig):
    """Fields every neural detector has, on top of its own."""

    max_epochs: int | None = None          # caps train.max_epochs for this detector; null = no cap
    max_train_windows: int | None = None   # training samples drawn per epoch; null = all of them
    score_batch_size: int = 4096           # samples per inference batch (also for validation loss)

    def validate(self) -> None:
        self._positive("max_epochs", "max_train_windows", "score_batch_size")


# models/torch_base.py
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


# models/torch_base.py
@dataclasses.dataclass
class ClassifierConfig(TorchConfig):
    window: int = 48
    noise_std: float = 0.05  # std of Gaussian noise added to training windows (augmentation)

    def validate(self) -> None:
        super().validate()
        self._positive("window")
        if self.noise_std < 0:
            raise ValueError(f"{type(self).__name__}: 'noise_std' must be >= 0, got {self.noise_std}")


# models/robust_zscore.py
@dataclasses.dataclass
class RobustZScoreConfig(DetectorConfig):
    window: int = 48          # trailing points of the reference (4 h at 5-minute sampling)
    min_scale: float = 1e-3   # floor of the scale, in normalised units: a flat stretch must not divide by 0

    def validate(self) -> None:
        self._positive("window", "min_scale")


# models/isolation_forest.py
@dataclasses.dataclass
class IsolationForestConfig(DetectorConfig):
    window: int = 8
    features: tuple[str, ...] = ("value", "diff")  # per point of a window: the value, its first difference
    n_estimators: int = 100
    max_samples: int = 256
    max_train_windows: int = 50_000   # windows handed to sklearn (a random subset beyond that)
    score_stride: int = 2             # stride of scoring windows (+ one covering each KPI's tail); not causal
    score_batch_size: int = 8192      # windows per vectorised traversal

    def validate(self) -> None:
        self._positive("window", "n_estimators", "max_samples", "max_train_windows", "score_stride", "score_batch_size")
        if self.score_stride > self.window:
            raise ValueError(f"IsolationForestConfig: 'score_stride' ({self.score_stride}) must be <= 'window' "
                             f"({self.window}) so that every point is covered")
        if not self.features or any(f not in FEATURES for f in self.features) or len(set(self.features)) < len(self.features):
            raise ValueError(f"IsolationForestConfig: 'features' must be distinct names among {list(FEATURES)}, "
                             f"got {list(self.features)}")


# models/lstm_forecaster.py
@dataclasses.dataclass
class LstmForecasterConfig(TorchConfig):
    time_steps: int = 48        # minimum context before a prediction (the seed's look-back)
    chunk_length: int = 256     # predictions read out per LSTM pass, after the warm-up
    hidden_size: int = 64
    num_layers: int = 1
    train_stride: int = 8       # offset between training chunks (they overlap)
    # Chunks drawn per epoch: a chunk is ~6x a 48-point window, so 1,024 is about the 8,192 windows the
    # other networks draw. The default data has ~2,300 chunks; a bigger source no longer grows an epoch.
    max_train_windows: int | None = 1024
    score_batch_size: int = 512  # chunks per inference batch

    def validate(self) -> None:
        super().validate()
        self._positive("time_steps", "chunk_length", "hidden_size", "num_layers", "train_stride")

    @property
    def span(self) -> int:
        return self.time_steps + self.chunk_length


# models/lstm_autoencoder.py
@dataclasses.dataclass
class LstmAutoencoderConfig(ReconstructorConfig):
    hidden_size: int = 128   # encoder units = size of the code
    max_train_windows: int | None = 8192

    def validate(self) -> None:
        super().validate()
        self._positive("hidden_size")


# models/conv1d_autoencoder.py
@dataclasses.dataclass
class Conv1dAutoencoderConfig(ReconstructorConfig):
    filters: int = 256
    kernel_size: int = 5
    max_train_windows: int | None = 8192

    def validate(self) -> None:
        super().validate()
        self._positive("filters", "kernel_size")


# models/dense_autoencoder.py
@dataclasses.dataclass
class DenseAutoencoderConfig(ReconstructorConfig):
    hidden_sizes: tuple[int, ...] = (14, 7, 7)  # code, then the two inner layers
    activity_l1: float = 1e-4                   # the seed's l1(10e-5)

    def validate(self) -> None:
        super().validate()
        if len(self.hidden_sizes) != 3 or min(self.hidden_sizes) <= 0:
            raise ValueError(f"DenseAutoencoderConfig: 'hidden_sizes' must be 3 positive sizes, got {list(self.hidden_sizes)}")
        if self.activity_l1 < 0:
            raise ValueError(f"DenseAutoencoderConfig: 'activity_l1' must be >= 0, got {self.activity_l1}")


# models/cnn_classifier.py
@dataclasses.dataclass
class CnnClassifierConfig(ClassifierConfig):
    channels: tuple[int, ...] = (16, 32)    # filters of the two convolution blocks
    kernel_size: int = 6
    pool_size: int = 6
    pool_stride: int = 2
    dense_sizes: tuple[int, ...] = (64, 32)  # the two hidden dense layers; a third maps to 2 classes
    dropout: float = 0.3
    max_train_windows: int | None = 8192

    def validate(self) -> None:
        super().validate()
        self._positive("kernel_size", "pool_size", "pool_stride")
        if len(self.channels) != 2 or len(self.dense_sizes) != 2 or min(*self.channels, *self.dense_sizes) <= 0:
            raise ValueError("CnnClassifierConfig: 'channels' and 'dense_sizes' must each be 2 positive sizes")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"CnnClassifierConfig: 'dropout' must be in [0, 1), got {self.dropout}")
        if self.feature_length() < 1:
            raise ValueError(f"CnnClassifierConfig: 'window' {self.window} is too short for two blocks of "
                             f"kernel {self.kernel_size} and pool {self.pool_size}")

    def feature_length(self) -> int:
        """Time steps left after the convolution blocks (no padding; pooling in ceil mode)."""
        length = self.window
        for _ in self.channels:
            length = -(-(length - self.kernel_size + 1 - self.pool_size) // self.pool_stride) + 1
        return length


# models/convlstm_classifier.py
@dataclasses.dataclass
class ConvLstmClassifierConfig(ClassifierConfig):
    channels: tuple[int, ...] = (8, 16, 16)  # filters of the three convolution blocks
    kernel_size: int = 3
    pool_size: int = 2
    lstm_units: int = 32
    max_train_windows: int | None = 8192

    def validate(self) -> None:
        super().validate()
        self._positive("kernel_size", "pool_size", "lstm_units")
        if len(self.channels) != 3 or min(self.channels) <= 0:
            raise ValueError(f"ConvLstmClassifierConfig: 'channels' must be 3 positive sizes, got {list(self.channels)}")
        if self.window < self.pool_size ** 3:
            raise ValueError(f"ConvLstmClassifierConfig: 'window' must be at least pool_size**3 = "
                             f"{self.pool_size ** 3}, got {self.window}")


# models/vae_lstm.py
@dataclasses.dataclass
class VaeLstmConfig(TorchConfig):
    l_win: int = 48
    l_seq: int = 12
    code_size: int = 6
    vae_hidden: int = 128     # width of the VAE's first (and last) hidden layer; the next one is half
    lstm_layers: int = 3
    lstm_units: int = 64
    kl_weight: float = 0.02   # = 2 sigma^2: a Gaussian likelihood with fixed sigma = 0.1, per point
    train_stride: int = 1     # offset between training windows (VAE) and training sequences (LSTM)
    score_stride: int = 24    # offset between scoring sequences (causal scoring ignores it)
    max_train_windows: int | None = 8192

    def validate(self) -> None:
        super().validate()
        self._positive("l_win", "code_size", "vae_hidden", "lstm_layers", "lstm_units", "train_stride", "score_stride")
        if self.l_seq < 2:
            raise ValueError(f"VaeLstmConfig: 'l_seq' must be >= 2 (one window of history), got {self.l_seq}")
        if self.score_stride > self.l_win:
            raise ValueError(f"VaeLstmConfig: 'score_stride' ({self.score_stride}) must be <= 'l_win' ({self.l_win})")
        if self.kl_weight < 0:
            raise ValueError(f"VaeLstmConfig: 'kl_weight' must be >= 0, got {self.kl_weight}")

    @property
    def span(self) -> int:
        return self.l_win * self.l_seq


# models/windowed_gaussian.py
@dataclasses.dataclass
class WindowedGaussianConfig(DetectorConfig):
    window: int = 6400        # trailing values of the reference (NAB's windowSize)
    min_std: float = 1e-6     # floor of the standard deviation (NAB's), normalised units

    def validate(self) -> None:
        self._positive("window", "min_std")


# models/diff_z.py
@dataclasses.dataclass
class DiffZConfig(DetectorConfig):
    min_scale: float = 1e-3   # floor of the MAD-based scale, normalised units: a flat KPI must not divide by 0

    def validate(self) -> None:
        self._positive("min_scale")


# models/seasonal_residual.py
@dataclasses.dataclass
class SeasonalResidualConfig(DetectorConfig):
    scale_window: int = 1440     # past residuals in the rolling scale (a day at 1 minute, 5 days at 5 minutes)
    day: str = "1D"              # the periods, in time (pandas Timedelta strings)
    week: str = "7D"
    days: int = 3                # day candidates 1 .. days days back (plus the week)
    neighbours: int = 2          # k: candidates at t - period - k .. t - period + k
    fallback_window: int = 12    # past values whose median is the baseline before a day of history
    min_history: int = 12        # residuals needed before the first score
    min_scale: float = 0.01      # floor of the scale, normalised units: a flat KPI must not divide by 0
    mean_scale: float = 1.0      # the scale is at least this times the mean past |residual| (0: the MAD alone)

    def validate(self) -> None:
        self._positive("scale_window", "fallback_window", "min_history", "min_scale", "days")
        for key in ("neighbours", "mean_scale"):
            if getattr(self, key) < 0:
                raise ValueError(f"SeasonalResidualConfig: '{key}' must be >= 0, got {getattr(self, key)}")
        _positive_durations(self, "day", "week")


# models/spectral_residual.py
@dataclasses.dataclass
class SpectralResidualConfig(DetectorConfig):
    window: int = 128            # points per window (the last is the point scored)
    extend: int = 5              # m: estimated points appended to each window
    amplitude_window: int = 3    # q: trailing average of the log amplitude over frequencies
    score_window: int = 21       # z: saliency values before the point in its local average
    batch_windows: int = 2048    # windows per vectorised block: its (windows, 2K) arrays stay in the CPU cache

    def validate(self) -> None:
        self._positive("window", "extend", "amplitude_window", "score_window", "batch_windows")
        if self.window <= max(self.score_window, self.extend):
            raise ValueError(f"SpectralResidualConfig: 'window' ({self.window}) must exceed 'score_window' "
                             f"({self.score_window}) and 'extend' ({self.extend})")


# models/members.py: the nested, calibrated members of the ensemble and of stacked_gbdt
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
        for name in self.members:
            if name in nested or name not in CONFIGS:
                raise ValueError(f"{what}: 'members' holds {name!r}; choose among "
                                 f"{', '.join(n for n in CONFIGS if n not in nested)}")
            if name in SUPERVISED:
                raise ValueError(f"{what}: 'members' holds {name!r}, which is supervised; the {owner}'s "
                                 f"members must not need labels")
        if self.calibration not in ("ecdf", "likelihood"):
            raise ValueError(f"{what}: 'calibration' must be ecdf or likelihood, got {self.calibration!r}")
        make_calibration(self.calibration_config())  # its own range checks (tail_level, ...) name the key

    def calibration_config(self) -> dict:
        """The members' calibration as ``make_calibration`` takes it."""
        keys = ("min_points", "knots", "tail_level", "short_window", "long_window")
        return {"method": self.calibration, **{k: getattr(self, k) for k in keys}}


# models/stacked_gbdt.py
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
        _positive_durations(self, "day", "week")

    def feature_names(self) -> list[str]:
        return [f"surprise_{m}" for m in self.members] + (self.own_feature_names() if self.own_features else [])

    def own_feature_names(self) -> list[str]:
        return (["value"] + [f"diff_{l}" for l in self.lags] + [f"{k}_{w}" for w in self.widths for k in ("med", "mad")]
                + [f"std_{w}" for w in self.widths] + ["day", "week"])


# models/sequence_novelty.py
@dataclasses.dataclass
class SequenceNoveltyConfig(DetectorConfig):
    channels: tuple[str, ...] = ("novelty", "daily", "match")  # the calibrated channels whose maximum is scored
    buckets: int = 10             # quantisation of the KPI's train + validation range (transition novelty)
    offsets: int = 4              # quantisations shifted by 1/offsets of a bucket, averaged
    pseudo_count: float = 0.1     # added to every transition count (a never-seen one is not infinitely novel)
    daily_buckets: int = 8        # quantisation of the time-of-day novelty channel
    day_bins: int = 24            # its context: equal bins of the day (24: the hour)
    match_length: int = 8         # points per window of the nearest-earlier-window channel
    exclusion: int | None = None  # a match must end at least this many points earlier (null: match_length)
    match_history: int = 20160    # ... and at most this many (bounds the cost: n * match_history * length)
    extreme_tolerance: float | None = 0.05  # a new extreme leaves the range so far by this share of it (null: no rule)
    unseen_head: int = 750        # a KPI absent from training is quantised on its first this-many points
    short_window: int = 10        # the channels' likelihood calibration (NAB's anomaly likelihood)
    long_window: int = 8640
    min_std_ratio: float = 0.1

    def validate(self) -> None:
        self._positive("buckets", "offsets", "pseudo_count", "daily_buckets", "day_bins", "match_length", "exclusion", "match_history",
                       "unseen_head", "short_window", "long_window", "min_std_ratio")
        if not self.channels or not set(self.channels) <= {"novelty", "daily", "match"} \
                or len(set(self.channels)) < len(self.channels):
            raise ValueError(f"SequenceNoveltyConfig: 'channels' must be distinct names among novelty, daily, "
                             f"match, at least one, got {list(self.channels)}")
        if self.extreme_tolerance is not None and self.extreme_tolerance < 0:
            raise ValueError(f"SequenceNoveltyConfig: 'extreme_tolerance' must be >= 0, got {self.extreme_tolerance}")
        if self.match_history < (self.exclusion or self.match_length):
            raise ValueError(f"SequenceNoveltyConfig: 'match_history' ({self.match_history}) must be at least "
                             f"'exclusion' ({self.exclusion or self.match_length})")

    def calibration_config(self) -> dict:
        """The channels' calibration as ``make_calibration`` takes it."""
        return {"method": "likelihood", "short_window": self.short_window, "long_window": self.long_window,
                "min_std_ratio": self.min_std_ratio}


# models/ensemble.py
@dataclasses.dataclass
class EnsembleConfig(MembersConfig):
    # Cheap unsupervised rules, each strong on a different anomaly shape (steps, excursions from the
    # recent median, from the same time a day/week back, spectral breaks); they run with their defaults.
    members: tuple[str, ...] = ("diff_z", "robust_zscore", "seasonal_residual", "spectral_residual")

    def validate(self) -> None:
        self.validate_members("ensemble")


CONFIGS: dict[str, type[DetectorConfig]] = {
    "windowed_gaussian": WindowedGaussianConfig,
    "diff_z": DiffZConfig,
    "seasonal_residual": SeasonalResidualConfig,
    "spectral_residual": SpectralResidualConfig,
    "stacked_gbdt": StackedGbdtConfig,
    "sequence_novelty": SequenceNoveltyConfig,
    "robust_zscore": RobustZScoreConfig,
    "isolation_forest": IsolationForestConfig,
    "lstm_forecaster": LstmForecasterConfig,
    "lstm_autoencoder": LstmAutoencoderConfig,
    "conv1d_autoencoder": Conv1dAutoencoderConfig,
    "dense_autoencoder": DenseAutoencoderConfig,
    "cnn_classifier": CnnClassifierConfig,
    "convlstm_classifier": ConvLstmClassifierConfig,
    "vae_lstm": VaeLstmConfig,
    "ensemble": EnsembleConfig,
}
