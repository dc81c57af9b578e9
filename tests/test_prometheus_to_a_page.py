"""From Prometheus to a page, end to end: README's walkthrough, command for command, against real servers.

A team's KPIs live in a real Prometheus (ten days at 5 minutes, backfilled with promtool, the last
sample a few minutes ago); a real Alertmanager routes every alert to a local receiver (the team's
pager). The user runs ``ingest → validate → windows → train → evaluate → register`` with the
``prometheus:`` source and no labels, then ``kpiguard score --date D`` with ``alerts.alertmanager.url``
set: the spike injected just before *now* is an active alert in Alertmanager, with kpiguard's labels,
and the receiver is paged once. ``kpiguard alert --date D`` again (a rerun) pages nobody.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest

from tests.conftest import REPO
from tests.servers import alertmanager, http_receiver, openmetrics, prometheus, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

KPIS = ("cpu", "latency_ms")
DETECTORS = "[diff_z,seasonal_residual,sequence_novelty]"  # as README's walkthroughs train
QUIET_S = 4.0  # Alertmanager here groups for 1 s: a second notification would have come by then


def kpis_until(last: pd.Timestamp) -> tuple[pd.DataFrame, pd.Timestamp]:
    """Ten days at 5 minutes up to ``last``: a daily cycle plus noise; latency_ms spikes 15 minutes before."""
    stamps = pd.date_range(end=last, periods=10 * 288, freq="5min")
    phase = 2 * np.pi * (stamps.hour * 60 + stamps.minute).to_numpy() / 1440
    rng = np.random.default_rng(5)
    frames = []
    spike = last - pd.Timedelta("15min")
    for kpi, level, amplitude in (("cpu", 50.0, 20.0), ("latency_ms", 200.0, 60.0)):
        v = level + amplitude * np.sin(phase) + rng.normal(0, 0.02 * level, len(stamps))
        if kpi == "latency_ms":
            v[stamps.get_loc(spike)] += 12 * v.std()
        frames.append(pd.DataFrame({"kpi_id": kpi, "timestamp": stamps, "value": np.round(v, 4)}))
    return pd.concat(frames, ignore_index=True), spike


def kpiguard(cwd, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)


def active_alerts(url: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v2/alerts?active=true&silenced=false&inhibited=false", timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    root = tmp_path_factory.mktemp("prom-to-page")
    last = pd.Timestamp.now(tz="UTC").floor("5min") - pd.Timedelta("5min")
    frame, spike = kpis_until(last)
    with prometheus(root / "prometheus", openmetrics(frame, metric="team_kpi", label="kpi")) as prom, \
            http_receiver() as pager, alertmanager(root / "alertmanager", pager.url) as am:
        work = root / "work"
        work.mkdir()
        (work / "params.yaml").write_text((REPO / "params.yaml").read_text())  # the shipped defaults
        spec = f"prometheus:{prom}?query=team_kpi"
        settings = [f"data.train={spec}", f"score.input={spec}", "data.prometheus.step=5m",
                    "data.prometheus.range=10D", "data.prometheus.kpi_labels=[kpi]", f"train.detectors={DETECTORS}",
                    f"alerts.alertmanager.url={am}", "evaluate.plot_kpis=0"]
        options = [arg for s in settings for arg in ("-S", s)]
        day = spike.date().isoformat()
        steps = {name: [name] for name in ("ingest", "validate", "windows", "train", "evaluate", "register")}
        steps |= {"score": ["score", "--date", day, "--json"], "alert": ["alert", "--date", day, "--json"]}
        results = {}
        for name, argv in steps.items():
            results[name] = kpiguard(work, *argv, *options)
            if results[name].returncode != 0:
                break
            if name == "score":  # the page: wait for the notification, then for anything more
                wait_until(lambda: len(pager.posts) >= 1, 30, "the Alertmanager notification")
                time.sleep(QUIET_S)
                results["pages_after_score"] = list(pager.posts)
                results["alerts"] = active_alerts(am)
        time.sleep(QUIET_S)
        results["pages_after_rerun"] = list(pager.posts)
        yield work, results, spike


def _explain(results: dict) -> str:
    return "\n".join(f"{n}: exit {r.returncode}\n{r.stdout[-1500:]}\n{r.stderr[-2500:]}"
                     for n, r in results.items() if isinstance(r, subprocess.CompletedProcess) and r.returncode)


def test_every_command_exits_0_without_traceback(walkthrough):
    _, results, _ = walkthrough
    for name in ("ingest", "validate", "windows", "train", "evaluate", "register", "score", "alert"):
        assert name in results and results[name].returncode == 0, _explain(results)
        assert "Traceback" not in results[name].stdout + results[name].stderr, name
    assert "2 KPIs" in results["ingest"].stdout, results["ingest"].stdout


def test_the_spike_is_an_active_alert_with_kpiguard_s_labels(walkthrough):
    _, results, spike = walkthrough
    assert "alerts" in results, _explain(results)
    ours = [a for a in results["alerts"] if a["labels"].get("kpi") == "latency_ms"]
    assert len(ours) == 1, results["alerts"]
    labels, notes = ours[0]["labels"], ours[0]["annotations"]
    assert labels["alertname"] == "KpiguardAnomaly" and labels["detector"] == "sequence_novelty"
    assert labels["severity"] in ("warning", "critical")
    assert pd.Timestamp(ours[0]["startsAt"]) <= spike <= pd.Timestamp(ours[0]["endsAt"])
    assert notes["incident"].startswith("inc-") and "latency_ms" in notes["summary"]
    assert float(notes["expected_low"]) <= float(notes["expected"]) <= float(notes["expected_high"])


def test_the_pager_gets_one_notification_and_a_rerun_adds_none(walkthrough):
    _, results, _ = walkthrough
    assert "pages_after_score" in results, _explain(results)
    pages = [p for p in results["pages_after_score"]
             if any(a["labels"].get("kpi") == "latency_ms" for a in p["json"]["alerts"])]
    assert len(pages) == 1 and pages[0]["json"]["status"] == "firing"
    assert results["pages_after_rerun"] == results["pages_after_score"]
    rerun = json.loads(results["alert"].stdout)
    am = rerun["sinks"]["alertmanager"]
    assert am["sent"] == 0 and am["unchanged"] >= 1, rerun


def test_the_daily_report_lists_the_incident(walkthrough):
    work, results, spike = walkthrough
    assert results["score"].returncode == 0, _explain(results)
    scored = json.loads(results["score"].stdout)
    assert any("latency_ms" in i["kpis"] and pd.Timestamp(i["start"]) <= spike <= pd.Timestamp(i["end"])
               for i in scored["anomaly_incidents"]), scored["anomaly_incidents"]
