"""Run one DAG with ``dag.test()`` in this process and print a JSON summary (used by tests/test_dags.py
in a subprocess, so each run gets the Airflow environment the test set up)."""
from __future__ import annotations

import json
import os
import sys

from airflow.models import DagBag


def main(dag_id: str, logical_date: str | None, conf: str) -> None:
    import pendulum
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"import errors: {bag.import_errors}")
    dag = bag.get_dag(dag_id)
    run = dag.test(logical_date=pendulum.parse(logical_date) if logical_date else None, run_conf=json.loads(conf))
    with create_session() as session:
        tasks = {f"{ti.task_id}" + (f"[{ti.map_index}]" if ti.map_index >= 0 else ""): str(ti.state)
                 for ti in run.get_task_instances(session=session)}
        events = (session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                  .filter(AssetModel.name == "kpiguard_champion").count())
        print("DAG_RESULT " + json.dumps({"state": str(run.state), "tasks": tasks, "champion_events": events,
                                          "run_id": run.run_id}))


def structure() -> None:
    """Import errors, and per DAG: schedule, catchup, and per task: downstream ids, queue, pool, trigger rule, outlets."""
    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dags = {}
    for dag_id, dag in bag.dags.items():
        condition = getattr(dag.timetable, "asset_condition", None)
        dags[dag_id] = {
            "timetable": type(dag.timetable).__name__, "summary": repr(dag.timetable), "catchup": dag.catchup,
            "assets": json.dumps(condition.as_expression(), default=str) if condition is not None else None,
            "tasks": {t.task_id: {"downstream": sorted(t.downstream_task_ids), "queue": t.queue, "pool": t.pool,
                                  "trigger_rule": getattr(t.trigger_rule, "value", str(t.trigger_rule)), "outlets": [getattr(o, "uri", str(o)) for o in t.outlets]}
                      for t in dag.tasks}}
    print("DAG_RESULT " + json.dumps({"import_errors": {str(k): str(v) for k, v in bag.import_errors.items()}, "dags": dags}))


if __name__ == "__main__":
    if sys.argv[1] == "--structure":
        structure()
    else:
        main(sys.argv[1], sys.argv[2] or None, sys.argv[3] if len(sys.argv) > 3 else "{}")
