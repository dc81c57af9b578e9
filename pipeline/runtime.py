"""Process state, applied in one place: once per entry point, before torch loads.

Parsing params changes nothing (:mod:`pipeline.params` is a schema). What a process needs set up from
them is applied here, by every entry point: the ``kpiguard`` CLI (and so the commands Airflow's
workspace tasks run), each ``kpiguard bench`` child process, each Airflow task that works in-process
(:func:`pipeline.orchestration.workspace.params`), and ``kpiguard speed``:

- the bounds of every remote read (``storage:`` -> :func:`pipeline.io.storage.configure`);
- the MLflow client's HTTP retries and timeouts (``mlflow:`` -> environment variables, unless the
  user exported their own);
- for work that runs torch, the CPU thread pools (``train.threads`` or ``score.threads`` ->
  :func:`pipeline.threads.configure`), which must be sized before ``import torch``.
"""
from __future__ import annotations

import math
import os
from typing import Literal

from pipeline import threads
from pipeline.params import MlflowParams, Params

Work = Literal["train", "score"]


def apply(params: Params, work: Work | None = None) -> threads.ThreadPlan | None:
    """Apply ``params``' process state; ``work`` names whose thread setting sizes torch's pools
    (``train`` or ``score``; None: this process runs no torch work, its pools are left alone)."""
    from pipeline.io import storage

    storage.configure(params.storage)
    for key, value in client_environment(params.mlflow).items():
        os.environ.setdefault(key, value)
    if work is None:
        return None
    return threads.configure(params.train.threads if work == "train" else params.score.threads)


def client_environment(cfg: MlflowParams) -> dict[str, str]:
    """The MLflow client's environment for the ``mlflow:`` settings: its own HTTP retries default to
    minutes of back-off, so they are bounded to ours (MLflow takes only an integer back-off factor)."""
    return {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(cfg.connect_retries),
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(math.ceil(cfg.retry_backoff_s)),
            "MLFLOW_HTTP_REQUEST_TIMEOUT": str(math.ceil(cfg.request_timeout_s)),
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


def apply_threads(setting: int | None) -> threads.ThreadPlan:
    """Only the thread pools, for an entry point without params (``kpiguard speed --threads N``)."""
    return threads.configure(setting)
