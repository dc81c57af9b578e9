"""What Airflow tasks use to run the pipeline: the DVC workspace and its commands (workspace)."""
