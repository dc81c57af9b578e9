"""Exact tests of models/sequence_novelty.py: its channels against brute force, round trip."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models import registry
from models.frame import KPI_ID
from tests.models.conftest import CPU


def test_sequence_novelty_transition_counts_are_from_the_past_only():
    from models.sequence_novelty import PRIOR_OUTCOMES, day_bins, earlier_counts, novelty
    np.testing.assert_array_equal(earlier_counts(np.array([3, 1, 3, 3, 1])), [0, 0, 1, 2, 1])
    # range [0, 1] in 2 buckets, one quantisation: values 0.2 / 0.7 are buckets 0 / 1
    x = np.array([0.2, 0.7, 0.2, 0.7, 0.2, 0.7])
    a = 0.5
    got = novelty(x, 0.0, 1.0, buckets=2, offsets=1, pseudo_count=a)
    # t=1: transition 0->1 never seen, bucket 0 left once before? no: counts are strictly earlier
    n_pair = np.array([0, 0, 0, 1, 1, 2])  # earlier (prev -> cur) pairs (t=0's "prev" is the padding)
    n_prev = np.array([0, 0, 0, 1, 1, 2])  # earlier departures from prev
    expected = -np.log(np.minimum((n_pair + a) / (n_prev + PRIOR_OUTCOMES * a), 1.0))
    np.testing.assert_allclose(got, expected)
    assert got[-1] < got[1]  # a transition seen before is less novel
    # with a context: the same bucket in another context is new again
    ctx = np.array([0, 0, 1, 1, 0, 0])
    x = np.array([0.2, 0.2, 0.2, 0.2, 0.2, 0.7])
    got = novelty(x, 0.0, 1.0, buckets=2, offsets=1, pseudo_count=a, context=ctx)
    n_pair, n_ctx = np.array([0, 1, 0, 1, 2, 0]), np.array([0, 1, 0, 1, 2, 3])
    np.testing.assert_allclose(got, -np.log(np.minimum((n_pair + a) / (n_ctx + PRIOR_OUTCOMES * a), 1.0)))
    stamps = pd.Series(pd.to_datetime(["2026-01-01 00:00", "2026-01-01 05:59", "2026-01-01 06:00",
                                       "2026-01-02 23:59"], utc=True))
    np.testing.assert_array_equal(day_bins(stamps, 4), [0, 0, 1, 3])


def test_sequence_novelty_nearest_earlier_window_matches_brute_force():
    from models.sequence_novelty import nearest_earlier_window
    rng = np.random.default_rng(3)
    x = rng.normal(size=300)
    m, excl, hist = 5, 3, 40
    got = nearest_earlier_window(x, m, excl, hist, block=17)
    want = np.zeros(x.size)
    for t in range(m - 1, x.size):
        cands = [np.linalg.norm(x[t - m + 1:t + 1] - x[s - m + 1:s + 1])
                 for s in range(max(m - 1, t - hist), t - excl + 1)]
        want[t] = min(cands) if cands else 0.0
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_sequence_novelty_new_extremes_widen_the_range_with_observed_points_only():
    from models.sequence_novelty import new_extremes
    x = np.array([0.5, 1.04, 1.2, 1.25, 5.0, -1.0, 9.0])
    observed = np.array([True, True, True, True, True, True, False])
    # fitted range [0, 1]; tolerance 5% of the range so far
    got = new_extremes(x, observed, 0.0, 1.0, 0.05)
    # 1.04 < 1 + 0.05; 1.2 > 1.05; 1.25 < 1.2 + 0.06; 5.0 > 1.25 + 0.0625; -1.0 < 0 - 0.25; 9.0 unobserved
    np.testing.assert_array_equal(got, [False, False, True, False, True, True, False])


def test_sequence_novelty_round_trips_and_serves_a_new_kpi(splits, tmp_path):
    train, val, test = splits
    detector = registry.create("sequence_novelty", None, CPU).fit(train, val)
    loaded = registry.load(detector.save(tmp_path / "sn"))
    np.testing.assert_array_equal(loaded.score(test), detector.score(test))
    renamed = test.assign(**{KPI_ID: test[KPI_ID].astype(str) + "_new"})
    scores = detector.score(renamed)
    assert np.isfinite(scores).all() and scores.max() > 5.0  # the test split's anomalies still stand out


def test_sequence_novelty_channels_are_chosen_by_config(splits):
    from models.configs.sequence_novelty import SequenceNoveltyConfig
    train, val, test = splits
    only = registry.create("sequence_novelty", {"channels": ["match"], "extreme_tolerance": None}, CPU).fit(train, val)
    full = registry.create("sequence_novelty", None, CPU).fit(train, val)
    assert set(only.calibrations) == {"match"} and set(full.calibrations) == {"novelty", "daily", "match"}
    # one channel, no rule: exactly that channel's calibrated surprise; the full detector is never below it
    channel = only._channels(test)["match"]
    np.testing.assert_array_equal(only.score(test), only.calibrations["match"].transform(channel, test[KPI_ID].to_numpy()))
    assert (full.score(test) >= only.score(test) - 1e-12).all()
    with pytest.raises(ValueError, match="'channels' must be distinct names"):
        SequenceNoveltyConfig(channels=("match", "seasonal"))
