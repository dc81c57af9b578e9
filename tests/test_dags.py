"""The Airflow DAGs against a real Airflow 3 (SQLite metadata DB after ``airflow db migrate``).

Structure is checked on a DagBag; behaviour with ``dag.test()`` of both DAGs, end to end on a tiny
synthetic config in a throwaway copy of the repo (the DVC workspace the tasks run in).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO
from tests.test_dvc_pipeline import copy_repo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

BIN = Path(sys.executable).parent
DAY = "2026-01-06"


def airflow_env(home: Path, workspace: Path, extra: dict | None = None) -> dict:
    return {**{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_TRACKING"))},
            "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "KPIGUARD_WORKSPACE": str(workspace), "PATH": f"{BIN}:{os.environ['PATH']}", **(extra or {})}


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """(env, workspace): a migrated Airflow home with the pools, and a tiny-config workspace."""
    root = tmp_path_factory.mktemp("airflow")
    workspace = copy_repo(root / "workspace")
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["synthetic"].update({"n_kpis": 2, "start": "2026-01-01", "end": "2026-01-08"})
    params["train"].update({"detectors": ["robust_zscore", "isolation_forest", "dense_autoencoder"],
                            "max_epochs": 2})
    # a few labelled validation events: the label-free path serves evaluate.default_detector, one of these
    params["evaluate"]["default_detector"] = "robust_zscore"
    # a run's `input` conf may name files under <root>/landing/ (daily.check_input refuses anything else)
    params["score"]["allowed_inputs"] = [f"csv:{root / 'landing'}/"]
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = airflow_env(root / "home", workspace)
    for cmd in (["db", "migrate"], ["pools", "set", "gpu", "2", "GPU slots"],
                ["pools", "set", "kpiguard_dvc", "1", "one DVC command at a time per workspace"]):
        out = subprocess.run([str(BIN / "airflow"), *cmd], env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return env, workspace


def run_dag(env: dict, dag_id: str, logical_date: str = "", conf: dict | None = None, extra: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, str(REPO / "tests" / "dag_runner.py"), dag_id, logical_date,
                          json.dumps(conf or {})], env={**env, **(extra or {})}, capture_output=True, text=True,
                         timeout=1100, cwd=env["KPIGUARD_WORKSPACE"])
    lines = [l for l in out.stdout.splitlines() if l.startswith("DAG_RESULT ")]
    assert lines, f"no result (rc {out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    result = json.loads(lines[-1][len("DAG_RESULT "):])
    result["log"] = out.stdout + out.stderr
    return result


def test_dagbag_imports_without_errors_and_structure(airflow):
    env, _ = airflow
    out = subprocess.run([sys.executable, str(REPO / "tests" / "dag_runner.py"), "--structure"], env=env,
                         capture_output=True, text=True, timeout=300)
    line = [l for l in out.stdout.splitlines() if l.startswith("DAG_RESULT ")]
    assert line, out.stdout[-3000:] + out.stderr[-3000:]
    bag = json.loads(line[-1][len("DAG_RESULT "):])
    assert bag["import_errors"] == {}
    assert {"kpiguard_retrain", "kpiguard_score"} <= set(bag["dags"])

    retrain = bag["dags"]["kpiguard_retrain"]
    tasks = retrain["tasks"]
    down = {t: set(v["downstream"]) for t, v in tasks.items()}
    assert down["labels"] == {"ingest"}  # the reviewers' verdicts first: they are the labels ingest merges
    assert down["ingest"] == {"validate"} and down["validate"] == {"windows"}
    assert down["windows"] == {"detectors"} and down["detectors"] == {"train"}
    assert down["train"] == {"record_training"} and "evaluate" in down["record_training"]
    assert down["evaluate"] == {"register"}
    assert down["register"] >= {"champion_changed", "announce_champion", "training_report"}
    assert down["champion_changed"] == {"announce_champion"}
    assert tasks["train"]["queue"] == "gpu" and tasks["train"]["pool"] == "gpu"
    assert all(tasks[t]["pool"] == "kpiguard_dvc"
               for t in ("labels", "ingest", "validate", "windows", "detectors", "record_training", "evaluate", "register"))
    assert tasks["record_training"]["trigger_rule"] == "all_done"
    assert tasks["training_report"]["trigger_rule"] == "all_done"
    assert [o.rstrip("/") for o in tasks["announce_champion"]["outlets"]] == ["kpiguard://champion"]
    assert "'0 0 * * 0'" in retrain["summary"] and not retrain["catchup"]  # @weekly

    score = bag["dags"]["kpiguard_score"]
    assert score["timetable"] == "AssetOrTimeSchedule" and not score["catchup"]
    assert "kpiguard://champion" in score["assets"] or "kpiguard_champion" in score["assets"]
    down = {t: set(v["downstream"]) for t, v in score["tasks"].items()}
    assert down["ingest"] == {"validate"} and down["validate"] == {"score"} and down["score"] == {"write"}
    assert down["write"] == {"report"} and down["report"] == {"publish", "alert"}
    assert all(v["queue"] == "default" for v in score["tasks"].values())


def test_retrain_end_to_end_is_green_and_announces_the_champion(airflow):
    env, workspace = airflow
    result = run_dag(env, "kpiguard_retrain")
    assert result["state"] == "success", result["log"][-4000:]
    tasks = result["tasks"]
    assert sorted(k for k in tasks if k.startswith("train[")) == ["train[0]", "train[1]", "train[2]"]
    assert set(tasks.values()) == {"success"}
    assert result["champion_events"] == 1  # the first champion is announced

    summary = json.loads((workspace / "reports/register/summary.json").read_text())
    assert summary["serving"]["decision"] == "champion"
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    trains = {f"train@{n}" for n in ("robust_zscore", "isolation_forest", "dense_autoencoder")}
    assert trains | {"ingest", "validate", "windows", "evaluate", "register"} <= set(lock)
    status = subprocess.run([str(BIN / "dvc"), "status", "--json"], cwd=workspace, capture_output=True, text=True, env=env)
    # DVC agrees the workspace is what the run produced; labels reads the review store, which DVC cannot
    # hash, so it is always changed (and its unchanged output reruns nothing)
    assert json.loads(status.stdout or "{}") == {"labels": ["always changed"]}

    from mlflow import MlflowClient

    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    champion = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("kpiguard", "champion")
    assert champion.tags["kpiguard.detector"] == summary["serving"]["detector"]
    assert champion.tags["kpiguard.labels_digest"] == json.loads((workspace / "data/labels/labels.json").read_text())["digest"]

    again = run_dag(env, "kpiguard_retrain")  # nothing changed: nothing retrains, no new champion
    assert again["state"] == "success" and again["tasks"]["train"] == "skipped"
    assert again["champion_events"] == 1


def test_a_failed_detector_does_not_stop_the_others(airflow):
    env, workspace = airflow
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["detectors"]["dense_autoencoder"]["window"] = 5000  # longer than the train split: fit fails
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = run_dag(env, "kpiguard_retrain", conf={"force_train": True})
    finally:
        params["detectors"]["dense_autoencoder"]["window"] = 48
        (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    tasks = result["tasks"]
    assert {tasks[k] for k in ("ingest", "validate", "windows", "record_training", "evaluate", "register")} == {"success"}
    assert sorted(v for k, v in tasks.items() if k.startswith("train[")) == ["failed", "success", "success"]
    assert tasks["training_report"] == "failed" and result["state"] == "failed"  # the failure stays visible
    statuses = {n: json.loads((workspace / "models/artifacts" / n / "status.json").read_text())["status"]
                for n in ("robust_zscore", "isolation_forest", "dense_autoencoder")}
    assert statuses == {"robust_zscore": "ok", "isolation_forest": "ok", "dense_autoencoder": "failed"}
    summary = json.loads((workspace / "reports/register/summary.json").read_text())
    assert summary["detectors"]["dense_autoencoder"]["status"] == "failed"
    assert summary["detectors"]["robust_zscore"]["status"] == "ok"
    assert json.loads((workspace / "reports/train/dense_autoencoder.json").read_text())["reason"]


def test_score_end_to_end_publishes_and_reruns_idempotently(airflow, s3_server):
    env, workspace = airflow
    if not (workspace / "mlflow.db").exists():
        pytest.skip("needs the champion from the retrain test")
    endpoint, s3_env = s3_server
    bucket = f"reports-{uuid.uuid4().hex[:8]}"
    import boto3

    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"], region_name=s3_env["AWS_DEFAULT_REGION"])
    s3.create_bucket(Bucket=bucket)
    extra = {**s3_env, "KPIGUARD_REPORT_BUCKET": bucket}
    first = run_dag(env, "kpiguard_score", conf={"day": DAY}, extra=extra)
    assert first["state"] == "success", first["log"][-4000:]
    partition = workspace / "data/scores" / f"date={DAY}"
    rows = pd.read_parquet(partition / "scores.parquet")
    assert len(rows) > 0 and rows["timestamp"].dt.date.astype(str).eq(DAY).all()
    report = json.loads((workspace / f"reports/daily/{DAY}.json").read_text())
    assert report["kpis_scored"] == rows["kpi_id"].nunique() and report["champion"]["model"] == "kpiguard"
    assert (workspace / f"reports/daily/{DAY}.html").stat().st_size > 1000
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"daily/{DAY}.html", f"daily/{DAY}.json"}

    again = run_dag(env, "kpiguard_score", conf={"day": DAY}, extra=extra)
    assert again["state"] == "success"
    rerun = pd.read_parquet(partition / "scores.parquet")
    pd.testing.assert_frame_equal(rows, rerun)
    assert [p.name for p in (workspace / "data/scores").iterdir()] == [f"date={DAY}"]


def test_score_validation_failure_stops_before_scoring(airflow):
    env, workspace = airflow
    bad_day = "2026-01-07"
    ts = pd.date_range(f"{bad_day} 00:00", periods=288, freq="5min", tz="UTC")
    bad = pd.DataFrame({"kpi_id": "k1", "timestamp": ts.astype(str), "value": 1.0, "label": 0})
    bad.loc[::3, "value"] = float("nan")  # a third of the rows break the not-null rule
    path = workspace.parent / "landing" / "bad.csv"  # under score.allowed_inputs (the fixture)
    path.parent.mkdir(exist_ok=True)
    bad.to_csv(path, index=False)
    result = run_dag(env, "kpiguard_score", conf={"day": bad_day, "input": f"csv:{path}"})
    assert result["tasks"]["ingest"] == "success" and result["tasks"]["validate"] == "failed"
    assert result["state"] == "failed"
    assert all(result["tasks"][t] == "upstream_failed" for t in ("write", "report", "publish"))
    assert "max_quarantined_fraction" in result["log"] and "expect_column_values_to_not_be_null" in result["log"]
    assert not (workspace / "data/scores" / f"date={bad_day}").exists()
    assert not (workspace / f"reports/daily/{bad_day}.html").exists()


def test_score_every_five_minutes_writes_each_interval_and_updates_one_incident(airflow):
    """score.schedule "*/5 * * * *": each run scores its five minutes into the day's partition and pushes
    the incidents; an incident that continues into the next interval is updated, not posted again, and a
    rerun of an interval changes nothing (the webhook sink's ledger, a real local receiver)."""
    from pipeline.data import synthetic
    from pipeline.params import load_params
    from tests.servers import http_receiver

    env, workspace = airflow
    if not (workspace / "mlflow.db").exists():
        pytest.skip("needs the champion from the retrain test")
    params_path = workspace / "params.yaml"
    original = params_path.read_text()
    day0 = pd.Timestamp(DAY, tz="UTC")
    frame = synthetic.generate(load_params(params_path).synthetic, day0 - pd.Timedelta("3D"), day0 + pd.Timedelta("1D"))
    kpi = frame["kpi_id"].iloc[0]
    mine = frame["kpi_id"] == kpi
    # a level shift of 50 standard deviations from 00:05 on: flagged at 00:05 (first run) and 00:10 (second)
    frame.loc[mine & (frame["timestamp"] >= day0 + pd.Timedelta("5min")), "value"] += 50 * frame.loc[mine, "value"].std()
    landing = workspace.parent / "landing"
    landing.mkdir(exist_ok=True)
    frame.to_csv(landing / "live.csv", index=False)
    conf = {"input": f"csv:{landing / 'live.csv'}"}
    partition = workspace / "data/scores" / f"date={DAY}"
    try:
        with http_receiver() as receiver:
            raw = yaml.safe_load(original)
            raw["score"]["schedule"] = "*/5 * * * *"
            raw.setdefault("alerts", {}).setdefault("webhook", {})["url"] = receiver.url
            params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
            if partition.exists():  # the daily test's day: the intervals start from an empty day
                import shutil

                shutil.rmtree(partition)

            first = run_dag(env, "kpiguard_score", logical_date=f"{DAY}T00:10:00+00:00", conf=conf)
            assert first["state"] == "success", first["log"][-4000:]
            assert first["tasks"]["alert"] == "success" and first["tasks"]["publish"] == "success"
            rows = pd.read_parquet(partition / "scores.parquet")
            assert set(rows["timestamp"]) == {day0 + pd.Timedelta("5min")}  # the interval [00:05, 00:10) only
            assert rows.loc[rows["kpi_id"] == kpi, "is_anomaly"].all()
            posts = [p["json"] for p in receiver.posts]
            assert [(p["status"], p["incident"]["kpis"]) for p in posts] == [("firing", [kpi])]

            second = run_dag(env, "kpiguard_score", logical_date=f"{DAY}T00:15:00+00:00", conf=conf)
            assert second["state"] == "success", second["log"][-4000:]
            rows = pd.read_parquet(partition / "scores.parquet")
            assert set(rows["timestamp"]) == {day0 + pd.Timedelta("5min"), day0 + pd.Timedelta("10min")}
            meta = json.loads((partition / "_meta.json").read_text())
            assert len(meta["slots"]) == 2 and meta["rows"] == len(rows)
            assert len(receiver.posts) == 1  # the incident continued: updated in the ledger, not posted again
            report = json.loads((workspace / f"reports/daily/{DAY}.json").read_text())
            ours = [i for i in report["incidents"] if kpi in i["kpis"]]
            assert len(ours) == 1 and pd.Timestamp(ours[0]["start"]) == day0 + pd.Timedelta("5min")
            assert pd.Timestamp(ours[0]["end"]) == day0 + pd.Timedelta("10min")

            again = run_dag(env, "kpiguard_score", logical_date=f"{DAY}T00:15:00+00:00", conf=conf)
            assert again["state"] == "success"
            pd.testing.assert_frame_equal(pd.read_parquet(partition / "scores.parquet"), rows)
            assert len(receiver.posts) == 1
    finally:
        params_path.write_text(original)
