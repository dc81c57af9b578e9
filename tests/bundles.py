"""Small servable bundles built straight from models/ (no pipeline stage): for the bundle checks and fuzz.

A bundle here is what ``kpiguard register`` logs: a fitted detector, per-KPI normalisation, a fitted
calibration and a per-KPI threshold, assembled by :func:`pipeline.serving.bundle.write_bundle`. The
synthetic KPIs of :mod:`tests.detector_data` are short (a few days at 5 minutes), so a bundle is built in
about a second and its served rows score in milliseconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from models import registry
from models.base import TrainConfig
from models.calibration import make_calibration
from models.frame import KPI_ID, MISSING, RAW_VALUE, TIMESTAMP, VALUE, kpi_slices
from pipeline.data.prep import fit_norm
from pipeline.eval.thresholds import make_threshold
from pipeline.serving.bundle import data_range, write_bundle
from tests.detector_data import make_frame, split

CPU = TrainConfig(device="cpu", seed=0, max_epochs=1, patience=1, progress=False)
INTERVAL_S = 300.0


def make_bundle(root: Path, name: str, config: dict | None = None, calibration: str = "ecdf",
                n_points: int = 1500, clip_sigma: float = 1.0e6) -> tuple[Path, pd.DataFrame]:
    """(bundle directory, raw rows to serve: the test split, in original units) for detector ``name``."""
    root = Path(root)
    train, val, test = split(make_frame(n_kpis=2, n_points=n_points))
    detector = registry.create(name, config, CPU).fit(train, val)
    detector_dir = detector.save(root / f"{name}-detector")
    norm = {}
    for kpi, sl in kpi_slices(train):
        stats = fit_norm(train[RAW_VALUE].to_numpy()[sl], train[MISSING].to_numpy()[sl], INTERVAL_S)
        norm[kpi] = {"center": stats.center, "scale": stats.scale, "interval_s": stats.interval_s}
    (detector_dir / "norm_stats.json").write_text(json.dumps(norm))
    fit_rows = pd.concat([train, val], ignore_index=True).sort_values([KPI_ID, TIMESTAMP], ignore_index=True)
    raw = detector.score(fit_rows)
    ids = fit_rows[KPI_ID].to_numpy()
    fitted = make_calibration({"method": calibration}).fit(raw, ids, fit_rows[MISSING].to_numpy())
    scores = fitted.transform(raw, ids)
    threshold = make_threshold({"method": "quantile", "quantile": 0.99, "scope": "per_kpi", "min_points": 50})
    threshold.fit(scores, missing=fit_rows[MISSING].to_numpy(), kpi_ids=ids)
    bundle = root / f"{name}-bundle"
    write_bundle(bundle, detector_dir, threshold.to_dict(), fitted.to_dict(), clip_sigma,
                 {"training_range": data_range(fit_rows[TIMESTAMP])})
    observed = test[~test[MISSING].to_numpy()]
    rows = pd.DataFrame({KPI_ID: observed[KPI_ID].astype(str), TIMESTAMP: observed[TIMESTAMP],
                         VALUE: observed[RAW_VALUE].astype(np.float64)}).reset_index(drop=True)
    return bundle, rows
