"""Huge finite values (#13.2): always an alarm, never a crash, never a silent minimum score."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from models import registry
from models.base import TrainConfig
from models.frame import CLIPPED, MISSING, VALUE
from pipeline.batch import score
from pipeline.data import prep, sources
from pipeline.params import parse_params
from pipeline.serving.bundle import Bundle, BundleModel, predict_with, write_bundle
from pipeline.stages import evaluate, ingest, train, validate, windows
from tests.conftest import small_params_dict
from tests.detector_data import make_splits

DAY = "2026-01-06"
DETECTORS = ["robust_zscore", "dense_autoencoder"]
# Detectors whose score of a point reads a window of its neighbours: an autoencoder over windows (one
# clipped value spoils the reconstruction of every window holding it) and NAB's windowed Gaussian
# (one clipped value inflates the trailing std and hides what follows).
WINDOWED = ["conv1d_autoencoder", "windowed_gaussian"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("extreme")
    raw = small_params_dict()
    raw["paths"] = {k: str(root / v) for k, v in raw["paths"].items()}
    raw["train"].update({"detectors": DETECTORS + WINDOWED, "max_epochs": 2})
    p = parse_params(raw)
    ingest.run(p, Path(p.paths.raw))
    validate.run(p, Path(p.paths.raw), Path(p.paths.validated), Path(p.paths.quarantine),
                 Path(p.paths.validation_report))
    windows.run(p, Path(p.paths.validated), Path(p.paths.windows))
    for name in DETECTORS + WINDOWED:
        train.run(p, name, progress=False)
    evaluate.run(p)
    return root, p


def _model(root: Path, p, name: str):
    thresholds = Path(p.paths.evaluation) / "thresholds" / f"{name}.json"
    calibration = Path(p.paths.evaluation) / "calibration" / f"{name}.json"
    if not (root / f"bundle-{name}").exists():  # one bundle per detector for the module
        write_bundle(root / f"bundle-{name}", Path(p.paths.artifacts) / name, json.loads(thresholds.read_text()),
                     json.loads(calibration.read_text()), p.windows.clip_sigma)
    return BundleModel(Bundle.load(root / f"bundle-{name}")), {"uri": f"test:{name}"}


@pytest.mark.parametrize("name", DETECTORS)
def test_extreme_values_on_the_scored_day_are_flagged(trained, tmp_path, name):
    root, p = trained
    start, end = score.day_range(DAY)
    rows = sources.read_source("synthetic:", p, start - pd.Timedelta(p.score.context), end)
    day_rows = rows.index[(rows["timestamp"] >= start) & (rows["timestamp"] < end)]
    kpi = rows.loc[day_rows[0], "kpi_id"]
    mine = [i for i in day_rows if rows.loc[i, "kpi_id"] == kpi]
    single, pair = mine[40], (mine[120], mine[121])
    rows.loc[single, "value"] = 1e200               # one huge value: used to crash with "infinite score(s)"
    rows.loc[list(pair), "value"] = [1e200, -1e250]  # two adjacent: used to score the minimum, unflagged
    rows.to_csv(tmp_path / "in.csv", index=False)

    result = score.run(p, f"csv:{tmp_path / 'in.csv'}", start, end, str(tmp_path / "scores"), "unused",
                       model=_model(root, p, name))
    assert result["partitions"][0]["rows"] > 0
    out = score.read_partition(str(tmp_path / "scores"), DAY)
    assert np.isfinite(out["score"]).all()
    hits = out.set_index(["kpi_id", "timestamp"])
    for i in (single, *pair):
        row = hits.loc[(str(kpi), rows.loc[i, "timestamp"])]
        assert bool(row["is_anomaly"]), (i, row.to_dict())
    normal = out[(out["value"].abs() < 1e100)]
    assert normal["is_anomaly"].mean() < 0.5  # the rest of the day is scored as before


@pytest.mark.parametrize("name", WINDOWED)
def test_a_clipped_point_neither_raises_nor_hides_alarms_around_it(trained, name):
    """One 1e200 is flagged, and its windows see a local median instead of the clip bound: the alarms of
    every other point are those of the same day without it, including a real spike half an hour later
    (on 5c9dee7: conv1d_autoencoder raised ~70 extra alarms around it; windowed_gaussian's inflated std
    hid the spike)."""
    root, p = trained
    model, _ = _model(root, p, name)
    start, end = score.day_range(DAY)
    rows = sources.read_source("synthetic:", p, start - pd.Timedelta(p.score.context), end)
    day_rows = rows.index[(rows["timestamp"] >= start) & (rows["timestamp"] < end)]
    kpi = rows.loc[day_rows[0], "kpi_id"]
    mine = [i for i in day_rows if rows.loc[i, "kpi_id"] == kpi]
    extreme, spike = mine[100], mine[106]
    values = rows.loc[rows["kpi_id"] == kpi, "value"]
    rows.loc[spike, "value"] += 12 * (values.quantile(0.75) - values.quantile(0.25))

    def alarms(frame: pd.DataFrame) -> pd.Series:
        return predict_with(model, frame).set_index(["kpi_id", "timestamp"])["is_anomaly"]

    without = alarms(rows)
    with_extreme = alarms(rows.assign(value=rows["value"].where(rows.index != extreme, 1e200)))
    at, real = (str(kpi), rows.loc[extreme, "timestamp"]), (str(kpi), rows.loc[spike, "timestamp"])
    assert bool(with_extreme.loc[at])
    assert bool(without.loc[real]) and bool(with_extreme.loc[real])  # a real alarm, not hidden by the extreme
    others = with_extreme.drop(index=[at]), without.drop(index=[at])
    changed = int((others[0] != others[1]).sum())
    assert changed <= 1, f"{changed} points around the extreme value changed alarm"


def test_a_clipped_point_keeps_its_flag_and_an_alarm_score(trained):
    """The windows see a local median at a clipped point, so its detector score is ordinary; it is
    still an alarm, and its calibrated score is at least its KPI's threshold (the report ranks it)."""
    root, p = trained
    model, _ = _model(root, p, "conv1d_autoencoder")
    start, end = score.day_range(DAY)
    rows = sources.read_source("synthetic:", p, start - pd.Timedelta(p.score.context), end)
    i = rows.index[(rows["timestamp"] >= start)][50]
    rows.loc[i, "value"] = -1e250
    out = predict_with(model, rows).set_index(["kpi_id", "timestamp"])
    row = out.loc[(str(rows.loc[i, "kpi_id"]), rows.loc[i, "timestamp"])]
    assert bool(row["is_anomaly"]) and row["score"] >= row["threshold"]
    prepared = prep.prepare(rows, model.bundle.norm, model.bundle.clip_sigma)
    hit = prepared[prepared[CLIPPED] & ~prepared[MISSING]]
    assert len(hit) == 1 and abs(hit[VALUE].iloc[0]) < 10  # a typical normalised value, not the bound


