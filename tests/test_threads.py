"""pipeline/threads.py: how many threads a task gets, and that torch and the native pools get them."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline import threads
from tests.conftest import REPO


@pytest.mark.parametrize("cores,tasks,expected", [
    (2, 1, 2), (2, 2, 1), (2, 4, 1), (16, 3, 5), (8, 0, 8), (1, 1, 1),
])
def test_auto_threads_is_an_equal_share_of_at_least_one(cores, tasks, expected):
    assert threads.auto_threads(cores, tasks) == expected


@pytest.mark.parametrize("setting,env,expected", [
    (None, {}, (8, 1, "auto")),
    (None, {"AIRFLOW__CELERY__WORKER_CONCURRENCY": "4"}, (2, 4, "AIRFLOW__CELERY__WORKER_CONCURRENCY")),
    (None, {"KPIGUARD_TASKS_PER_MACHINE": "2", "AIRFLOW__CELERY__WORKER_CONCURRENCY": "16"},
     (4, 2, "KPIGUARD_TASKS_PER_MACHINE")),
    (None, {"OMP_NUM_THREADS": "3", "KPIGUARD_TASKS_PER_MACHINE": "2"}, (3, 1, "OMP_NUM_THREADS")),
    (6, {"OMP_NUM_THREADS": "3", "KPIGUARD_TASKS_PER_MACHINE": "2"}, (6, 1, "params")),
    (None, {"KPIGUARD_TASKS_PER_MACHINE": " "}, (8, 1, "auto")),
])
def test_plan_precedence(setting, env, expected):
    p = threads.plan(setting, env=env, cores=8)
    assert (p.threads, p.tasks, p.source) == expected
    assert p.interop == p.threads and p.cores == 8


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_tasks_variable_is_named(value):
    with pytest.raises(ValueError, match=f"KPIGUARD_TASKS_PER_MACHINE='{value}'"):
        threads.plan(None, env={"KPIGUARD_TASKS_PER_MACHINE": value}, cores=2)


def test_apply_env_sizes_the_pools_and_keeps_a_chosen_wait_policy():
    p = threads.plan(None, env={"KPIGUARD_TASKS_PER_MACHINE": "2"}, cores=4)
    env = {}
    threads.apply_env(p, env)
    assert env == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2",
                   "OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    threads.apply_env(p, env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and env["OMP_NUM_THREADS"] == "2"


@pytest.mark.parametrize("setting,env,expected", [
    (None, {"KPIGUARD_TASKS_PER_MACHINE": "1000"}, [1, 1, "1", "KPIGUARD_TASKS_PER_MACHINE"]),
    (3, {}, [3, 3, "3", "params"]),
])
def test_configure_applies_to_torch_in_a_fresh_process(setting, env, expected):
    code = ("import json, os, sys\n"
            "from pipeline import threads\n"
            f"threads.configure({setting!r})\n"
            "import torch\n"
            "threads.configure(None)  # a second call (the CLI, then the stage) keeps the first plan\n"
            "print(json.dumps([torch.get_num_threads(), torch.get_num_interop_threads(),\n"
            "                  os.environ['OMP_NUM_THREADS'], threads.current()['threads_source']]))\n")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("OMP_NUM_THREADS", "KPIGUARD_TASKS_PER_MACHINE", "AIRFLOW__CELERY__WORKER_CONCURRENCY")}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**clean, **env}, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert json.loads(out) == expected


def test_an_airflow_celery_task_passes_the_worker_concurrency_on(tmp_path):
    """Inside a task process, Airflow's [celery] worker_concurrency reaches the commands it runs."""
    (tmp_path / "airflow.cfg").write_text("[core]\nexecutor = CeleryExecutor\n[celery]\nworker_concurrency = 3\n")
    code = ("import airflow.configuration, json\n"
            "from pipeline.orchestration import workspace\n"
            "print(json.dumps(workspace.worker_threads_env()))\n")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "KPIGUARD_TASKS"))}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**clean, "AIRFLOW_HOME": str(tmp_path)},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"AIRFLOW__CELERY__WORKER_CONCURRENCY": "3"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**clean, "AIRFLOW_HOME": str(tmp_path), "KPIGUARD_TASKS_PER_MACHINE": "2"})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {}  # the worker's own setting stands
