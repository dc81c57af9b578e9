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
from models.frame import CLIPPED, VALUE
from pipeline.batch import score
from pipeline.data import prep, sources
from pipeline.params import parse_params
from pipeline.serving.bundle import Bundle, BundleModel, write_bundle
from pipeline.stages import evaluate, ingest, train, validate, windows
from tests.conftest import small_params_dict
from tests.detector_data import make_splits

DAY = "2026-01-06"
DETECTORS = ["robust_zscore", "dense_autoencoder"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("extreme")
    raw = small_params_dict()
    raw["paths"] = {k: str(root / v) for k, v in raw["paths"].items()}
    raw["train"].update({"detectors": DETECTORS, "max_epochs": 2})
    p = parse_params(raw)
    ingest.run(p, Path(p.paths.raw))
    validate.run(p, Path(p.paths.raw), Path(p.paths.validated), Path(p.paths.quarantine),
                 Path(p.paths.validation_report))
    windows.run(p, Path(p.paths.validated), Path(p.paths.windows))
    for name in DETECTORS:
        train.run(p, name, progress=False)
    evaluate.run(p)
    return root, p


def _model(root: Path, p, name: str):
    thresholds = Path(p.paths.evaluation) / "thresholds" / f"{name}.json"
    calibration = Path(p.paths.evaluation) / "calibration" / f"{name}.json"
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
