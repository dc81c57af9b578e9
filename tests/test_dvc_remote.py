"""The DVC remote `storage` (.dvc/config): push and pull through a real S3 server (SeaweedFS)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tests.test_dvc_pipeline as dvc_pipeline
from tests.conftest import REPO

BUCKET, PREFIX = "kpiguard-dvc", "cache"


def dvc(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    run = subprocess.run(["dvc", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"dvc {' '.join(args)}:\n{run.stdout}{run.stderr}"
    return run


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_storage_remote_is_configured_but_not_the_default():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    listed = dvc(["remote", "list", "--project"], REPO, env).stdout.split()
    assert listed[:2] == ["storage", f"s3://{BUCKET}/{PREFIX}"]
    assert dvc(["config", "--project", "remote.storage.endpointurl"], REPO, env).stdout.strip() == \
        "http://127.0.0.1:8333"
    default = subprocess.run(["dvc", "config", "--project", "core.remote"], cwd=REPO, env=env,
                             capture_output=True, text=True)
    assert default.returncode != 0 and not default.stdout.strip()  # push/pull name it: -r storage


@pytest.mark.integration
def test_push_then_pull_restores_ingest_output_byte_identical(tmp_path, s3_server):
    import boto3

    endpoint, s3_env = s3_server
    work = dvc_pipeline.copy_repo(tmp_path / "repo")
    raw = yaml.safe_load((work / "params.yaml").read_text())
    raw["synthetic"].update({"n_kpis": 2, "start": "2026-01-01", "end": "2026-01-04"})
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3_env)  # credentials, region and endpoint come from the environment, as in the stack
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ['PATH']}"

    # the documented override of the committed endpoint: .dvc/config.local, never committed
    dvc(["remote", "modify", "--local", "storage", "endpointurl", endpoint], work, env)
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"], region_name=s3_env["AWS_DEFAULT_REGION"])
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass

    dvc(["repro", "ingest"], work, env)
    before = tree_hashes(work / "data/raw")
    assert {"manifest.json", "train.parquet"} <= set(before)

    pushed = dvc(["push", "-r", "storage", "ingest"], work, env)
    assert "pushed" in pushed.stdout
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/")
            for o in page.get("Contents", [])]
    assert any(k.startswith(f"{PREFIX}/files/md5/") for k in keys), keys

    shutil.rmtree(work / "data/raw")
    shutil.rmtree(work / ".dvc/cache")
    dvc(["pull", "-r", "storage", "ingest"], work, env)
    assert tree_hashes(work / "data/raw") == before
    status = dvc(["status", "ingest"], work, env)
    assert "up to date" in status.stdout.lower()
