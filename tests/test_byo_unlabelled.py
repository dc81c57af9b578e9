"""Bring your own data, end to end: an unlabelled CSV, long and wide, through every CLI command.

A user with no labels exports three KPIs (ten days at 5 minutes, a daily cycle plus noise, three spikes)
and runs ``ingest → validate → windows → train → evaluate → register → score --date D → report --date D``
with ``kpiguard`` alone, in a fresh working directory (the local MLflow store: ``sqlite:///mlflow.db``
and ``./mlartifacts`` there), the settings given with ``-S``. The long file has a ``metric`` column and UTC
times; the wide one is a Grafana "Series joined by time" export with local Berlin times and empty cells.

Each layout runs once (a module fixture); the tests read what the commands printed and wrote.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

DAY = "2026-01-10"                      # the scored day: the last of the ten
KPIS = ("cpu", "errors", "latency_ms")
SPIKES = {"cpu": "2026-01-08 12:00", "errors": "2026-01-09 06:00", "latency_ms": "2026-01-10 12:00"}  # local times
DETECTORS = "[diff_z,seasonal_residual,sequence_novelty]"  # the default detector among them (README)
LAYOUTS = {
    # layout: (file, -S settings of the source)
    "long": ("kpis.csv", ["data.csv.kpi_id=metric"]),
    "wide": ("grafana.csv", ["data.csv.layout=wide", "data.csv.timestamp=Time", "data.csv.timezone=Europe/Berlin"]),
}
ZONES = {"long": "UTC", "wide": "Europe/Berlin"}


def kpi_values() -> tuple[pd.DatetimeIndex, dict[str, np.ndarray]]:
    """Ten days at 5 minutes (naive local times): a daily cycle plus noise, one spike per KPI."""
    rng = np.random.default_rng(3)
    times = pd.date_range("2026-01-01", periods=10 * 288, freq="5min")
    phase = 2 * np.pi * np.arange(len(times)) / 288
    values = {"cpu": 50 + 20 * np.sin(phase), "errors": 5 + 2 * np.sin(phase + 2),
              "latency_ms": 200 + 60 * np.sin(phase - 1)}
    for kpi, v in values.items():
        v += rng.normal(0, 0.02 * np.abs(v).mean(), len(v))
        v[times.get_loc(pd.Timestamp(SPIKES[kpi]))] += 10 * v.std()
    return times, values


def write_source(root: Path, layout: str) -> Path:
    times, values = kpi_values()
    path = root / LAYOUTS[layout][0]
    if layout == "long":  # timestamp,metric,value: no label column
        long = pd.DataFrame({"timestamp": np.tile(times.strftime("%Y-%m-%d %H:%M:%S"), len(KPIS)),
                             "metric": np.repeat(KPIS, len(times)),
                             "value": np.concatenate([values[k] for k in KPIS])})
        long.to_csv(path, index=False)
    else:  # as Grafana's panel inspector writes it: quoted header, CRLF, a sample missing here and there
        cells = {k: [f"{x:.6g}" for x in values[k]] for k in KPIS}
        cells["cpu"][100] = cells["errors"][2000] = ""
        lines = ['"Time",' + ",".join(f'"{k}"' for k in KPIS)]
        lines += [",".join([t, *(cells[k][i] for k in KPIS)]) for i, t in enumerate(times.strftime("%Y-%m-%d %H:%M:%S"))]
        path.write_bytes(("\r\n".join(lines) + "\r\n\r\n").encode())
    return path


def kpiguard(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")  # this checkout's code, whatever is installed
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module", params=list(LAYOUTS))
def byo(request, tmp_path_factory):
    """(layout, working directory, {command: CompletedProcess}) after the whole sequence; it stops at the
    first command that fails, so the later ones are absent."""
    layout = request.param
    work = tmp_path_factory.mktemp(f"byo-{layout}")
    (work / "params.yaml").write_text((REPO / "params.yaml").read_text())  # the shipped defaults
    spec = f"csv:{write_source(work, layout)}"
    settings = [f"data.train={spec}", f"score.input={spec}", *LAYOUTS[layout][1],
                f"train.detectors={DETECTORS}", "evaluate.plot_kpis=0"]  # the shipped label-free defaults
    options = [arg for s in settings for arg in ("-S", s)]
    steps = {"ingest": ["ingest"], "validate": ["validate"], "windows": ["windows"], "train": ["train"],
             "evaluate": ["evaluate"], "register": ["register"], "score": ["score", "--date", DAY, "--json"],
             "report": ["report", "--date", DAY]}
    results = {}
    for name, argv in steps.items():
        results[name] = kpiguard(work, *argv, *options)
        if results[name].returncode != 0:
            break
    return layout, work, results


def _explain(results: dict) -> str:
    return "\n".join(f"{n}: exit {r.returncode}\n{r.stderr[-2000:]}" for n, r in results.items() if r.returncode)


def test_ingest_to_register_exit_0_without_traceback(byo):
    _, work, results = byo
    for name in ("ingest", "validate", "windows", "train", "evaluate", "register"):
        assert name in results and results[name].returncode == 0, _explain(results)
        assert "Traceback" not in results[name].stdout + results[name].stderr, name
    layout = byo[0]
    rows = 10 * 288 * len(KPIS) - (2 if layout == "wide" else 0)  # wide: two empty cells are no rows
    assert f"{rows:,} rows, 3 KPIs" in results["ingest"].stdout, results["ingest"].stdout
    raw = pd.read_parquet(work / "data/raw/train.parquet")
    assert "label" not in raw.columns and sorted(raw["kpi_id"].unique()) == list(KPIS)


def test_naive_times_are_read_in_their_zone(byo):
    layout, work, results = byo
    assert results["ingest"].returncode == 0, _explain(results)
    raw = pd.read_parquet(work / "data/raw/train.parquet")
    first = pd.Timestamp("2026-01-01", tz=ZONES[layout]).tz_convert("UTC")
    assert raw["timestamp"].min() == first
    assert raw.groupby("kpi_id")["timestamp"].max().eq(first + pd.Timedelta("10D") - pd.Timedelta("5min")).all()


def test_score_uses_a_champion_that_covers_the_csv_kpis(byo):
    """register serves the default detector, trained on the CSV's own KPIs, and score uses it on every row."""
    layout, work, results = byo
    assert "score" in results and results["score"].returncode == 0, _explain(results)
    score = results["score"]
    assert "Traceback" not in score.stdout + score.stderr
    assert "without training statistics" not in score.stderr  # every KPI was trained on
    result = json.loads(score.stdout)
    assert result["model"]["model"] == "kpiguard" and result["model"]["version"]
    # No label: no metric picks the champion, the documented default detector serves these KPIs.
    assert result["model"]["detector"] == "sequence_novelty"
    raw = pd.read_parquet(work / "data/raw/train.parquet")
    day = pd.Timestamp(DAY, tz="UTC")
    on_day = raw[(raw["timestamp"] >= day) & (raw["timestamp"] < day + pd.Timedelta("1D"))]
    assert [p["rows"] for p in result["partitions"]] == [len(on_day)]  # every row of the day scored
    scores = pd.read_parquet(work / "data/scores" / f"date={DAY}" / "scores.parquet")
    assert sorted(scores["kpi_id"].unique()) == list(KPIS)
    spike = pd.Timestamp(SPIKES["latency_ms"], tz=ZONES[layout]).tz_convert("UTC")
    assert any(s["kpi_id"] == "latency_ms" and pd.Timestamp(s["start"]) <= spike <= pd.Timestamp(s["end"])
               for s in result["anomaly_spans"]), result["anomaly_spans"]


def test_report_lists_incidents_with_expected_bands(byo):
    """`kpiguard report` reads the scored day (score.output) and writes <score.reports>/<D>.html/.json, with
    incidents, each KPI's observed value at its peak beside the expected band in its own units."""
    _, work, results = byo
    assert "report" in results and results["report"].returncode == 0, _explain(results)
    assert "Traceback" not in results["report"].stdout + results["report"].stderr
    assert (work / "reports/daily" / f"{DAY}.html").stat().st_size > 0
    report = json.loads((work / "reports/daily" / f"{DAY}.json").read_text())
    incidents = report["incidents"]
    assert incidents and any("latency_ms" in i["kpis"] for i in incidents), incidents
    for incident in incidents:
        assert set(incident["kpis"]) <= set(KPIS) and incident["id"].startswith("inc-")
        for kpi in incident["per_kpi"]:  # each KPI's observed value at its peak beside the expected band
            low, high = kpi["expected_low"], kpi["expected_high"]
            assert np.isfinite(low) and np.isfinite(high) and low <= high, incident
            assert np.isfinite(kpi["observed"]), incident
