"""DVC as its users expect, on a copy of the repo: `dvc repro` leaves `dvc status` clean (but for the always-changed labels stage), `dvc metrics show`
is one row per detector within a terminal, `dvc metrics diff HEAD` and `dvc plots diff` load HEAD, and two
`dvc exp run -S ...` (non-default threshold methods, keys set without `+`) compare in
`dvc exp show --only-changed`. One sequence, as a user runs it: each step needs the state the last one left."""
from __future__ import annotations

import json
import subprocess

from tests.test_dvc_pipeline import small_copy

DETECTORS = ["diff_z", "robust_zscore"]   # the fastest two; evaluate adds the `random` row
ROWS = {f"metrics/{name}.json" for name in [*DETECTORS, "random"]}
HEADLINE = ("val_aiops_f1", "val_aiops_f1_low", "val_aiops_f1_high", "val_events", "test_aiops_f1", "alarm_rate",
            "train_seconds")
MAX_METRICS_WIDTH = 200   # the terminal
DVC_MAX_WIDTH = 1024      # dvc exp show's pager width (dvc.ui.table.SHOW_MAX_WIDTH): wider tables are collapsed to "…"


def test_repro_metrics_and_experiments_as_a_user_runs_them(tmp_path):
    # 7 days with frequent anomalies: validation and test both hold labelled anomalies, so every figure exists
    work, env = small_copy(tmp_path, synthetic={"end": "2026-01-08", "anomalies_per_week": 12}, detectors=DETECTORS)

    def run(*cmd: str, timeout: int = 600) -> str:
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"
        assert "failed to load" not in done.stdout + done.stderr, done.stdout + done.stderr
        return done.stdout

    run("git", "config", "user.name", "kpiguard test")
    run("git", "config", "user.email", "test@kpiguard.invalid")
    run("dvc", "repro", "--quiet")
    # clean but for labels, which reads the review store (a database DVC cannot hash): always changed, and
    # rerunning it rewrites the same bytes, so nothing downstream reruns
    assert json.loads(run("dvc", "status", "--json")) == {"labels": ["always changed"]}

    # What is committed: dvc.lock and one small metrics file per detector; nothing else that DVC writes.
    run("git", "add", "-A")
    run("git", "commit", "-q", "-m", "pipeline run")
    tracked = set(run("git", "ls-files", "dvc.lock", "metrics").split())
    assert tracked == {"dvc.lock", *ROWS}
    assert run("git", "status", "--porcelain") == ""

    shown = run("dvc", "metrics", "show").splitlines()
    header, rows = shown[0].split(), [line.split() for line in shown[1:] if line.strip()]
    assert header == ["Path", *sorted(HEADLINE)]
    assert sorted(r[0] for r in rows) == sorted(ROWS)       # one row per detector
    assert all(len(r) == len(header) for r in rows if r[0] != "metrics/random.json")  # every figure there
    assert max(map(len, shown)) <= MAX_METRICS_WIDTH, "\n".join(shown)
    run("dvc", "metrics", "diff", "HEAD")                    # HEAD's metrics load (nothing changed yet)

    # One plot overlays every detector's PR curve; the score figures are images beside it.
    plots = json.loads(run("dvc", "plots", "show", "--json"))["data"]
    [pr] = plots["reports/plots/pr.csv"]
    assert pr["type"] == "vega" and pr["content"]["encoding"]["color"]["field"] == "detector"
    assert {p["detector"] for p in pr["content"]["data"]["values"]} == {*DETECTORS, "random"}
    assert any(k.startswith("reports/plots/scores/") and v[0]["type"] == "image" for k, v in plots.items())

    # Keys of the non-default threshold methods are in params.yaml: no `+` needed.
    run("dvc", "exp", "run", "--quiet", "-n", "q999",
        "-S", "evaluate.threshold.method=quantile", "-S", "evaluate.threshold.quantile=0.999")
    run("dvc", "exp", "run", "--quiet", "-n", "pot", "-S", "evaluate.threshold.method=pot",
        "-S", "evaluate.threshold.pot_q=0.005")

    diff = run("dvc", "metrics", "diff", "HEAD").splitlines()  # the workspace holds the last experiment
    assert diff[0].split() == ["Path", "Metric", "HEAD", "workspace", "Change"]
    assert {line.split()[0] for line in diff[1:]} <= ROWS and len(diff) > 1

    table = run("dvc", "exp", "show", "--only-changed").splitlines()
    text = "\n".join(table)
    assert "…" not in text and max(map(len, table)) <= DVC_MAX_WIDTH, text  # no column collapsed
    header = next(line for line in table if "Experiment" in line)
    assert "evaluate.threshold.method" in header
    assert all(f"{path}:alarm_rate" in header for path in ROWS), header  # each detector's figures compared
    rows = [line.split() for line in table if line.strip(" ─") and line is not header]  # not the rules
    assert len(rows) == 4, text                              # workspace, the baseline commit, both experiments
    assert all("!" not in row for row in rows), text        # every revision's metrics loaded
    for name, method in (("q999", "quantile"), ("pot", "pot")):
        assert method in next(row for row in rows if f"[{name}]" in row), text

    plots = json.loads(run("dvc", "plots", "diff", "HEAD", "q999", "--json", "--targets", "reports/plots/pr.csv"))
    [pr] = plots["data"]["reports/plots/pr.csv"]
    assert {(p["rev"], p["detector"]) for p in pr["content"]["data"]["values"]} == {
        (rev, name) for rev in ("HEAD", "q999") for name in [*DETECTORS, "random"]}
