"""The compose stack's scripts, run here for real: bucket creation (S3), the workspace sync (DVC) and the
PostgreSQL init script."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from configobj import ConfigObj

import tests.test_dvc_pipeline as dvc_pipeline
from tests.conftest import REPO
from tests.servers import PG_HOST, PG_PORT, PG_USER, postgres_available

DOCKER = REPO / "docker"
VENV_PATH = f"{Path(sys.executable).parent}:{os.environ['PATH']}"


def load_create_buckets():
    spec = importlib.util.spec_from_file_location("create_buckets", DOCKER / "create_buckets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bucket_names_from_arguments_or_environment():
    cb = load_create_buckets()
    assert cb.bucket_name("s3://kpi-landing/") == "kpi-landing"
    assert cb.bucket_name("s3://kpi-landing/in/today") == "kpi-landing"
    assert cb.bucket_name("kpiguard-dvc") == "kpiguard-dvc"
    with pytest.raises(ValueError, match="not an s3://"):
        cb.bucket_name("gs://elsewhere/x")
    env = {"MLFLOW_BUCKET": "m-art", "DVC_BUCKET": "d-rem", "KPIGUARD_LANDING": "s3://land/kpis/",
           "KPIGUARD_REPORT_BUCKET": "m-art", "OTHER": "x"}
    assert cb.wanted([], env) == ["m-art", "d-rem", "land"]  # each once, in order
    assert cb.wanted(["s3://one/a", "two"], env) == ["one", "two"]


@pytest.mark.integration
def test_create_buckets_is_idempotent(s3_server):
    import boto3

    endpoint, s3_env = s3_server
    names = {k: f"kpg-{k.lower().replace('_', '-')}-{uuid.uuid4().hex[:6]}"
             for k in ("MLFLOW_BUCKET", "DVC_BUCKET", "KPIGUARD_REPORT_BUCKET")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3_env, **names, KPIGUARD_LANDING=f"s3://kpg-landing-{uuid.uuid4().hex[:6]}/kpis/")
    script = [sys.executable, str(DOCKER / "create_buckets.py")]
    first = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("created bucket") == 4
    again = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("exists") == 4, again.stdout + again.stderr
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"], region_name=s3_env["AWS_DEFAULT_REGION"])
    have = {b["Name"] for b in s3.list_buckets()["Buckets"]}
    assert set(names.values()) | {env["KPIGUARD_LANDING"].split("/")[2]} <= have


def test_sync_workspace_replaces_code_and_keeps_state(tmp_path):
    release = dvc_pipeline.copy_repo(tmp_path / "release")
    shutil.rmtree(release / ".git")
    (release / "dags" / "kpiguard_new.py").write_text("# new DAG\n")
    workspace = tmp_path / "workspace"
    for rel, text in {"dags/kpiguard_removed.py": "# a DAG the release dropped\n",
                      "models/obsolete.py": "# a module the release dropped\n",
                      "models/artifacts/robust_zscore/config.json": "{}\n",
                      "data/raw/manifest.json": "{}\n", "reports/train/robust_zscore.json": "{}\n",
                      "dvc.lock": "schema: '2.0'\n", "params.yaml": "old: params\n",
                      ".dvc/cache/files/md5/ab/cdef": "cached\n"}.items():
        (workspace / rel).parent.mkdir(parents=True, exist_ok=True)
        (workspace / rel).write_text(text)
    env = {**os.environ, "PATH": VENV_PATH, "KPIGUARD_RELEASE": str(release), "KPIGUARD_WORKSPACE": str(workspace),
           "AWS_ENDPOINT_URL": "http://seaweedfs:8333", "DVC_BUCKET": "stack-dvc"}
    run = subprocess.run(["bash", str(DOCKER / "sync-workspace.sh")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr

    assert (workspace / "dags/kpiguard_new.py").exists() and not (workspace / "dags/kpiguard_removed.py").exists()
    assert not (workspace / "models/obsolete.py").exists() and (workspace / "models/registry.py").exists()
    assert (workspace / "params.yaml").read_text() == (REPO / "params.yaml").read_text()
    for kept in ("models/artifacts/robust_zscore/config.json", "data/raw/manifest.json",
                 "reports/train/robust_zscore.json", "dvc.lock", ".dvc/cache/files/md5/ab/cdef"):
        assert (workspace / kept).exists(), kept
    local = ConfigObj(str(workspace / ".dvc/config.local"))  # DVC's own config format
    assert dict(local["core"]) == {"no_scm": "true", "remote": "storage"}
    assert dict(local['remote "storage"']) == {"endpointurl": "http://seaweedfs:8333", "url": "s3://stack-dvc/cache"}


@pytest.mark.skipif(shutil.which("flock") is None, reason="needs flock (util-linux)")
def test_gpu_pin_gives_each_worker_on_a_host_its_own_gpu(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(KPIGUARD_GPUS="2", KPIGUARD_GPU_LOCK_DIR=str(tmp_path))
    worker = [sys.executable, "-c",  # stands in for the Celery worker: reports its GPU, lives until stdin closes
              "import os, sys; print('gpu', os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True); sys.stdin.read()"]

    def start() -> tuple[subprocess.Popen, str]:
        proc = subprocess.Popen(["bash", str(DOCKER / "gpu-pin.sh"), *worker], env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        return proc, lines[-1]

    first, gpu_first = start()
    second, gpu_second = start()
    try:
        assert {gpu_first, gpu_second} == {"gpu 0", "gpu 1"}
        third = subprocess.run(["bash", str(DOCKER / "gpu-pin.sh"), "true"], env=env, capture_output=True, text=True)
        assert third.returncode == 1 and "all 2 GPUs" in third.stderr
        first.communicate("", timeout=30)  # the worker on GPU 0 exits: its claim goes with it
        again, gpu_again = start()
        again.communicate("", timeout=30)
        assert gpu_again == gpu_first
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.communicate("", timeout=30)
    single = subprocess.run(["bash", str(DOCKER / "gpu-pin.sh"), "sh", "-c", "echo [$CUDA_VISIBLE_DEVICES]"],
                            env={**env, "KPIGUARD_GPUS": "1"}, capture_output=True, text=True)
    assert single.stdout == "[]\n"  # one GPU: nothing to pin


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("psql") is None or not postgres_available(),
                    reason=f"needs psql and PostgreSQL on {PG_HOST}:{PG_PORT}")
def test_postgres_init_creates_a_database_and_owner_per_service():
    import psycopg2

    tag = uuid.uuid4().hex[:8]
    names = {"AIRFLOW_DB_NAME": f"kpg_af_{tag}", "AIRFLOW_DB_USER": f"kpg_af_{tag}", "AIRFLOW_DB_PASSWORD": "a'b\"c",
             "MLFLOW_DB_NAME": f"kpg_ml_{tag}", "MLFLOW_DB_USER": f"kpg_mlu_{tag}", "MLFLOW_DB_PASSWORD": "secret"}
    env = {**os.environ, **names, "POSTGRES_USER": PG_USER, "PGHOST": PG_HOST, "PGPORT": str(PG_PORT)}
    try:
        run = subprocess.run(["bash", str(DOCKER / "postgres-init.sh")], env=env, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        with psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres") as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database WHERE datname LIKE %s",
                            (f"kpg_%_{tag}",))
                owners = dict(cur.fetchall())
                cur.execute("SELECT count(*) FROM pg_authid WHERE rolname LIKE %s AND rolpassword IS NOT NULL",
                            (f"kpg_%_{tag}",))
                with_password = cur.fetchone()[0]
        assert owners == {names["AIRFLOW_DB_NAME"]: names["AIRFLOW_DB_USER"],
                          names["MLFLOW_DB_NAME"]: names["MLFLOW_DB_USER"]}
        assert with_password == 2
    finally:
        admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            for db in (names["AIRFLOW_DB_NAME"], names["MLFLOW_DB_NAME"]):
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
            for role in (names["AIRFLOW_DB_USER"], names["MLFLOW_DB_USER"]):
                cur.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()
