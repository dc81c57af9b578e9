"""The production topology without Docker: Airflow 3 with the CeleryExecutor on this machine's
PostgreSQL (metadata) and Redis (broker), a CPU worker (queue ``default``) and a GPU worker (queue
``gpu``), MLflow on PostgreSQL with artifacts in S3 (``weed mini``), all on loopback.

It runs ``kpiguard_retrain`` then ``kpiguard_score`` on a tiny config and checks where tasks ran
and what landed in S3. Every process it starts is stopped by PID, its databases are dropped and its
Redis database is flushed, whether the test passes or not.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.servers import (LOOPBACK, free_port, mlflow_server, postgres_available, postgres_database, start_process,
                           stop_process, wait_until)
from tests.test_dvc_pipeline import copy_repo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800),
              pytest.mark.skipif(not postgres_available(), reason="needs PostgreSQL on 127.0.0.1:5432")]

BIN = Path(sys.executable).parent
DAY = "2026-01-06"
RUN_TIMEOUT_S = 900


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis(host=LOOPBACK, port=6379, socket_connect_timeout=2).ping())
    except Exception:  # noqa: BLE001
        return False


def sql(uri: str, query: str, *args) -> list[tuple]:
    import psycopg2

    with contextlib.closing(psycopg2.connect(uri.replace("postgresql+psycopg2", "postgresql"))) as conn:
        with conn.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall()


def airflow_cli(env: dict, *args: str, timeout: float = 300) -> str:
    out = subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"airflow {' '.join(args)}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out.stdout


def wait_for_run(db: str, dag_id: str, run_id: str, logs: list[Path], procs: list) -> str:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [p.args[1:4] for p in procs if p.poll() is not None]
        assert not dead, f"Airflow processes exited: {dead}\n" + _tails(logs)
        rows = sql(db, "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s", dag_id, run_id)
        if rows and rows[0][0] in ("success", "failed"):
            return rows[0][0]
        time.sleep(3)
    raise TimeoutError(f"{dag_id} {run_id} did not finish in {RUN_TIMEOUT_S}s\n{_tails(logs)}")


def _tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-40:]) for p in logs)


def trigger(env: dict, db: str, dag_id: str, conf: dict | None, logs: list[Path], procs: list) -> tuple[str, str]:
    run_id = f"it_{uuid.uuid4().hex[:8]}"
    airflow_cli(env, "dags", "trigger", dag_id, "--run-id", run_id, *(["--conf", json.dumps(conf)] if conf else []))
    return run_id, wait_for_run(db, dag_id, run_id, logs, procs)


@pytest.mark.skipif(not redis_available(), reason="needs Redis on 127.0.0.1:6379")
def test_celery_topology_runs_both_dags(tmp_path, s3_server):
    import boto3
    import redis

    endpoint, s3_env = s3_server
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"], region_name=s3_env["AWS_DEFAULT_REGION"])
    suffix = uuid.uuid4().hex[:8]
    mlflow_bucket, reports_bucket = f"mlflow-{suffix}", f"reports-{suffix}"
    for bucket in (mlflow_bucket, reports_bucket):
        s3.create_bucket(Bucket=bucket)

    workspace = copy_repo(tmp_path / "workspace")
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["synthetic"].update({"n_kpis": 2, "start": "2026-01-01", "end": "2026-01-08"})
    params["train"]["detectors"] = ["robust_zscore", "isolation_forest"]
    params["evaluate"]["default_detector"] = "robust_zscore"  # the label-free path's champion, one of these
    params["score"]["shards"] = 2
    (workspace / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    redis_db = random.randrange(1, 16)

    with contextlib.ExitStack() as stack:
        stack.callback(lambda: redis.Redis(host=LOOPBACK, port=6379, db=redis_db).flushdb())
        airflow_db = stack.enter_context(postgres_database("kpiguard_it_airflow"))
        mlflow_db = stack.enter_context(postgres_database("kpiguard_it_mlflow"))
        mlflow_url = stack.enter_context(mlflow_server(
            tmp_path / "mlflow", backend_uri=mlflow_db, artifacts_uri=f"s3://{mlflow_bucket}/",
            env={**s3_env, "MLFLOW_S3_ENDPOINT_URL": endpoint}))

        api_port = free_port()
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MLFLOW_TRACKING"))}, **s3_env,
               "AIRFLOW_HOME": str(tmp_path / "airflow_home"),
               "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
               "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
               "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
               "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.worker_identity.hostname",
               "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{LOOPBACK}:{api_port}/execution/",
               "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": airflow_db,
               "AIRFLOW__CELERY__BROKER_URL": f"redis://{LOOPBACK}:6379/{redis_db}",
               "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + airflow_db,
               "AIRFLOW__API__HOST": LOOPBACK, "AIRFLOW__API__PORT": str(api_port),
               "AIRFLOW__API_AUTH__JWT_SECRET": uuid.uuid4().hex,
               "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
               "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
               "KPIGUARD_WORKSPACE": str(workspace), "KPIGUARD_REPORT_BUCKET": reports_bucket,
               "MLFLOW_TRACKING_URI": mlflow_url, "PYTHONPATH": str(REPO),
               "PATH": f"{BIN}:{os.environ['PATH']}"}
        airflow_cli(env, "db", "migrate", timeout=600)
        airflow_cli(env, "pools", "set", "gpu", "2", "GPU slots")
        airflow_cli(env, "pools", "set", "kpiguard_dvc", "1", "one DVC command at a time")

        logs, procs = [], []

        def start(name: str, *args: str, extra: dict | None = None):
            log = tmp_path / f"{name}.log"
            logs.append(log)
            proc = start_process([str(BIN / "airflow"), *args], log, env={**env, **(extra or {})}, cwd=tmp_path)
            stack.callback(stop_process, proc, 20)
            procs.append(proc)
            return proc

        api = start("api-server", "api-server", "--port", str(api_port), "--host", LOOPBACK)
        start("scheduler", "scheduler")
        start("dag-processor", "dag-processor")
        start("worker-cpu", "celery", "worker", "--queues", "default", "--concurrency", "2", "--skip-serve-logs",
              "--celery-hostname", f"cpu-{suffix}@%h", extra={"KPIGUARD_WORKER_NAME": "cpu-worker"})
        start("worker-gpu", "celery", "worker", "--queues", "gpu", "--concurrency", "2", "--skip-serve-logs",
              "--celery-hostname", f"gpu-{suffix}@%h", extra={"KPIGUARD_WORKER_NAME": "gpu-worker"})

        import urllib.request

        wait_until(lambda: urllib.request.urlopen(f"http://{LOOPBACK}:{api_port}/api/v2/monitor/health", timeout=2).status == 200,
                   180, "airflow api-server", api, logs[0])
        wait_until(lambda: len(sql(airflow_db, "SELECT dag_id FROM serialized_dag WHERE dag_id IN "
                                               "('kpiguard_retrain', 'kpiguard_score')")) == 2,
                   300, "the dag-processor to serialize both DAGs", interval=2)
        for dag_id in ("kpiguard_retrain", "kpiguard_score"):
            airflow_cli(env, "dags", "unpause", dag_id)

        # Unpausing also starts the latest scheduled run; force_train makes ours train whatever that one did.
        run_id, state = trigger(env, airflow_db, "kpiguard_retrain", {"force_train": True}, logs, procs)
        tis = sql(airflow_db, "SELECT task_id, map_index, state, queue, hostname FROM task_instance "
                              "WHERE dag_id = 'kpiguard_retrain' AND run_id = %s", run_id)
        assert state == "success", tis
        train = [t for t in tis if t[0] == "train"]
        assert len(train) == 2 and all(t[2] == "success" and t[3] == "gpu" and t[4] == "gpu-worker" for t in train), train
        others = [t for t in tis if t[0] != "train" and t[2] == "success"]
        assert others and all(t[3] == "default" and t[4] == "cpu-worker" for t in others), others
        every_training = sql(airflow_db, "SELECT DISTINCT queue, hostname FROM task_instance "
                                         "WHERE task_id = 'train' AND state = 'success'")
        assert every_training == [("gpu", "gpu-worker")]  # in every run, scheduled ones included

        from mlflow import MlflowClient

        champion = MlflowClient(mlflow_url, registry_uri=mlflow_url).get_model_version_by_alias("kpiguard", "champion")
        model_id = champion.source.rsplit("/", 1)[-1]  # models:/m-<id>
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=mlflow_bucket)
                for o in page.get("Contents", [])]
        assert any(model_id in k and k.endswith("bundle/detector/weights.pt") for k in keys), keys[:20]

        run_id, state = trigger(env, airflow_db, "kpiguard_score", {"day": DAY}, logs, procs)
        tis = sql(airflow_db, "SELECT task_id, map_index, state FROM task_instance "
                              "WHERE dag_id = 'kpiguard_score' AND run_id = %s", run_id)
        assert state == "success", tis
        assert sorted(t[1] for t in tis if t[0] == "score") == [0, 1]  # two shards, two tasks
        report_keys = {o["Key"] for o in s3.list_objects_v2(Bucket=reports_bucket).get("Contents", [])}
        assert {f"daily/{DAY}.html", f"daily/{DAY}.json"} <= report_keys
        assert (workspace / "data/scores" / f"date={DAY}" / "scores.parquet").exists()
