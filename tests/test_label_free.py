"""The label-free path (issue: a CSV without labels): evaluate on unlabelled KPIs picks the default detector,
with alarm-budget thresholds, exit 0 and no traceback; the register gate's rule without labels."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import yaml

from pipeline import cli
from pipeline.serving.gate import gate_rule
from pipeline.serving.registry import CHALLENGER, CHAMPION
from tests.conftest import REPO, small_params_dict


def unlabelled_params(tmp_path) -> str:
    ts = pd.date_range("2026-01-01", "2026-01-04", freq="5min", tz="UTC", inclusive="left")
    rng = np.random.default_rng(0)
    frames = [pd.DataFrame({"kpi_id": kpi, "timestamp": ts,
                            "value": 10 + np.sin(np.arange(len(ts)) * 2 * np.pi / 288) + rng.normal(0, 0.1, len(ts))})
              for kpi in ("cpu", "mem", "qps")]
    pd.concat(frames).to_csv(tmp_path / "kpis.csv", index=False)  # no label column
    raw = small_params_dict()
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    raw["data"]["train"] = f"csv:{tmp_path / 'kpis.csv'}"
    raw["train"]["detectors"] = ["diff_z", "sequence_novelty", "stacked_gbdt"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_evaluate_without_labels_serves_the_default_detector(tmp_path, capsys):
    params = unlabelled_params(tmp_path)
    for stage in ("ingest", "validate", "windows", "train"):
        assert cli.main([stage, "--params", params, "--no-progress"]) == 0
    capsys.readouterr()
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "evaluate", "--params", params], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "ThresholdError" not in done.stderr
    assert done.stdout.startswith("evaluate: 2/3 detectors scored; champion sequence_novelty, the default detector "
                                  "(the validation split has no labelled event)")
    report = json.loads((tmp_path / "reports/evaluation/metrics.json").read_text())
    assert report["best_on_val"] == "sequence_novelty" and report["selection"]["label_free"]
    assert report["events"] == {"val": 0, "test": 0}
    assert report["detectors"]["stacked_gbdt"]["status"] == "skipped"  # supervised: a status, not a failure
    for name in ("diff_z", "sequence_novelty", "random"):
        res = report["detectors"][name]
        assert res["status"] == "ok" and res["threshold"]["method"] == "budget"
        # the global budget on validation: 2 a day over 3 KPIs x 0.6 day (173 of 864 points), to within one alarm
        assert abs(res["alarms"]["val"] - 2.0) <= 1 / 1.8
    board = (tmp_path / "reports/evaluation/leaderboard.md").read_text()
    assert "| stacked_gbdt |" in board and "skipped: stacked_gbdt is supervised" in board
    assert ("Champion: **sequence_novelty**. No metric picks the champion: the validation split has no labelled "
            "event; it is the default detector") in board
    threshold = json.loads((tmp_path / "reports/evaluation/thresholds/sequence_novelty.json").read_text())
    assert threshold["method"] == "budget" and threshold["global_value"] is not None


def paired(better, low, high, difference=0.05):
    return {"better": better, "difference": difference, "difference_interval": [low, high], "rule": "paired_bootstrap",
            "margin": 0.0}


def test_gate_rule():
    free = "the validation split has no labelled event"
    # label-free: an incumbent trained on other KPIs is replaced, whatever the figures
    assert gate_rule("3", paired(None, None, None), free, ["cpu", "mem", "qps", "x"], 4, 0.0) == (
        CHAMPION, "v3 was trained on other KPIs: 4 of the 4 validation KPIs (cpu, mem, qps, ...) are not among its "
                  "KPIs; no metric decides (the validation split has no labelled event)")
    # ... and one that covers them too: a retrain replaces the previous one
    assert gate_rule("3", paired(None, None, None), free, [], 4, 0.0) == (
        CHAMPION, "neither version has a metric that decides (the validation split has no labelled event): the new "
                  "version, a retrain, replaces v3")
    # with enough events, the paired bootstrap decides
    assert gate_rule("3", paired(True, 0.01, 0.09), None, [], 4, 0.0) == (
        CHAMPION, "beats v3 by more than 0.0 beyond the noise (paired bootstrap interval of the difference "
                  "[+0.010, +0.090])")
    assert gate_rule("3", paired(False, -0.02, 0.09), None, [], 4, 0.0)[0] == CHALLENGER
    assert gate_rule("3", {"better": None}, None, [], 4, 0.0) == (
        CHALLENGER, "the metric is undefined on this validation data; promote by hand")
