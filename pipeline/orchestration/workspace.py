"""The DVC workspace that Airflow tasks run the pipeline in.

``KPIGUARD_WORKSPACE`` names it (a shared volume in a deployment); by default it is the project
checkout this package was installed from. Tasks run the same commands as ``dvc.yaml`` there, with
the executables of the interpreter that runs the task (the project's virtual environment).
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from pipeline import runtime, threads
from pipeline.params import Params, load_params

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent


def root() -> Path:
    return Path(os.environ.get("KPIGUARD_WORKSPACE") or Path(__file__).resolve().parents[2])


def params(overrides: list[str] | None = None, work: runtime.Work | None = None) -> Params:
    """The workspace's params, applied to this task process (:func:`pipeline.runtime.apply`): a task that
    works in-process is an entry point. ``work="score"`` sizes its thread pools (call it inside
    :func:`inside`, which tells the process how many tasks share its worker)."""
    p = load_params(root() / "params.yaml", overrides)
    runtime.apply(p, work)
    return p


@contextlib.contextmanager
def inside() -> Iterator[Path]:
    """Run a block with the workspace as working directory (params paths are relative to it).

    Also tells this task process how many tasks share its worker, for the steps that run in-process
    (the daily scoring shards size their threads from it: :func:`params` with ``work="score"``)."""
    os.environ.update(worker_threads_env())
    before = Path.cwd()
    os.chdir(root())
    try:
        yield root()
    finally:
        os.chdir(before)


def run(*cmd: str, timeout: float | None = None) -> str:
    """Run a command in the workspace; its output goes to the task log; a failure raises with its tail."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **worker_threads_env()}
    log.info("$ %s  (in %s)", " ".join(cmd), root())
    proc = subprocess.run(cmd, cwd=root(), env=env, capture_output=True, text=True, timeout=timeout)
    output = (proc.stdout + proc.stderr).strip()
    if output:
        log.info("%s", output)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{output[-4000:]}")
    return proc.stdout


def worker_threads_env() -> dict[str, str]:
    """On a Celery worker, tell the commands how many tasks share the machine (pipeline/threads.py sizes
    their torch / OpenMP threads from it): Airflow's ``[celery] worker_concurrency``, when the worker's
    environment does not say already. A worker started with ``--concurrency N`` alone leaves that config
    at its default: set ``AIRFLOW__CELERY__WORKER_CONCURRENCY=N`` too (docker/compose.yaml does)."""
    if threads.TASKS_ENV in os.environ or threads.CELERY_CONCURRENCY_ENV in os.environ or "airflow" not in sys.modules:
        return {}
    from airflow.configuration import conf

    if "celery" not in conf.get("core", "executor", fallback="").lower():
        return {}
    return {threads.CELERY_CONCURRENCY_ENV: str(conf.getint("celery", "worker_concurrency", fallback=1))}


def dvc(*args: str) -> str:
    return run(str(BIN / "dvc"), *args)


def kpiguard(*args: str) -> str:
    return run(str(BIN / "kpiguard"), *args)