def test_damp_clipped_uses_only_earlier_unclipped_values():
    values = np.array([1.0, 2.0, 3.0, 1e6, 1e6, 4.0, -1e6])
    clipped = np.abs(values) >= 1e6
    missing = np.zeros(len(values), dtype=bool)
    assert prep.damp_clipped(values, clipped, missing).tolist() == [1.0, 2.0, 3.0, 2.0, 2.0, 4.0, 2.5]
    # a gap beside a clipped point is interpolated from the damped value, not from the bound
    gap = np.array([1.0, 1e6, 500_000.0, 3.0])
    assert prep.damp_clipped(gap, gap >= 1e6, np.array([False, False, True, False])).tolist() == [1.0, 1.0, 2.0, 3.0]
    # nothing before it: the KPI's train median (0 in normalised units)
    assert prep.damp_clipped(np.array([1e6, 1.0]), np.array([True, False]), np.zeros(2, bool)).tolist() == [0.0, 1.0]


def test_normalisation_clips_and_marks(trained):
    _, p = trained
    stats = prep.NormStats(center=10.0, scale=1e-12, interval_s=300)
    values, clipped = stats.normalise(np.array([10.0, 11.0, 1e200, -1e250, 1e308]), p.windows.clip_sigma)
    assert np.isfinite(values).all() and np.abs(values).max() == p.windows.clip_sigma
    assert clipped.tolist() == [False, True, True, True, True]
    prepared = pd.read_parquet(Path(p.paths.windows) / "train.parquet")
    assert CLIPPED in prepared.columns and not prepared[CLIPPED].any()


@pytest.mark.parametrize("name", registry.names())
def test_no_detector_emits_non_finite_scores_up_to_the_clip_bound(name):
    """Every detector, briefly trained, scores values at +-clip_sigma (adjacent, and a long run) finitely."""
    torch.manual_seed(0)
    train_f, val_f, test_f = make_splits(n_kpis=1, n_points=1200)
    bound = parse_params(small_params_dict()).windows.clip_sigma
    # Short training where there is training; the rules that learn nothing take their defaults.
    config = {"isolation_forest": {"n_estimators": 20}, "lstm_forecaster": {"max_train_windows": 64}}.get(
        name, {"max_train_windows": 256} if "max_train_windows" in registry.get(name).config_class().to_dict() else None)
    detector = registry.create(name, config, TrainConfig(device="cpu", seed=0, max_epochs=1, patience=1,
                                                         progress=False)).fit(train_f, val_f)
    values = test_f[VALUE].to_numpy().copy()
    values[100], values[101] = bound, -bound
    values[300:340] = bound
    scores = detector.score(test_f.assign(**{VALUE: values}))
    assert scores.shape == (len(test_f),) and np.isfinite(scores).all()


def test_the_bundle_digest_covers_clip_sigma(trained, tmp_path):
    """A bundle is reused by its digest (the register stage): everything that decides its output must be in
    it, clip_sigma too, which decides what is clipped and always flagged (one unchanged detector, two
    clip_sigma values -> two digests; the same inputs -> the same digest)."""
    _, p = trained
    evaluation = Path(p.paths.evaluation)
    args = (Path(p.paths.artifacts) / "robust_zscore", json.loads((evaluation / "thresholds" / "robust_zscore.json").read_text()),
            json.loads((evaluation / "calibration" / "robust_zscore.json").read_text()))
    wide = write_bundle(tmp_path / "wide", *args, 1.0e6)
    again = write_bundle(tmp_path / "again", *args, 1.0e6)
    narrow = write_bundle(tmp_path / "narrow", *args, 3.0)
    assert wide["digest"] == again["digest"] != narrow["digest"]
    assert Bundle.load(tmp_path / "narrow").clip_sigma == 3.0 and Bundle.load(tmp_path / "wide").clip_sigma == 1.0e6
