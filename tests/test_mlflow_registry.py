"""MLflow tracking, registry, champion gate, promote / rollback and batch scoring, against a real
``mlflow server`` (SQLite backend; one test with this machine's PostgreSQL) on a loopback port."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.batch import report as report_mod
from pipeline.batch.incidents import incidents
from pipeline.batch import score
from pipeline.eval import selection
from pipeline.params import parse_params
from pipeline.serving import gate, registry, tracking
from pipeline.stages import evaluate as evaluate_stage
from pipeline.stages import ingest, register, train, validate, windows
from tests.conftest import REPO, small_params_dict
from tests.servers import closed_port, env_vars, mlflow_server, postgres_available, postgres_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DETECTORS = ["robust_zscore", "isolation_forest", "dense_autoencoder", "ensemble", "stacked_gbdt"]


def params_for(root: Path, tag: str, **sections):
    """Small params under ``root`` whose MLflow names are unique to one test (``tag``)."""
    # The gate tests compare figures: the metric decides from the first labelled event (evaluate.min_events 1),
    # against a default detector that is trained here.
    raw = small_params_dict(**{**sections, "evaluate": {"min_events": 1, "default_detector": "robust_zscore",
                                                         **(sections.get("evaluate") or {})}})
    raw["paths"] = {k: str(root / v) for k, v in raw["paths"].items()}
    raw["train"]["detectors"] = DETECTORS
    raw["train"]["max_epochs"] = 5
    raw["mlflow"] = {**raw["mlflow"], "experiment": f"exp-{tag}", "serving_model": f"serve-{tag}",
                     "detector_model_prefix": f"{tag}-", **(sections.get("mlflow") or {})}
    return parse_params(raw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """ingest → validate → windows → train → evaluate for a few cheap detectors (two of them nest members), once per module."""
    root = tmp_path_factory.mktemp("pipeline")
    p = params_for(root, "base")
    ingest.run(p, Path(p.paths.raw))
    validate.run(p, Path(p.paths.raw), Path(p.paths.validated), Path(p.paths.quarantine),
                 Path(p.paths.validation_report))
    windows.run(p, Path(p.paths.validated), Path(p.paths.windows))
    for name in DETECTORS:
        assert train.run(p, name, progress=False)["status"] == "ok"
    evaluate_stage.run(p)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url, env_vars({"MLFLOW_TRACKING_URI": url}):
        yield url


def client_for(p):
    return tracking.connect(p.mlflow)


def test_first_register_is_champion_and_rerun_changes_nothing(trained, server):
    p = params_for(trained, "first")
    report = register.run(p)
    client = client_for(p)
    for name in DETECTORS:
        entry = report["detectors"][name]
        assert entry["status"] == "ok" and entry["version"] == "1" and entry["decision"] == "champion"
        champion = client.get_model_version_by_alias(f"first-{name}", "champion")
        assert champion.version == 1 or champion.version == "1"
        assert champion.tags["kpiguard.gate.decision"] == "champion"
        assert "the first version registered" in champion.description
    serving = report["serving"]
    assert serving["decision"] == "champion" and serving["version"] == "1"
    best = json.loads((Path(p.paths.evaluation) / "metrics.json").read_text())["best_on_val"]
    assert serving["detector"] == best
    version = client.get_model_version_by_alias("serve-first", "champion")
    assert version.tags["kpiguard.detector"] == best

    # the run holds what the issue lists: params, per-epoch and final metrics, the model and artifacts
    run = client.get_run(report["detectors"]["dense_autoencoder"]["run_id"])
    assert {"params_digest", "git_commit", "data_dvc_md5", "detector.window", "train.seed"} <= set(run.data.params)
    assert run.data.params["params_digest"] == p.digest()
    assert {"val_aiops_f1", "test_aiops_f1", "train_seconds"} <= set(run.data.metrics)
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(losses) >= 1 and [m.step for m in losses] == sorted(m.step for m in losses)
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"threshold.json", "calibration.json", "train_report.json", "plots"} <= files
    assert "calibration.method" in run.data.params
    # each run records the calibration evaluate used for that detector (evaluate.calibration_by_detector)
    for name in DETECTORS:
        logged = client.get_run(report["detectors"][name]["run_id"]).data.params
        assert logged["calibration.method"] == p.evaluate.calibration_for(name)["method"], name
    assert client.get_run(report["detectors"]["stacked_gbdt"]["run_id"]).data.params["calibration.method"] == "none"

    again = register.run(p)  # same bundles: nothing new is logged or registered
    assert all(again["detectors"][n]["decision"] == "unchanged" and again["detectors"][n]["reused_run"]
               for n in DETECTORS)
    assert again["serving"]["decision"] == "unchanged"
    assert len(client.search_model_versions("name = 'serve-first'")) == 1


def test_a_new_clip_sigma_is_a_new_bundle(trained, server):
    """windows.clip_sigma decides which points the served model clips and flags: a bundle whose detector is
    unchanged but whose clip_sigma differs is a new model, never the tracked one reused by digest."""
    base = params_for(trained, "clip").as_dict()

    def with_clip(clip_sigma: float):
        return parse_params({**base, "train": {**base["train"], "detectors": ["robust_zscore"]},
                             "windows": {**base["windows"], "clip_sigma": clip_sigma}})

    first = register.run(with_clip(1.0e6))["detectors"]["robust_zscore"]
    same = register.run(with_clip(1.0e6))["detectors"]["robust_zscore"]
    other = register.run(with_clip(50.0))["detectors"]["robust_zscore"]
    assert same["reused_run"] and same["run_id"] == first["run_id"] and same["decision"] == "unchanged"
    assert not other["reused_run"] and other["run_id"] != first["run_id"] and other["version"] == "2"
    client = client_for(with_clip(50.0))
    bundle = model_store_bundle(client, "clip-robust_zscore", "2")
    assert bundle.clip_sigma == 50.0


def model_store_bundle(client, model: str, version: str):
    from pipeline.serving import store

    return store.load_version(client, model, version).bundle


def test_gate_promotes_only_a_better_version(trained, server):
    # Point F1 with its own best threshold: on this small synthetic validation split the event metric
    # (aiops_f1) is 1.0 for both detectors, and the gate needs two versions that differ.
    p = params_for(trained, "gate", mlflow={"min_improvement": 0.0},
                   evaluate={"champion_metric": "point_f1",
                             "threshold": {"method": "best_f1", "scope": "global", "metric": "point_f1"}})
    client = client_for(p)
    experiment = tracking.experiment_id(client, p.mlflow.experiment)
    evaluation = json.loads((Path(p.paths.evaluation) / "metrics.json").read_text())["detectors"]
    logged = {n: register.log_detector_run(client, experiment, p, n, evaluation[n]) for n in ("robust_zscore", "isolation_forest")}
    the_gate = gate.Gate(client, p)

    # measure both on a scratch model, then register the worse one first
    value = {}
    for name, (run_id, uri, _) in logged.items():
        mv, _ = registry.register_version(client, f"gate-probe-{name}", uri, run_id, {}, role="probe")
        value[name] = the_gate.validation_metric(f"gate-probe-{name}", str(mv.version))
    worse, better = sorted(value, key=value.get)
    assert value[worse] < value[better], f"the test needs two detectors that differ on validation: {value}"

    model = "gate-serving"
    v1, _ = registry.register_version(client, model, logged[worse][1], logged[worse][0], {}, role="test")
    assert the_gate.decide(model, v1)["decision"] == "champion"  # first version
    v2, _ = registry.register_version(client, model, logged[better][1], logged[better][0], {}, role="test")
    promoted = the_gate.decide(model, v2)
    assert promoted["decision"] == "champion"
    assert promoted["candidate_value"] == pytest.approx(value[better])
    assert promoted["champion_value"] == pytest.approx(value[worse])
    import mlflow

    v3 = mlflow.register_model(logged[worse][1], model)  # the worse model offered again
    kept = the_gate.decide(model, v3)
    assert kept["decision"] == "challenger" and kept["champion_version"] == str(v2.version)
    assert str(client.get_model_version_by_alias(model, "champion").version) == str(v2.version)
    assert str(client.get_model_version_by_alias(model, "challenger").version) == str(v3.version)
    recorded = client.get_model_version(model, str(v3.version))
    assert recorded.tags["kpiguard.gate.decision"] == "challenger"
    assert float(recorded.tags["kpiguard.gate.champion_value"]) == pytest.approx(value[better])
    assert "challenger" in recorded.description and f"champion v{v2.version}" in recorded.description


def test_label_free_gate_replaces_a_retrain_and_a_champion_of_other_kpis(trained, server, tmp_path):
    """No metric decides (evaluate.min_events above the validation events): a new version replaces the champion,
    as a retrain when the champion covers the validation KPIs, and because it does not when the validation data
    are other KPIs (the champion's norm stats name the ones it was trained on)."""
    import mlflow

    p = params_for(trained, "lfgate", evaluate={"min_events": 1000})
    client = client_for(p)
    experiment = tracking.experiment_id(client, p.mlflow.experiment)
    evaluation = json.loads((Path(p.paths.evaluation) / "metrics.json").read_text())["detectors"]
    run_id, uri, _ = register.log_detector_run(client, experiment, p, "robust_zscore", evaluation["robust_zscore"])
    model = "lfgate-serving"
    v1, _ = registry.register_version(client, model, uri, run_id, {}, role="test")
    assert gate.Gate(client, p).decide(model, v1)["decision"] == "champion"
    v2 = mlflow.register_model(uri, model)
    retrain = gate.Gate(client, p).decide(model, v2)
    assert retrain["decision"] == "champion" and retrain["events"] < 1000
    assert retrain["reason"].startswith("neither version has a metric that decides (the validation split has ")
    assert retrain["reason"].endswith("fewer than evaluate.min_events (1000)): the new version, a retrain, replaces v1")

    # the same validation data under other KPI ids: v2 was trained on none of them
    other = tmp_path / "windows"
    other.mkdir()
    for split in ("train", "val", "test"):
        frame = pd.read_parquet(Path(p.paths.windows) / f"{split}.parquet")
        frame["kpi_id"] = "other/" + frame["kpi_id"].astype(str)
        frame.to_parquet(other / f"{split}.parquet", index=False)
    elsewhere = parse_params({**p.as_dict(), "paths": {**p.as_dict()["paths"], "windows": str(other)}})
    v3 = mlflow.register_model(uri, model)
    moved = gate.Gate(client, elsewhere).decide(model, v3)
    assert moved["decision"] == "champion"
    assert moved["reason"].startswith(f"v{v2.version} was trained on other KPIs: 2 of the 2 validation KPIs (other/")
    assert str(client.get_model_version_by_alias(model, "champion").version) == str(v3.version)
    assert client.get_model_version(model, str(v3.version)).tags["kpiguard.gate.reason"] == moved["reason"]


def test_promote_and_rollback(trained, server):
    p = params_for(trained, "ops")
    client = client_for(p)
    experiment = tracking.experiment_id(client, p.mlflow.experiment)
    evaluation = json.loads((Path(p.paths.evaluation) / "metrics.json").read_text())["detectors"]
    run_id, uri, _ = register.log_detector_run(client, experiment, p, "robust_zscore", evaluation["robust_zscore"])
    import mlflow

    versions = [str(mlflow.register_model(uri, "ops-model").version) for _ in range(3)]
    registry.set_champion(client, "ops-model", versions[0], "test")

    env = {**os.environ, "MLFLOW_TRACKING_URI": server}
    cli = [sys.executable, "-m", "pipeline.cli"]
    out = subprocess.run([*cli, "promote", "--json", "--model", "ops-model", "--version", versions[2]], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["previous_champion"] == versions[0]
    champion = client.get_model_version_by_alias("ops-model", "champion")
    assert str(champion.version) == versions[2] and champion.tags["kpiguard.previous_champion"] == versions[0]
    registry.promote(client, "ops-model", versions[1])

    back = subprocess.run([*cli, "rollback", "--json", "--model", "ops-model"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout) == {"model": "ops-model", "champion": versions[2], "rolled_back_from": versions[1]}
    assert registry.rollback(client, "ops-model")["champion"] == versions[0]
    with pytest.raises(registry.RegistryError, match="first champion on record"):
        registry.rollback(client, "ops-model")
    with pytest.raises(registry.RegistryError, match="no version 99"):
        registry.promote(client, "ops-model", "99")
    missing = subprocess.run([*cli, "rollback", "--model", "no-such-model"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no-such-model" in missing.stderr and "Traceback" not in missing.stderr


def test_champion_loads_in_a_fresh_process_and_scores(trained, server):
    p = params_for(trained, "fresh")
    register.run(p)
    code = """
import json, mlflow, pandas as pd
from pipeline.params import load_params
from pipeline.data.sources import read_source
from pipeline.serving.bundle import to_model_input
rows = read_source("synthetic:", load_params(), "2026-01-05", "2026-01-07")
out = mlflow.pyfunc.load_model("models:/serve-fresh@champion").predict(to_model_input(rows))
print(json.dumps({"rows": len(rows), "out": len(out), "columns": list(out.columns),
                  "finite": bool(out["score"].notna().all()), "alarms": int(out["is_anomaly"].sum())}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MLFLOW_TRACKING_URI": server})
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["out"] == result["rows"] > 0 and result["finite"]
    assert result["columns"] == ["kpi_id", "timestamp", "value", "expected", "expected_low", "expected_high",
                                 "raw_score", "score", "threshold", "is_anomaly"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_rescoring_a_date_is_idempotent(trained, server, where, request, tmp_path):
    p = params_for(trained, f"score{where}")
    register.run(p)
    if where == "s3":
        endpoint, s3_env = request.getfixturevalue("s3_server")
        bucket = f"scores-{uuid.uuid4().hex[:8]}"
        import boto3

        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
                     region_name=s3_env["AWS_DEFAULT_REGION"]).create_bucket(Bucket=bucket)
        output, env = f"s3://{bucket}/scores", s3_env
    else:
        output, env = str(tmp_path / "scores"), {}
    start, end = score.day_range("2026-01-05")
    uri = f"models:/serve-score{where}@champion"
    with env_vars(env):
        first = score.run(p, "synthetic:", start, end, output, uri)
        rows1 = score.read_partition(output, "2026-01-05")
        second = score.run(p, "synthetic:", start, end, output, uri)
        rows2 = score.read_partition(output, "2026-01-05")
        next_day = score.run(p, "synthetic:", *score.day_range("2026-01-06"), output, uri)
        # the whole dataset, as pandas reads any Hive-partitioned Parquet dataset
        options = {"storage_options": {"client_kwargs": {"endpoint_url": env["AWS_ENDPOINT_URL"]}}} if env else {}
        whole = pd.read_parquet(output, **options)
        held = pd.read_parquet(score.quarantine_dataset(output), **options)
    assert first["partitions"][0]["rows"] == second["partitions"][0]["rows"] == len(rows1) == len(rows2) > 0
    assert not rows2.duplicated(["kpi_id", "timestamp"]).any()
    pd.testing.assert_frame_equal(rows1, rows2)
    assert rows1["timestamp"].min() >= start and rows1["timestamp"].max() < end
    columns = ["kpi_id", "timestamp", "value", "expected", "expected_low", "expected_high", "raw_score", "score",
               "threshold", "is_anomaly"]
    assert list(rows1.columns) == columns
    assert first["model"]["model"] == f"serve-score{where}" and first["model"]["version"] == "1"
    # register recorded the model's training range in its bundle: the scored day is inside it
    assert first["partitions"][0]["training_range"]["start"] == "2026-01-01T00:00:00+00:00"
    assert first["partitions"][0]["training_range"]["outside"] is False

    # two scored days, one rescored: exactly the score columns (and the partition key), both days' rows once
    assert list(whole.columns) == [*columns, "date"]
    days = whole["date"].astype(str)
    assert days.value_counts().to_dict() == {"2026-01-05": len(rows1), "2026-01-06": next_day["partitions"][0]["rows"]}
    assert (whole["timestamp"].dt.date.astype(str) == days).all() and not whole.duplicated(["kpi_id", "timestamp"]).any()
    pd.testing.assert_frame_equal(whole[days == "2026-01-05"][columns].reset_index(drop=True), rows1)
    assert len(held) == sum(r["partitions"][0]["quarantined"] for r in (second, next_day))
    # what score --json adds: the anomaly spans it wrote, most severe first
    spans = report_mod.anomaly_spans(rows1)
    assert first["spans"] == len(spans) == first["spans_listed"] and first["anomaly_spans"] == report_mod.span_records(spans)
    # and the incidents they make, as the day's report finds them (the same ids)
    found = incidents(rows1, p.score.incident_gap, first["model"]["detector"])
    assert first["incidents"] == len(found) == first["incidents_listed"] and first["anomaly_incidents"] == found
    if where == "local":
        root = tmp_path / "scores"
        assert sorted(x.name for x in root.iterdir()) == ["date=2026-01-05", "date=2026-01-06"]
        assert sorted(x.name for x in (root / "date=2026-01-05").iterdir()) == ["_meta.json", "scores.parquet"]
        assert sorted(str(x.relative_to(tmp_path)) for x in (tmp_path / "scores_quarantine").rglob("*")) == [
            "scores_quarantine/date=2026-01-05", "scores_quarantine/date=2026-01-05/quarantine.parquet",
            "scores_quarantine/date=2026-01-06", "scores_quarantine/date=2026-01-06/quarantine.parquet"]
        # a `**/*.parquet` reader (DuckDB's glob, Spark) finds the same rows in the same schema
        files = sorted(root.glob("**/*.parquet"))
        globbed = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        pd.testing.assert_frame_equal(globbed, whole[columns].reset_index(drop=True))


def test_unreachable_server_is_one_clear_error_and_writes_nothing(trained, tmp_path):
    p = params_for(trained, "down", mlflow={"connect_retries": 1, "retry_backoff_s": 0.1})
    url = f"http://127.0.0.1:{closed_port()}"
    report = Path(p.paths.register_report) / "summary.json"
    report.unlink(missing_ok=True)
    with env_vars({"MLFLOW_TRACKING_URI": url}):
        with pytest.raises(tracking.TrackingError, match=r"after 2 attempts") as err:
            register.run(p)
        assert url in str(err.value)
        with pytest.raises(tracking.TrackingError):
            score.run(p, "synthetic:", *score.day_range("2026-01-05"), str(tmp_path / "out"), "models:/x@champion")
    assert not report.exists() and not (tmp_path / "out").exists()
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "score", "--date", "2026-01-05",
                          "--output", str(tmp_path / "out"), "-S", "mlflow.connect_retries=0"], cwd=REPO,
                         env={**os.environ, "MLFLOW_TRACKING_URI": url}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and url in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not postgres_available(), reason="no PostgreSQL on 127.0.0.1:5432")
def test_register_with_a_postgresql_backend(trained, tmp_path):
    with postgres_database() as db, mlflow_server(tmp_path / "pg-mlflow", backend_uri=db) as url, \
            env_vars({"MLFLOW_TRACKING_URI": url}):
        p = params_for(trained, "pg")
        report = register.run(p)
        assert report["serving"]["decision"] == "champion"
        champion = tracking.connect(p.mlflow).get_model_version_by_alias("serve-pg", "champion")
        assert champion.tags["kpiguard.detector"] == report["serving"]["detector"]
    import psycopg2

    with psycopg2.connect(host="127.0.0.1", user="postgres", dbname="postgres") as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (db.rsplit("/", 1)[1],))
        assert cur.fetchone()[0] == 0  # the test database is dropped
    assert np.isfinite(report["serving"]["candidate_value"])


EVIL_CODE = '''"""Not kpiguard's model code: it writes a marker file when it is run (by mlflow.pyfunc.load_model)."""
import os
import pathlib

import mlflow

from pipeline.serving.bundle import KpiguardModel

if os.environ.get("KPIGUARD_TEST_MARKER"):
    pathlib.Path(os.environ["KPIGUARD_TEST_MARKER"]).write_text("stored code ran")
mlflow.models.set_model(KpiguardModel())
'''


def test_scorer_and_gate_never_execute_code_stored_in_the_registry(trained, server, tmp_path, capsys):
    """#13.5: a version logged from other code is refused by name and rule, and its code never runs;
    a genuine version loads from its bundle alone and scores exactly as the pyfunc does."""
    import mlflow

    from pipeline import cli
    from pipeline.serving import bundle as serving
    from pipeline.serving import store as model_store

    p = params_for(trained, "safe")
    register.run(p)
    client = client_for(p)

    # the genuine champion: loaded without mlflow.pyfunc, same output as the pyfunc
    model, info = score.load_model(p, "models:/serve-safe@champion")
    assert isinstance(model, serving.BundleModel) and info["version"] == "1"
    from pipeline.data.sources import read_source

    rows = read_source("synthetic:", p, "2026-01-05", "2026-01-07")
    ours = serving.predict_with(model, rows)
    theirs = serving.predict_with(mlflow.pyfunc.load_model("models:/serve-safe@champion"), rows)
    pd.testing.assert_frame_equal(ours, theirs)

    # a tampered version: same bundle, different code file (which would write the marker if run)
    evil = tmp_path / "pyfunc_model.py"  # even under kpiguard's file name
    evil.write_text(EVIL_CODE)
    marker = tmp_path / "pwned.txt"
    evaluation = json.loads((Path(p.paths.evaluation) / "metrics.json").read_text())["detectors"]
    bundle = tmp_path / "bundle"
    serving.write_bundle(bundle, Path(p.paths.artifacts) / "robust_zscore", evaluation["robust_zscore"]["threshold"],
                         json.loads((Path(p.paths.evaluation) / "calibration" / "robust_zscore.json").read_text()))
    experiment = tracking.experiment_id(client, p.mlflow.experiment)
    with mlflow.start_run(experiment_id=experiment):
        logged = mlflow.pyfunc.log_model(name="model", python_model=str(evil), artifacts={"bundle": str(bundle)},
                                          signature=serving.signature())
    mlflow.register_model(logged.model_uri, "evil-model")
    client.set_registered_model_alias("evil-model", "champion", "1")

    with env_vars({"KPIGUARD_TEST_MARKER": str(marker)}):
        for uri in ("models:/evil-model@champion", "models:/evil-model/1"):
            with pytest.raises(tracking.TrackingError, match="model_code_digest") as err:
                score.load_model(p, uri)
            assert "'evil-model' version 1" in str(err.value)
        with pytest.raises(tracking.TrackingError, match="model_code_digest"):
            gate.Gate(client, p).validation_metric("evil-model", "1")
        code = cli.main(["score", "--date", "2026-01-05", "--model-uri", "models:/evil-model@champion",
                         "--output", str(tmp_path / "scores"), "--params", str(_params_file(p, tmp_path))])
        err_text = capsys.readouterr().err
        assert code == 2 and "model_code_digest" in err_text and "Traceback" not in err_text
    assert not marker.exists()  # the stored code never ran
    assert not (tmp_path / "scores").exists()
    assert model_store.CODE_FILE.name == "pyfunc_model.py"


def _params_file(p, tmp_path) -> Path:
    import yaml

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(p.as_dict()))
    return path


def test_a_run_shows_its_data_its_training_its_example_and_the_leaderboard_figure(trained, server, tmp_path):
    """What a person opening a run in the MLflow UI expects (issue 24): the experiment opens on its runs,
    the Datasets panel names each split with its DVC md5, the run spans the training, the model has an
    input example, and the gate quotes the leaderboard's figure. Evaluated here with point_f1, which
    tells these detectors apart on the small validation split (aiops_f1 is 1.0 for most)."""
    import shutil

    import mlflow
    from dvc_data.hashfile.hash import file_md5  # DVC's hash function, not ours
    from dvc_objects.fs.local import LocalFileSystem

    root = tmp_path / "lineage"
    shutil.copytree(trained, root)
    p = params_for(root, "lineage", evaluate={"champion_metric": "point_f1",
                                               "threshold": {"method": "best_f1", "scope": "global", "metric": "point_f1"}})
    evaluation = evaluate_stage.run(p)
    report = register.run(p)
    client = client_for(p)
    experiment = client.get_experiment_by_name(p.mlflow.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens on runs

    windows = Path(p.paths.windows)
    board = (Path(p.paths.evaluation) / "leaderboard.md").read_text().splitlines()
    for name in DETECTORS:
        run = client.get_run(report["detectors"][name]["run_id"])
        # one dataset per split: the source spec, the DVC md5 of the split's file, schema, rows and KPIs
        inputs = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i for i in run.inputs.dataset_inputs}
        assert set(inputs) == {"train", "validation", "test"}
        for split, context in (("train", "train"), ("val", "validation"), ("test", "test")):
            frame = pd.read_parquet(windows / f"{split}.parquet")
            dataset, tags = inputs[context].dataset, {t.key: t.value for t in inputs[context].tags}
            assert dataset.name == "synthetic:" and dataset.source_type == "local"
            assert dataset.digest == file_md5(str(windows / f"{split}.parquet"), LocalFileSystem())  # DVC's own hash
            assert json.loads(dataset.profile)["num_rows"] == len(frame)
            assert tags["kpis"] == str(frame["kpi_id"].nunique()) and tags["rows"] == str(len(frame))
            assert {c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]} == set(frame.columns)
        # the run spans the training: created at its start, ended at its end
        trained_report = json.loads((Path(p.paths.train_reports) / f"{name}.json").read_text())
        assert run.info.start_time == pd.Timestamp(trained_report["started_at"]).value // 1_000_000
        assert run.info.end_time - run.info.start_time >= trained_report["train_seconds"] * 1000
        assert run.info.status == "FINISHED"
        # the logged model has an input example in the signature's input form
        model_dir = mlflow.artifacts.download_artifacts(run.data.tags["kpiguard.model_uri"], dst_path=str(tmp_path / name))
        example = mlflow.models.Model.load(model_dir).load_input_example(model_dir)
        assert list(example.columns) == ["kpi_id", "timestamp", "value"] and 0 < len(example) <= 288
        # the gate's description quotes the leaderboard's figure for this very version
        version = client.get_model_version(f"lineage-{name}", report["detectors"][name]["version"])
        champion = evaluation["detectors"][name]["champion_metric"]
        assert float(version.tags["kpiguard.gate.candidate_value"]) == champion["value"]
        row = next(line for line in board if line.startswith(f"| {name} |")).split(" | ")
        cell = row[1] if champion["basis"] == "folds" else row[5]
        assert cell == selection.figure(champion["value"])
        basis = selection.figure_basis(champion)  # "mean of 3 folds", "mean of 2 of 3 folds" or "one split", as the gate words it
        quoted = selection.figure_with_interval(champion)  # the figure and its bootstrap interval
        assert quoted.startswith(cell)
        assert (f"point_f1 on the validation split ({basis}, {evaluation['events']['val']} labelled events): "
                f"{quoted} -> champion") in version.description
    best = evaluation["best_on_val"]
    serving = client.get_model_version("serve-lineage", report["serving"]["version"])
    assert serving.tags["kpiguard.gate.candidate_value"] == str(evaluation["detectors"][best]["champion_metric"]["value"])


def test_a_copied_local_store_still_finds_its_artifacts(trained, tmp_path, monkeypatch):
    """The local store (sqlite:///mlflow.db, ./mlartifacts) records artifact locations relative to the
    working directory (pipeline/serving/artifacts.py): a checkout's store copied elsewhere, the original
    gone, still lists a run's artifacts and loads the champion, by kpiguard's loader and by MLflow's."""
    import shutil

    import mlflow

    from pipeline.serving import store

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the local default store, no server
    p = params_for(trained, "copied")
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    monkeypatch.chdir(original)
    report = register.run(p)
    client = client_for(p)
    location = client.get_experiment_by_name(p.mlflow.experiment).artifact_location
    assert location == "kpiguard-local:mlartifacts"
    run_id = report["detectors"]["robust_zscore"]["run_id"]
    assert client.get_run(run_id).info.artifact_uri.startswith("kpiguard-local:mlartifacts/")
    shutil.copytree(original, copy)
    shutil.rmtree(original)
    monkeypatch.chdir(copy)
    client = client_for(p)
    assert {"threshold.json", "train_report.json"} <= {a.path for a in client.list_artifacts(run_id)}
    bundle = store.load_version(client, "serve-copied", "1").bundle
    assert bundle.meta["detector"] == report["serving"]["detector"]
    model = mlflow.pyfunc.load_model("models:/serve-copied@champion")
    assert model.metadata.get_input_schema().input_names() == ["kpi_id", "timestamp", "value"]


# Runs the CLI with a file-size limit that starts when the partitions are written (the model's download
# before it is not limited): writes then fail in the kernel with EFBIG, as they fail with ENOSPC on a full
# disk, with no file system to fill.
LIMITED_CLI = """
import resource, signal, sys
from pipeline import cli
from pipeline.batch import score

def limited(write_days):
    def write(*args, **kwargs):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
        return write_days(*args, **kwargs)
    return write

score.write_days = limited(score.write_days)
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_write_failure_while_scoring_is_one_clear_error_and_keeps_the_partition(trained, server, tmp_path):
    """#25.7: the partition rewrite fails half-way (no space): one paragraph, exit 2, the old partition intact."""
    p = params_for(trained, "fulldisk")
    raw = p.as_dict()
    raw["train"]["detectors"] = ["robust_zscore"]
    p = parse_params(raw)
    register.run(p)
    model = p.mlflow.detector_model_prefix + "robust_zscore"  # the detector's own model: its first version is champion
    params_file, output = _params_file(p, tmp_path), tmp_path / "scores"
    argv = ["score", "--date", "2026-01-05", "--params", str(params_file), "--output", str(output),
            "--model-uri", f"models:/{model}@champion"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": server}
    first = subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    partition = output / "date=2026-01-05"
    before = {f.name: f.read_bytes() for f in partition.iterdir()}
    assert len(before["scores.parquet"]) > 4096  # the limit bites

    second = subprocess.run([sys.executable, "-c", LIMITED_CLI, *argv], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    text = second.stdout + second.stderr
    assert second.returncode == 2, text[-3000:]
    assert "Traceback" not in text and "output_writable" in text and "File too large" in text
    assert str(partition) in text and "unchanged" in text
    assert {f.name: f.read_bytes() for f in partition.iterdir()} == before
    assert [f.name for f in output.iterdir() if ".tmp-" in f.name] == []  # the half-written copy was removed
