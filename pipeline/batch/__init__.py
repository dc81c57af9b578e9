"""Batch scoring with the served model: ``kpiguard score`` (score), the scoring DAG's steps (daily) and
the daily anomaly report (report)."""
