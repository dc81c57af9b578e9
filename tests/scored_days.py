"""Scored days written as ``kpiguard score`` writes them, with chosen flagged points: incidents to alert on
(tests/test_alerts.py) and to review (tests/test_reviews.py, tests/test_review_page.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.batch import score

MODEL = {"uri": "models:/kpiguard@champion", "model": "kpiguard", "version": "3", "detector": "diff_z"}


def write_day(output: Path, day: str, flagged: dict[str, dict[pd.Timestamp, float]]) -> None:
    """The day's partition of cpu and mem at 5 minutes: value 250 where flagged (score as given, threshold
    3), 100 elsewhere; the model's expected band 100 (90 – 110) throughout."""
    stamps = pd.date_range(day, periods=288, freq="5min", tz="UTC")
    parts = []
    for kpi in ("cpu", "mem"):
        scores = pd.Series(0.5, index=stamps)
        for at, s in flagged.get(kpi, {}).items():
            scores.loc[at] = s
        assert scores.index.equals(stamps), "flagged points must lie in the day"
        flags = (scores > 3.0).to_numpy()
        parts.append(pd.DataFrame({
            "kpi_id": kpi, "timestamp": stamps, "value": np.where(flags, 250.0, 100.0), "expected": 100.0,
            "expected_low": 90.0, "expected_high": 110.0, "raw_score": 0.0, "score": scores.to_numpy(),
            "threshold": 3.0, "is_anomaly": flags}))
    rows = pd.concat(parts, ignore_index=True).reindex(columns=score.SCORES_SCHEMA.names)
    held = pd.DataFrame({"kpi_id": pd.Series(dtype=str), "timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
                         "value": pd.Series(dtype=float), "rule": pd.Series(dtype=str), "reason": pd.Series(dtype=str)})
    score.write_days(str(output), *score.day_range(day), rows, held, {"model": MODEL, "input": "synthetic:"})
