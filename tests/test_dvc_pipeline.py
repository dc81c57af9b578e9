"""`dvc repro` of ingest → validate → windows on a small synthetic config, in a temporary copy of the repo."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO

TRACKED = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()


def copy_repo(dst: Path) -> Path:
    for rel in TRACKED:
        src = REPO / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    return dst


def small_copy(tmp_path: Path, synthetic: dict | None = None, **train) -> tuple[Path, dict[str, str]]:
    """A copy of the repo on a 2-KPI, 5-day synthetic feed (``synthetic`` and ``train`` override those
    sections of params), and the environment that runs the copy's own code (whatever an editable install
    points at)."""
    work = copy_repo(tmp_path / "repo")
    raw = yaml.safe_load((work / "params.yaml").read_text())
    raw["synthetic"].update({"n_kpis": 2, "start": "2026-01-01", "end": "2026-01-06", **(synthetic or {})})
    raw["train"].update(train)
    (work / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": os.pathsep.join([str(work), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return work, env


def test_dvc_repro_ingest_validate_windows(tmp_path):
    work, env = small_copy(tmp_path)
    run = subprocess.run(["dvc", "repro", "windows"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    manifest = json.loads((work / "data/raw/manifest.json").read_text())
    assert manifest["train"]["kpis"] == 2 and manifest["train"]["spec"] == "synthetic:"
    summary = json.loads((work / "data/windows/summary.json").read_text())
    assert summary["splits"]["train"]["windows"] > 0
    assert (work / "reports/validation/data_docs/index.html").exists()
    lock = yaml.safe_load((work / "dvc.lock").read_text())
    assert {"ingest", "validate", "windows"} <= set(lock["stages"])
    again = subprocess.run(["dvc", "repro", "windows"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "didn't change" in again.stdout  # nothing reruns


def test_editing_one_detectors_config_retrains_that_detector_only(tmp_path):
    """train@<detector> depends on models/configs/<detector>.py, not on every detector's config."""
    work, env = small_copy(tmp_path, detectors=["diff_z", "windowed_gaussian"])
    stages = ["train@diff_z", "train@windowed_gaussian"]
    run = subprocess.run(["dvc", "repro", *stages], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr

    def changed() -> set[str]:
        status = subprocess.run(["dvc", "status", "--json"], cwd=work, env=env, capture_output=True, text=True,
                                timeout=300)
        assert status.returncode == 0, status.stdout + status.stderr
        return set(json.loads(status.stdout))  # stage name -> what changed; evaluate/register never ran

    upstream = {"ingest", "validate", "windows", *stages}
    assert not changed() & upstream
    with open(work / "models/configs/diff_z.py", "a") as f:
        f.write("# an edit of diff_z's config alone\n")
    assert changed() & upstream == {"train@diff_z"}
