"""NAB conformance: our NAB scorer (``pipeline.eval.metrics``) reproduces NAB's published scoreboard.

``../shared/datasets/nab/results/<detector>/<category>/<name>.csv.gz`` hold the outputs NAB
published for four of its reference detectors (``numenta``, ``windowedGaussian``, ``random``,
``null``) and ``results/scoreboard.json`` the normalised score, raw score and tuned threshold NAB
reported for each, per profile. Fed those outputs, alarms ``score >= threshold``, the label windows of
``labels/combined_windows.json`` and NAB's probation rule, our scorer must give the published
normalised score (within 0.01) for every detector and profile, and our corpus-optimal threshold must
never do worse than NAB's.

The last test runs our own ``windowed_gaussian`` causally on the raw NAB series and compares its
standard score at the corpus-optimal threshold with the published windowedGaussian outputs' score on
the same protocol. The 58 x 4 result files and the 58 data files are read once per module (~2 s).
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from models import registry
from models.frame import KPI_ID, MISSING, TIMESTAMP, VALUE, kpi_slices
from pipeline.eval import metrics
from tests.conftest import SHARED, needs_shared

pytestmark = [pytest.mark.shared_data, needs_shared]

NAB = SHARED / "nab"
DETECTORS = ("numenta", "windowedGaussian", "random", "null")
TOLERANCE = 0.01  # normalised score points


def window_rows(timestamps: np.ndarray, windows: list[list[str]]) -> np.ndarray:
    """Inclusive (first row, last row) of each label window, as NAB's labeler reads it: the rows whose
    timestamp lies in ``[start, end]``. A mask rather than a search: a few NAB files have timestamps
    that step back (a DST change), and NAB works on rows."""
    pairs = []
    for start, end in windows:
        inside = np.flatnonzero((timestamps >= np.datetime64(pd.Timestamp(start)))
                                & (timestamps <= np.datetime64(pd.Timestamp(end))))
        pairs.append((inside[0], inside[-1]))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def _read(path) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(path)
    return pd.to_datetime(frame["timestamp"]).to_numpy(), frame.iloc[:, 1].to_numpy(dtype=np.float64)


@pytest.fixture(scope="module")
def labels() -> dict[str, list[list[str]]]:
    return json.loads((NAB / "labels" / "combined_windows.json").read_text())


@pytest.fixture(scope="module")
def scoreboard() -> dict:
    return json.loads((NAB / "results" / "scoreboard.json").read_text())


@pytest.fixture(scope="module")
def published(labels) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """detector -> [(windows as row pairs, anomaly scores)] per file, in sorted file order."""
    out = {}
    for detector in DETECTORS:
        out[detector] = []
        for name in sorted(labels):
            timestamps, scores = _read(NAB / "results" / detector / f"{name}.gz")
            out[detector].append((window_rows(timestamps, labels[name]), scores))
    return out


def test_the_corpus_is_complete(labels, published):
    assert len(labels) == 58
    for detector, series in published.items():
        assert len(series) == 58, detector
        assert sum(len(w) for w, _ in series) == 116  # NAB's 116 label windows
        assert sum(s.size for _, s in series) == 365_558


@pytest.mark.parametrize("profile", sorted(metrics.NAB_PROFILES))
@pytest.mark.parametrize("detector", DETECTORS)
def test_published_threshold_gives_the_published_score(detector, profile, published, scoreboard):
    board = scoreboard[detector][profile]
    weights = metrics.NAB_PROFILES[profile]
    series = [(w, s >= board["threshold"], None) for w, s in published[detector]]
    ours = metrics.nab_standard(series, weights)
    assert ours == pytest.approx(board["normalized_score"], abs=TOLERANCE), (detector, profile)
    # The scoreboard's raw score comes from NAB's threshold optimiser; for random and windowedGaussian it is
    # not the raw score its own normalised score was computed from (100 (raw - null) / (perfect - null)
    # gives another value). Where the two published numbers agree, our raw score matches too.
    raw, n_windows = metrics.nab_raw_scores(series, weights)
    null, perfect = -weights["fnWeight"] * n_windows, weights["tpWeight"] * n_windows
    consistent = abs(100 * (board["raw_score"] - null) / (perfect - null) - board["normalized_score"]) < 1e-6
    assert consistent or detector in ("random", "windowedGaussian")
    if consistent:
        assert raw == pytest.approx(board["raw_score"], abs=1e-6)


@pytest.mark.parametrize("profile", sorted(metrics.NAB_PROFILES))
@pytest.mark.parametrize("detector", DETECTORS)
def test_best_threshold_never_does_worse_than_nab(detector, profile, published, scoreboard):
    weights = metrics.NAB_PROFILES[profile]
    threshold, best = metrics.nab_best_threshold([(w, s, None) for w, s in published[detector]], weights)
    # 1e-6: NAB's published figures carry its own float rounding (windowedGaussian low-FN differs by 2e-8)
    assert best >= scoreboard[detector][profile]["normalized_score"] - 1e-6, (detector, profile)
    # the threshold it returns gives the score it claims
    again = metrics.nab_standard([(w, s >= threshold, None) for w, s in published[detector]], weights)
    assert again == pytest.approx(best, abs=1e-9)


# Measured (standard profile, NAB's protocol: whole files, NAB's probation, one corpus-optimal
# threshold): our windowed_gaussian 40.18 (at |z| >= 7.24), NAB's published windowedGaussian outputs
# 39.65. Ours refreshes its mean/std at every step (NAB: every 100) and keeps ranking beyond |z| ~ 8.3,
# where NAB's 1 - Q(|z|) saturates at 1.0. Asserted: within 1.5 points of the published outputs.
WINDOWED_GAUSSIAN_GAP = 1.5


def test_our_windowed_gaussian_scores_like_nabs_on_nab(labels, published):
    parts, windows = [], []
    for name in sorted(labels):
        timestamps, values = _read(NAB / "data" / name)
        windows.append(window_rows(timestamps, labels[name]))
        # A regular stand-in grid: a few NAB files step back in time, NAB (and this rule) work on rows.
        parts.append(pd.DataFrame({KPI_ID: name, VALUE: values, MISSING: False,
                                   TIMESTAMP: pd.date_range("2000-01-01", periods=values.size, freq="min")}))
    frame = pd.concat(parts, ignore_index=True)  # raw values: a z-score does not care about scaling
    detector = registry.create("windowed_gaussian").fit(frame)
    scores = detector.score(frame, causal=True)
    ours = metrics.nab_best_threshold([(w, scores[sl], None) for w, (_, sl) in zip(windows, kpi_slices(frame))])[1]
    nab = metrics.nab_best_threshold([(w, s, None) for w, s in published["windowedGaussian"]])[1]
    print(f"NAB standard, corpus-optimal threshold: windowed_gaussian {ours:.2f}, "
          f"NAB's windowedGaussian outputs {nab:.2f}")
    assert nab == pytest.approx(39.65, abs=TOLERANCE)
    assert abs(ours - nab) <= WINDOWED_GAUSSIAN_GAP, (ours, nab)
