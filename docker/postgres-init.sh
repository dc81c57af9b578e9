#!/usr/bin/env bash
# Runs once, when the postgres container initialises an empty data volume (/docker-entrypoint-initdb.d):
# one database and one owner per service, from the environment compose gives the container:
#   AIRFLOW_DB_NAME / AIRFLOW_DB_USER / AIRFLOW_DB_PASSWORD   Airflow's metadata (and Celery results)
#   MLFLOW_DB_NAME  / MLFLOW_DB_USER  / MLFLOW_DB_PASSWORD    MLflow's tracking and registry store
# Values reach SQL as psql variables (:"ident", :'literal'), so they are quoted, never spliced.
# Changing a password later: ALTER ROLE ... PASSWORD ... by hand (this script does not run again).
set -euo pipefail

create_db() {
  local db=$1 user=$2 password=$3
  psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
       -v db="$db" -v user="$user" -v password="$password" <<'SQL'
CREATE ROLE :"user" LOGIN PASSWORD :'password';
CREATE DATABASE :"db" OWNER :"user";
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
SQL
  echo "postgres-init: database $db owned by $user"
}

create_db "${AIRFLOW_DB_NAME:-airflow}" "${AIRFLOW_DB_USER:-airflow}" "${AIRFLOW_DB_PASSWORD:?}"
create_db "${MLFLOW_DB_NAME:-mlflow}" "${MLFLOW_DB_USER:-mlflow}" "${MLFLOW_DB_PASSWORD:?}"
