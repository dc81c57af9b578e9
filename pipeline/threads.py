"""How many CPU threads one kpiguard task may use, applied before torch starts any.

By default every torch process takes every core (intra-op threads = cores, inter-op threads = cores,
and OpenMP / MKL / OpenBLAS pools of the same size). Two such processes on one machine (a ``dvc
repro`` beside a ``kpiguard bench``, or a Celery worker running two tasks) ask for twice the cores,
and OpenMP threads that busy-wait for each other then lose most of their time to the other
process: a 30 s training took 40 minutes that way on 2 cores. So each task sizes its pools to its
share of the machine:

    threads = max(1, cores // tasks)

``cores`` is the CPUs this process may run on (its affinity mask, which respects ``taskset`` and
container CPU sets). ``tasks``, how many kpiguard tasks share the machine, is the first of:

1. ``KPIGUARD_TASKS_PER_MACHINE`` (set it where you know better, e.g. on a host running several
   workers);
2. ``AIRFLOW__CELERY__WORKER_CONCURRENCY``: on a Celery worker, each of its task slots is a task
   (``pipeline/orchestration/workspace.py`` also passes Airflow's ``[celery] worker_concurrency`` config on to the
   commands it runs, as this variable);
3. 1: a process alone gets every core.

An explicit ``train.threads`` / ``score.threads`` wins over all of this, and so does an
``OMP_NUM_THREADS`` the user exported (a container platform or a user sizing the process by hand).

Concurrent standalone runs that know nothing of each other still get every core each; what keeps
them from collapsing is OpenMP's passive wait policy (``OMP_WAIT_POLICY=PASSIVE``, set here unless
the user set a policy): idle OpenMP threads sleep instead of spinning, so an oversubscribed machine
shares its cores instead of burning them. BENCHMARKS.md ("Threads per task") has the measurement.
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import asdict, dataclass

from pipeline.errors import ThreadsError

TASKS_ENV = "KPIGUARD_TASKS_PER_MACHINE"
CELERY_CONCURRENCY_ENV = "AIRFLOW__CELERY__WORKER_CONCURRENCY"
# Pools sized from the environment when their library loads: they must be set before `import torch`.
POOL_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


@dataclass(frozen=True)
class ThreadPlan:
    threads: int      # torch intra-op threads, and the OpenMP / MKL / OpenBLAS pool size
    interop: int      # torch inter-op threads
    cores: int
    tasks: int
    source: str       # what decided: the setting, the environment variable, or "auto"

    def as_dict(self) -> dict:
        return asdict(self)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def auto_threads(cores: int, tasks: int) -> int:
    """Each of ``tasks`` concurrent tasks gets an equal share of ``cores``, at least one thread."""
    return max(1, cores // max(1, tasks))


def _positive_int(env: MutableMapping[str, str], name: str) -> int | None:
    value = env.get(name, "").strip()
    if not value:
        return None
    try:
        number = int(value)
    except ValueError:
        raise ThreadsError(f"{name}={value!r}: must be a positive integer") from None
    if number < 1:
        raise ThreadsError(f"{name}={value!r}: must be a positive integer")
    return number


def plan(setting: int | None, env: MutableMapping[str, str] | None = None, cores: int | None = None) -> ThreadPlan:
    """The threads for a task: ``setting`` (train.threads / score.threads) when given, else derived
    from ``env`` and ``cores`` as the module docstring says. Pure: reads only its arguments."""
    env = os.environ if env is None else env
    cores = available_cores() if cores is None else cores
    tasks = 1
    if setting is not None:
        threads, source = setting, "params"
    elif (omp := _positive_int(env, "OMP_NUM_THREADS")) is not None:
        threads, source = omp, "OMP_NUM_THREADS"
    else:
        for name in (TASKS_ENV, CELERY_CONCURRENCY_ENV):
            if (found := _positive_int(env, name)) is not None:
                tasks, source = found, name
                break
        else:
            source = "auto"
        threads = auto_threads(cores, tasks)
    return ThreadPlan(threads=threads, interop=threads, cores=cores, tasks=tasks, source=source)


def apply_env(p: ThreadPlan, env: MutableMapping[str, str]) -> None:
    """Size the native pools through the environment (read when torch and its BLAS load; inherited by
    child processes); a wait policy the user chose is kept."""
    for name in POOL_ENV:
        env[name] = str(p.threads)
    env.setdefault(WAIT_POLICY_ENV, "PASSIVE")


_applied: ThreadPlan | None = None


def configure(setting: int | None = None) -> ThreadPlan:
    """Apply the plan to this process: the environment first, then torch's intra- and inter-op pools.

    Call it before ``import torch`` (the CLI does, right after reading params): OpenMP, MKL and OpenBLAS
    read their sizes once, when they load. Calling it again in the same process keeps the first
    inter-op size, which torch cannot change once parallel work has started.
    """
    global _applied
    if _applied is not None and setting in (None, _applied.threads):
        p = _applied  # a second call (the CLI, then the stage) keeps the first plan and what decided it
    else:
        p = plan(setting)
    apply_env(p, os.environ)
    _apply_torch(p)
    _applied = p
    return p


def _apply_torch(p: ThreadPlan) -> None:
    import torch

    torch.set_num_threads(p.threads)
    if _applied is None:
        try:
            torch.set_num_interop_threads(p.interop)
        except RuntimeError:  # parallel work already ran in this process: its inter-op pool stays
            pass


def current() -> dict:
    """What this process runs with (for reports): torch's pools and the plan that sized them."""
    import torch

    return {"threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
            **({"threads_source": _applied.source, "tasks_per_machine": _applied.tasks} if _applied else {})}
