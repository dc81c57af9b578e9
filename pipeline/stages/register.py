"""register stage: track every trained detector in MLflow and keep the champions.

For each detector that trained and evaluated, one MLflow run (experiment ``mlflow.experiment``) with
its config, a hash of params, the git commit and the DVC hash of its data as params; its per-epoch
losses and final validation / test metrics as metrics; and the servable pyfunc bundle
(:mod:`pipeline.serving.bundle`), threshold, calibration, training report and plots as artifacts. A
bundle that is already tracked (same digest) is not logged again, so rerunning the stage changes nothing.

Each new bundle becomes a version of ``kpiguard-<detector>``, and the evaluate report's
``best_on_val`` a version of the served model; the gate (:mod:`pipeline.serving.gate`) decides which
becomes champion. The registry scheme: :mod:`pipeline.serving.registry`.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.io.outputs import write_json_atomic
from pipeline.params import Params
from pipeline.serving import tracking
from pipeline.serving.bundle import log_bundle, write_bundle
from pipeline.serving.gate import Gate
from pipeline.serving.registry import TAG, register_version

log = logging.getLogger(__name__)


# -- the stage ---------------------------------------------------------------------------------
def run(params: Params) -> dict:
    client = tracking.connect(params.mlflow)
    evaluation = json.loads((Path(params.paths.evaluation) / "metrics.json").read_text())
    experiment = tracking.experiment_id(client, params.mlflow.experiment)
    gate = Gate(client, params)
    report: dict = {"tracking_uri": tracking.tracking_uri(), "metric": gate.metric, "detectors": {}}
    logged = {}
    for name in params.train.detectors:
        result = evaluation["detectors"].get(name, {})
        if result.get("status") != "ok":
            report["detectors"][name] = {"status": result.get("status", "missing"), "reason": result.get("reason")}
            continue
        try:
            run_id, model_uri, reused = log_detector_run(client, experiment, params, name, result)
            model = params.mlflow.detector_model_prefix + name
            version, new = register_version(client, model, model_uri, run_id, {TAG + "detector": name},
                                            role=f"every tracked version of the {name} detector")
            decision = gate.decide(model, version) if new else {"decision": "unchanged"}
        except tracking.TrackingError:
            raise
        except Exception as exc:  # one detector's failure doesn't stop the others
            log.exception("registering %s failed", name)
            report["detectors"][name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            continue
        logged[name] = (run_id, model_uri, version)
        report["detectors"][name] = {"status": "ok", "run_id": run_id, "reused_run": reused,
                                     "model": model, "version": str(version.version), **decision}
    best = evaluation.get("best_on_val")
    report["serving"] = register_serving(client, params, gate, best, logged.get(best))
    write_json_atomic(Path(params.paths.register_report) / "summary.json", report)
    return report


def register_serving(client, params: Params, gate: "Gate", best: str | None, logged) -> dict:
    """Offer the validation-best detector of this run to the serving model."""
    serving = params.mlflow.serving_model
    if logged is None:
        return {"model": serving, "decision": "none", "reason": f"no registered candidate (best on validation: {best})"}
    run_id, model_uri, detector_version = logged
    version, new = register_version(client, serving, model_uri, run_id, {
        TAG + "detector": best, TAG + "detector_model": detector_version.name,
        TAG + "detector_version": str(detector_version.version)},
        role="the served model; each version wraps the validation-best detector of one pipeline run")
    decision = gate.decide(serving, version) if new else {"decision": "unchanged"}
    return {"model": serving, "version": str(version.version), "detector": best, **decision}


# -- tracking ----------------------------------------------------------------------------------
def log_detector_run(client, experiment: str, params: Params, name: str, evaluation: dict):
    """Log one detector's run (or find the run that already holds this exact bundle).

    Returns (run_id, model_uri, reused).
    """
    import mlflow

    artifacts = Path(params.paths.artifacts) / name
    with tempfile.TemporaryDirectory(prefix=f"kpiguard-bundle-{name}-") as tmp:
        bundle = Path(tmp) / "bundle"
        calibration = json.loads((Path(params.paths.evaluation) / "calibration" / f"{name}.json").read_text())
        meta = write_bundle(bundle, artifacts, evaluation["threshold"], calibration,
                            params.windows.clip_sigma, {"params_digest": params.digest()})
        found = client.search_runs(
            [experiment], max_results=1,
            filter_string=f"tags.`{TAG}bundle_digest` = '{meta['digest']}' and tags.`{TAG}detector` = '{name}' "
                          f"and attributes.status = 'FINISHED'")
        if found and found[0].data.tags.get(TAG + "model_uri"):
            return found[0].info.run_id, found[0].data.tags[TAG + "model_uri"], True

        train_report = _read_json(Path(params.paths.train_reports) / f"{name}.json")
        commit = tracking.git_commit() or "unknown"
        with mlflow.start_run(experiment_id=experiment, run_name=name) as active:
            run_id = active.info.run_id
            mlflow.set_tags({TAG + "detector": name, TAG + "bundle_digest": meta["digest"],
                             "mlflow.source.git.commit": commit})
            mlflow.log_params({
                **tracking.flat("detector", train_report.get("config") or {}),
                **tracking.flat("train", params.train.model_dump(exclude={"detectors"})),
                **tracking.flat("threshold", dict(params.evaluate.threshold)),
                **tracking.flat("calibration", params.evaluate.calibration_for(name)),  # what evaluate calibrated with
                "champion_metric": params.evaluate.champion_metric, "champion_folds": params.evaluate.champion_folds,
                "detector_name": name, "params_digest": params.digest(),
                "git_commit": commit,
                "data_dvc_md5": tracking.data_version(params) or "unknown (no dvc.lock)"})
            _log_history(client, run_id, train_report.get("history") or [])
            mlflow.log_metrics(_final_metrics(evaluation, train_report))
            info = log_bundle(bundle)
            mlflow.log_dict(evaluation["threshold"], "threshold.json")
            mlflow.log_dict(calibration, "calibration.json")
            mlflow.log_dict(train_report, "train_report.json")
            _log_plots(params, name)
            mlflow.set_tag(TAG + "model_uri", info.model_uri)
        return run_id, info.model_uri, False


def _log_history(client, run_id: str, history: list[dict]) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    rows = [Metric(key, float(h[key]), now, int(h.get("epoch", i)))
            for i, h in enumerate(history) for key in ("train_loss", "val_loss")
            if isinstance(h.get(key), (int, float)) and np.isfinite(h[key])]
    for start in range(0, len(rows), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=rows[start:start + 1000])


def _final_metrics(evaluation: dict, train_report: dict) -> dict[str, float]:
    out = {f"{split}_{k}": float(v) for split in ("val", "test") for k, v in (evaluation.get(split) or {}).items()
           if isinstance(v, (int, float)) and np.isfinite(v)}
    champion = evaluation.get("champion_metric") or {}  # the champion metric across validation folds
    for key, name in (("fold_mean", "val_champion_fold_mean"), ("fold_min", "val_champion_fold_min"),
                      ("fold_std", "val_champion_fold_std"), ("val_test_gap", "val_test_gap")):
        if isinstance(champion.get(key), (int, float)) and np.isfinite(champion[key]):
            out[name] = float(champion[key])
    for key in ("train_seconds", "best_val_loss"):
        if isinstance(train_report.get(key), (int, float)):
            out[key] = float(train_report[key])
    return out


def _log_plots(params: Params, name: str) -> None:
    import mlflow
    import pandas as pd

    pr = Path(params.paths.plots) / "pr.csv"
    if pr.exists():  # every detector's test curve (one DVC plot): this run logs its own (no rows: no positives)
        curves = pd.read_csv(pr)
        mlflow.log_text(curves[curves["detector"] == name].drop(columns="detector").to_csv(index=False), "plots/pr.csv")
    scores = Path(params.paths.plots) / "scores"
    if scores.is_dir():
        mlflow.log_artifacts(str(scores), "plots/scores")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}
