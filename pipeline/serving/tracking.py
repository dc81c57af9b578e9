"""Where kpiguard tracks runs and keeps its registry: MLflow, local by default.

- ``MLFLOW_TRACKING_URI`` unset: ``sqlite:///mlflow.db`` in the working directory, artifacts in
  ``./mlartifacts``, both relative to it (:mod:`pipeline.serving.artifacts`), so the pair can be copied
  or moved. No server needed (``make mlflow`` opens the UI on it).
- ``MLFLOW_TRACKING_URI=http(s)://...``: an ``mlflow server`` (PostgreSQL backend, S3 artifacts in
  production). kpiguard checks ``/health`` first, with bounded retries, so an unreachable server is
  one clear error before anything is written, not a long hang half-way through a stage.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

from pipeline.errors import TrackingError
from pipeline.io import storage
from pipeline.params import MlflowParams, Params

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
LOCAL_ARTIFACTS = "mlartifacts"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def connect(cfg: MlflowParams):
    """An ``MlflowClient`` on the configured store, after checking that it answers.

    MLflow's own HTTP retries and timeouts come from the environment that
    :func:`pipeline.runtime.apply` set from the same ``mlflow:`` section."""
    from mlflow import MlflowClient, set_registry_uri, set_tracking_uri

    uri = tracking_uri()
    if storage.is_http(uri):
        wait_healthy(uri, cfg.connect_retries, cfg.retry_backoff_s, cfg.request_timeout_s)
    set_tracking_uri(uri)
    set_registry_uri(uri)
    return MlflowClient(uri, registry_uri=uri)


def wait_healthy(uri: str, retries: int, backoff_s: float, timeout_s: float) -> None:
    """GET ``<uri>/health`` up to ``retries + 1`` times with exponential back-off."""
    last = ""
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
                if resp.status == 200:
                    return
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        if attempt < retries:
            time.sleep(backoff_s * 2 ** attempt)
    raise TrackingError(uri, f"no healthy answer from {uri.rstrip('/')}/health after {retries + 1} attempts "
                             f"(last: {last}); start the server or point MLFLOW_TRACKING_URI elsewhere")


# MLflow 3's UI opens an experiment by its kind: without this tag it guesses, and an experiment of
# pyfunc runs opened on the GenAI overview (traces, evaluations) rather than on its runs.
EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT = "mlflow.experimentKind", "custom_model_development"


def experiment_id(client, name: str) -> str:
    """The experiment's id, creating it (artifacts in ./mlartifacts for the local store) if needed; tagged
    as a model-training experiment, so the UI opens on its runs."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if EXPERIMENT_KIND_TAG not in (found.tags or {}):  # created before kpiguard set the kind
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT)
        return found.experiment_id
    # The local store's artifacts stay relative to the working directory (pipeline.serving.artifacts), so a
    # copied checkout's store still finds them; a server decides its own.
    location = None if storage.is_http(tracking_uri()) else local_artifact_location()
    try:
        return client.create_experiment(name, artifact_location=location,
                                        tags={EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT})
    except MlflowException:  # created meanwhile by a parallel task
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def local_artifact_location() -> str:
    from pipeline.serving.artifacts import location

    return location(LOCAL_ARTIFACTS)


def run_url(client, run) -> str | None:
    """A browser link to a run, when the store is a server."""
    uri = tracking_uri()
    if not storage.is_http(uri):
        return None
    return f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"


def git_commit() -> str | None:
    """HEAD of the working tree, with ``-dirty`` when tracked files changed; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty else "")


def data_version(params: Params, lock_file: Path = Path("dvc.lock")) -> str | None:
    """The DVC hash of the windows stage's output (the data every detector trained on), from dvc.lock."""
    if not lock_file.exists():
        return None
    stages = (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {})
    for out in (stages.get("windows") or {}).get("outs", []):
        if Path(out.get("path", "")) == Path(params.paths.windows):
            return out.get("md5")
    return None


def file_md5(path: Path) -> str:
    """The md5 DVC 3 records for a file (of its bytes, as in dvc.lock and the cache's .dir listings)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def flat(prefix: str, obj, out: dict | None = None) -> dict:
    """Nested dict -> {"a.b.c": value}, for MLflow params and metrics."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        for k, v in obj.items():
            flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(obj, (list, tuple)):
        out[prefix] = json.dumps(obj)
    else:
        out[prefix] = obj
    return out
