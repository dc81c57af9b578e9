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

from pipeline.params import Params, load_params

log = logging.getLogger(__name__)

BIN = Path(sys.executable).parent


def root() -> Path:
    return Path(os.environ.get("KPIGUARD_WORKSPACE") or Path(__file__).resolve().parents[1])


def params(overrides: list[str] | None = None) -> Params:
    return load_params(root() / "params.yaml", overrides)


@contextlib.contextmanager
def inside() -> Iterator[Path]:
    """Run a block with the workspace as working directory (params paths are relative to it)."""
    before = Path.cwd()
    os.chdir(root())
    try:
        yield root()
    finally:
        os.chdir(before)


def run(*cmd: str, timeout: float | None = None) -> str:
    """Run a command in the workspace; its output goes to the task log; a failure raises with its tail."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log.info("$ %s  (in %s)", " ".join(cmd), root())
    proc = subprocess.run(cmd, cwd=root(), env=env, capture_output=True, text=True, timeout=timeout)
    output = (proc.stdout + proc.stderr).strip()
    if output:
        log.info("%s", output)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {proc.returncode}:\n{output[-4000:]}")
    return proc.stdout


def dvc(*args: str) -> str:
    return run(str(BIN / "dvc"), *args)


def kpiguard(*args: str) -> str:
    return run(str(BIN / "kpiguard"), *args)
