"""kpiguard_retrain: the DVC pipeline as an Airflow DAG, weekly by default.

    labels → ingest → validate → windows → train (one task per detector, gpu queue) → record_training
      → evaluate → register → champion_changed? → announce_champion (Asset kpiguard://champion)
                             └→ training_report (fails the run if a detector failed)

DVC stays the source of truth: the DVC steps run ``dvc repro --single-item <stage>`` in the
workspace, one at a time through the one-slot pool ``kpiguard_dvc`` (DVC holds a workspace lock).
Training runs the stage's own command (``kpiguard train``) outside the lock, so detectors train in
parallel on GPU workers; ``record_training`` then ``dvc commit``s every detector that trained.
See docs/airflow.md.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone

from airflow.sdk import Asset, Param, dag, task
from airflow.task.trigger_rule import TriggerRule

CHAMPION = Asset(name="kpiguard_champion", uri="kpiguard://champion")
DVC_POOL, GPU_POOL, GPU_QUEUE = "kpiguard_dvc", "gpu", "gpu"


@dag(dag_id="kpiguard_retrain", schedule=os.environ.get("KPIGUARD_RETRAIN_SCHEDULE", "@weekly"),
     start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), catchup=False, max_active_runs=1,
     params={"force_train": Param(False, type="boolean", description="retrain even when DVC sees no change")},
     tags=["kpiguard"], doc_md=__doc__)
def kpiguard_retrain():
    @task(pool=DVC_POOL)
    def detectors(**context) -> list[str]:
        """The enabled detectors whose train stage DVC sees as stale (all of them with force_train)."""
        from pipeline.orchestration import workspace

        names = list(workspace.params().train.detectors)
        if context["params"]["force_train"]:
            return names
        stale = json.loads(workspace.dvc("status", "--json", *(f"train@{n}" for n in names)) or "{}")
        return [n for n in names if f"train@{n}" in stale]

    @task(queue=GPU_QUEUE, pool=GPU_POOL, map_index_template="{{ task.op_kwargs['detector'] }}")
    def train(detector: str) -> None:
        from pipeline.orchestration import workspace

        workspace.kpiguard("train", "--detector", detector, "--no-progress")

    @task(pool=DVC_POOL, trigger_rule=TriggerRule.ALL_DONE)
    def record_training() -> dict:
        from pipeline.orchestration import workspace

        p = workspace.params()
        statuses = {n: _status(workspace.root() / p.paths.artifacts / n) for n in p.train.detectors}
        trained = [f"train@{n}" for n, s in statuses.items() if s in ("ok", "skipped")]
        if trained:  # records the new outputs in dvc.lock; unchanged ones stay as they are
            workspace.dvc("commit", "--force", *trained)
        return statuses

    @task(pool=DVC_POOL)
    def register() -> dict:
        from pipeline.orchestration import workspace

        p = workspace.params()
        before = _champion(p)
        workspace.dvc("repro", "--single-item", "register")
        serving = json.loads((workspace.root() / p.paths.register_report / "summary.json").read_text())["serving"]
        # The stage may have been up to date (DVC skipped it): the registry, not the report, says what changed.
        return {**serving, "champion_before": before, "champion_after": _champion(p)}

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def champion_changed(serving: dict) -> bool:
        return serving["champion_after"] is not None and serving["champion_after"] != serving["champion_before"]

    @task(outlets=[CHAMPION])
    def announce_champion(serving: dict) -> dict:
        return {"model": serving.get("model"), "version": serving["champion_after"], "previous": serving["champion_before"]}

    @task(trigger_rule=TriggerRule.ALL_DONE)
    def training_report(statuses: dict) -> None:
        failed = sorted(n for n, s in statuses.items() if s != "ok" and s != "skipped")
        if failed:
            raise RuntimeError(f"detectors that did not train: {failed}; the others were evaluated and registered")

    names = detectors()
    trained = train.expand(detector=names)
    statuses = record_training()
    # labels: the reviewers' verdicts since the last run (reviews.store) become the label set ingest merges
    dvc_repro("labels") >> dvc_repro("ingest", "--force") >> dvc_repro("validate") >> dvc_repro("windows") >> names  # --force: new source rows
    trained >> statuses
    serving = register()
    statuses >> dvc_repro("evaluate") >> serving
    champion_changed(serving) >> announce_champion(serving)
    serving >> training_report(statuses)


def dvc_repro(stage: str, *flags: str):
    """A task running one DVC stage in the workspace, in the one-slot pool that serialises DVC."""

    @task(task_id=stage, pool=DVC_POOL)
    def repro() -> None:
        from pipeline.orchestration import workspace

        workspace.dvc("repro", "--single-item", *flags, stage)

    return repro()


def _champion(params) -> str | None:
    """The serving model's champion version in the registry the workspace uses."""
    from pipeline.orchestration import workspace
    from pipeline.serving import registry, tracking

    with workspace.inside():
        version = registry.champion_version(tracking.connect(params.mlflow), params.mlflow.serving_model)
    return None if version is None else str(version.version)


def _status(artifact_dir) -> str:
    path = artifact_dir / "status.json"
    return json.loads(path.read_text()).get("status", "unknown") if path.exists() else "missing"


kpiguard_retrain()
