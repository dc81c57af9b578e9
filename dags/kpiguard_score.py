"""kpiguard_score: score with the champion, page on incidents and publish the daily anomaly report.

    slot → ingest → validate → score (one task per KPI shard) → write → report → publish
                                                                          └→ alert

Runs on ``score.schedule`` (params.yaml, read when the DAG file is parsed; default ``@daily``): each
run scores its data interval, the day that just ended or, on a sub-daily cron such as
``*/5 * * * *``, the five minutes that just ended (with ``score.context`` of history before them),
writing them into the day's partition; ``alert`` pushes new and continuing incidents to the sinks of
``alerts:`` (Alertmanager, a webhook; a ledger sends each once), and the day's report is rebuilt so
far. Whenever the champion Asset (``kpiguard://champion``) updates, a run re-scores the latest
complete day with the new champion. Catchup is off; ``airflow backfill create --dag-id kpiguard_score
--from-date .. --to-date ..`` scores a range. A rerun of a day or interval replaces what it wrote
and sends nothing twice. A validation failure fails the run at ``validate`` (the Great Expectations
result is in its log): nothing is scored. Sub-daily runs go one at a time (they merge into the day).
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from airflow.sdk import Asset, Param, dag, task
from airflow.timetables.assets import AssetOrTimeSchedule
from airflow.timetables.interval import CronDataIntervalTimetable

CHAMPION = Asset(name="kpiguard_champion", uri="kpiguard://champion")  # produced by kpiguard_retrain


def _schedule() -> str:
    """``score.schedule`` of the workspace's params.yaml (the import loads no pandas, numpy or torch)."""
    from pipeline.params import load_params
    from pipeline.orchestration import workspace

    return load_params(workspace.root() / "params.yaml").score.schedule


SCHEDULE = _schedule()
SUB_DAILY = SCHEDULE not in ("@daily", "@midnight", "0 0 * * *")


@dag(dag_id="kpiguard_score",
     schedule=AssetOrTimeSchedule(timetable=CronDataIntervalTimetable(SCHEDULE, timezone="UTC"), assets=[CHAMPION]),
     start_date=datetime(2026, 1, 1, tzinfo=timezone.utc), catchup=False, max_active_runs=1 if SUB_DAILY else 4,
     params={"day": Param(None, type=["null", "string"], format="date",
                          description="score this day instead of the run's data interval (YYYY-MM-DD)"),
             "input": Param(None, type=["null", "string"],
                            description="a source spec instead of score.input in params.yaml; only "
                                        "score.input or what score.allowed_inputs allows")},
     tags=["kpiguard"], doc_md=__doc__)
def kpiguard_score():
    @task
    def slot(**context) -> str:
        """What this run scores: the ``day`` conf, else its data interval (a day, or a sub-day interval)."""
        if context["params"].get("day"):
            return context["params"]["day"]
        start, end = context.get("data_interval_start"), context.get("data_interval_end")
        if context["dag_run"].run_type == "asset_triggered" or start is None:
            # A new champion: re-score the latest complete day.
            return (context["dag_run"].run_after - timedelta(days=1)).date().isoformat()
        from pipeline.batch import score

        return score.slot_text(start, end)

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

    @task
    def alert(d: str) -> dict:
        """Push the incidents to the sinks of ``alerts:`` (none configured: nothing to do); a sink that
        stays down fails this task, and the ledger resends on the next run."""
        from pipeline.batch import daily
        from pipeline.orchestration import workspace

        with workspace.inside():
            return daily.alert(workspace.params(), d)

    d = slot()
    scored = score.partial(d=d).expand(shard=shards())
    reported = report(d)
    ingest(d) >> validate(d) >> scored >> write(d) >> reported >> [publish(d), alert(d)]


kpiguard_score()
