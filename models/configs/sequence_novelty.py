"""Hyperparameters of :mod:`models.sequence_novelty`; importable without torch (see :mod:`models.configs`)."""
from __future__ import annotations

import dataclasses

from models.base import DetectorConfig


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
