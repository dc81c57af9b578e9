"""kpiguard_score: score each day with the champion and publish the daily anomaly report.

    day → ingest → validate → score (one task per KPI shard) → write → report → publish

Runs daily for the day that just ended (its data interval), and again whenever the champion Asset
(``kpiguard://champion``) updates, re-scoring the latest complete day with the new champion.
Catchup is off; ``airflow backfill create --dag-id kpiguard_score --from-date .. --to-date ..``
scores a range. A rerun of a day replaces that day's partition and report. A validation failure
fails the run at ``validate`` (the Great Expectations result is in its log): nothing is scored.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import Asset, Param, dag, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.interval import CronDataIntervalTimetable

CHAMPION = Asset(name="kpiguard_champion", uri="kpiguard://champion")  # produced by kpiguard_retrain


@dag(dag_id="kpiguard_score",
     schedule=AssetOrTimeSchedule(timetable=CronDataIntervalTimetable("@daily", timezone="UTC"), assets=[CHAMPION]),
     start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), catchup=False, max_active_runs=4,
     params={"day": Param(None, type=["null", "string"], format="date",
                          description="score this day instead of the run's data interval (YYYY-MM-DD)"),
             "input": Param(None, type=["null", "string"],
                            description="a source spec instead of score.input in params.yaml; only "
                                        "score.input or what score.allowed_inputs allows")},
     tags=["kpiguard"], doc_md=__doc__)
def kpiguard_score():
    @task
    def day(**context) -> str:
        if context["params"].get("day"):
            return context["params"]["day"]
        start = context.get("data_interval_start")
        if context["dag_run"].run_type == "asset_triggered" or start is None:
            # A new champion: re-score the latest complete day.
            return (context["dag_run"].run_after - timedelta(days=1)).date().isoformat()
        return start.date().isoformat()

    @task
    def ingest(d: str, **context) -> dict:
        from pipeline.batch import daily
        from pipeline.orchestration import workspace

        with workspace.inside():
            return daily.ingest(workspace.params(), d, context["params"].get("input"))

    @task
    def validate(d: str) -> dict:
        from pipeline.batch import daily
        from pipeline.orchestration import workspace

        with workspace.inside():
            return daily.validate(workspace.params(), d)

    @task
    def shards() -> list[int]:
        from pipeline.orchestration import workspace

        return list(range(workspace.params().score.shards))

    @task(map_index_template="shard {{ task.op_kwargs['shard'] }}")
    def score(d: str, shard: int) -> dict:
        from pipeline.batch import daily
        from pipeline.orchestration import workspace

        with workspace.inside():
            p = workspace.params(work="score")  # this task scores in-process: its share of the worker's cores
            return daily.score_shard(p, d, shard, p.score.shards)

    @task
    def write(d: str) -> dict:
        from pipeline.batch import daily
        from pipeline.orchestration import workspace

        with workspace.inside():
            p = workspace.params()
            return daily.write(p, d, p.score.shards)

    @task
    def report(d: str) -> dict:
        from pipeline.batch import daily
        from pipeline.orchestration import workspace

        with workspace.inside():
            return daily.report(workspace.params(), d)

    @task
    def publish(d: str) -> dict:
        import os

        from pipeline.batch import daily
        from pipeline.orchestration import workspace

        with workspace.inside():
            return daily.publish(workspace.params(), d, os.environ.get("KPIGUARD_REPORT_BUCKET") or None)

    d = day()
    scored = score.partial(d=d).expand(shard=shards())
    ingest(d) >> validate(d) >> scored >> write(d) >> report(d) >> publish(d)


kpiguard_score()
