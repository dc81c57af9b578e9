"""From an anomalous sample to the alert in Alertmanager on the 5-minute schedule, measured.

A real Prometheus holds 8 KPIs at 1 minute for 7 days up to now (backfilled), a real Alertmanager
routes to a local receiver; a model is trained from Prometheus with README's walkthrough commands.
Then, in a throwaway Airflow home (SQLite, ``airflow db migrate``), the ``kpiguard_score`` DAG with
``score.schedule: "*/5 * * * *"`` runs (``dag.test``, tests/dag_runner.py) for ``--runs`` consecutive
five-minute intervals, each holding one injected spike (one KPI each, 2 minutes before the interval's
end). Measured per run: the wall time from the run's start to the spike's alert being active in
Alertmanager (``GET /api/v2/alerts``), and to the receiver's notification.

    .venv/bin/python docs/benchmarks/alerting/latency.py --out docs/benchmarks/alerting/latency.json

The page's latency is then: the wait for the interval to end (the spike's time to the next multiple of
five minutes: 0-5 min) + the scheduler starting the run (not measured here: dag.test runs at once) +
this run time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from tests.servers import alertmanager, http_receiver, openmetrics, prometheus  # noqa: E402

BIN = Path(sys.executable).parent
DETECTORS = ["diff_z", "seasonal_residual", "sequence_novelty"]


def history(last: pd.Timestamp, spikes: dict[str, pd.Timestamp]) -> pd.DataFrame:
    stamps = pd.date_range(end=last, periods=7 * 1440, freq="1min")
    phase = 2 * np.pi * (stamps.hour * 60 + stamps.minute).to_numpy() / 1440
    rng = np.random.default_rng(1)
    frames = []
    for k in range(8):
        kpi = f"kpi_{k}"
        v = 100 + 30 * np.sin(phase + k) + rng.normal(0, 2, len(stamps))
        if kpi in spikes:
            v[stamps.get_loc(spikes[kpi])] += 15 * v.std()
        frames.append(pd.DataFrame({"kpi_id": kpi, "timestamp": stamps, "value": np.round(v, 3)}))
    return pd.concat(frames, ignore_index=True)


def run(cmd: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return time.perf_counter() - t


def alert_for(am: str, kpi: str) -> bool:
    with urllib.request.urlopen(f"{am}/api/v2/alerts?active=true", timeout=5) as r:
        return any(a["labels"].get("kpi") == kpi for a in json.loads(r.read()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    ends = [pd.Timestamp.now(tz="UTC").floor("5min") - pd.Timedelta(minutes=5 * (args.runs - i)) for i in range(args.runs)]
    spikes = {f"kpi_{i}": end - pd.Timedelta("2min") for i, end in enumerate(ends)}
    last = ends[-1] - pd.Timedelta("1min")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with prometheus(tmp / "prom", openmetrics(history(last, spikes), metric="team_kpi", label="kpi")) as prom, \
                http_receiver() as pager, alertmanager(tmp / "am", pager.url) as am:
            work = tmp / "work"
            work.mkdir()
            params = yaml.safe_load((ROOT / "params.yaml").read_text())
            spec = f"prometheus:{prom}?query=team_kpi"
            params["data"]["train"] = params["score"]["input"] = spec
            params["data"]["prometheus"].update({"step": "1m", "range": "7D", "kpi_labels": ["kpi"]})
            params["train"]["detectors"] = DETECTORS
            params["score"].update({"schedule": "*/5 * * * *", "context": "1D"})
            params["alerts"]["alertmanager"]["url"] = am
            (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_TRACKING"))},
                   "PYTHONPATH": str(ROOT), "KPIGUARD_WORKSPACE": str(work), "AIRFLOW_HOME": str(tmp / "airflow"),
                   "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                   "PATH": f"{BIN}:{os.environ['PATH']}"}
            train_s = sum(run([sys.executable, "-m", "pipeline.cli", step], work, env)
                          for step in ("ingest", "validate", "windows", "train", "evaluate", "register"))
            run([str(BIN / "airflow"), "db", "migrate"], work, env)
            runs = []
            for i, end in enumerate(ends):
                kpi, before = f"kpi_{i}", len(pager.posts)
                t0 = time.perf_counter()
                log = tmp / f"run-{i}.log"  # a file, not a pipe: a full pipe would stall the run
                proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "dag_runner.py"), "kpiguard_score",
                                         end.isoformat(), "{}"], cwd=work, env=env, stdout=log.open("w"),
                                        stderr=subprocess.STDOUT, text=True)
                alert_s = page_s = None
                while alert_s is None or page_s is None:
                    if alert_s is None and alert_for(am, kpi):
                        alert_s = time.perf_counter() - t0
                    if page_s is None and len(pager.posts) > before:
                        page_s = time.perf_counter() - t0
                    if time.perf_counter() - t0 > 600:
                        raise SystemExit(f"no alert for {kpi} after 600 s:\n{log.read_text()[-3000:]}")
                    time.sleep(0.1)
                proc.wait(timeout=600)
                result = [ln for ln in log.read_text().splitlines() if ln.startswith("DAG_RESULT ")]
                state = json.loads(result[-1][len("DAG_RESULT "):])["state"] if result else "unknown"
                runs.append({"interval_end": end.isoformat(), "spike_at": spikes[kpi].isoformat(), "kpi": kpi,
                             "dag_state": state, "run_start_to_alert_s": round(alert_s, 1),
                             "run_start_to_notification_s": round(page_s, 1),
                             "run_s": round(time.perf_counter() - t0, 1)})
                print(json.dumps(runs[-1]))
    alert_times = [r["run_start_to_alert_s"] for r in runs]
    summary = {"kpis": 8, "step": "1m", "detectors": DETECTORS, "train_commands_s": round(train_s, 1), "runs": runs,
               "median_run_start_to_alert_s": float(np.median(alert_times)),
               "max_run_start_to_alert_s": float(np.max(alert_times))}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
