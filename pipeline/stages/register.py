"""register stage: track every trained detector in MLflow and keep the champions.

For each detector that trained and evaluated, one MLflow run (experiment ``mlflow.experiment``) with
its config, a hash of params, the git commit and the DVC hash of its data as params; its per-epoch
losses and final validation / test metrics as metrics; one MLflow dataset per split (the source spec,
the DVC md5 of the split's file, schema, rows, KPIs); and the servable pyfunc bundle
(:mod:`pipeline.serving.bundle`, with an input example), threshold, calibration, training report and
plots as artifacts. The run carries the training's start and end (from the train report), not the few
seconds this stage spends logging it. A bundle that is already tracked (same digest) is not logged
again, so rerunning the stage changes nothing.

Each new bundle becomes a version of ``kpiguard-<detector>``, and the evaluate report's champion
(``best_on_val``: the default detector on the label-free path, :func:`pipeline.eval.selection.choose_champion`)
a version of the served model; the gate (:mod:`pipeline.serving.gate`) decides which becomes champion. The registry scheme: :mod:`pipeline.serving.registry`.
"""
from __future__ import annotations

import functools
import json
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from models.frame import KPI_ID, LABEL, TIMESTAMP
from pipeline.io.outputs import write_json_atomic
from pipeline.params import Params
from pipeline.serving import tracking
from pipeline.serving.bundle import data_range, log_bundle, observed_rows, to_model_input, write_bundle
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
            version, new = register_version(client, model, model_uri, run_id,
                                            {TAG + "detector": name, **labels_tags(params)},
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
    """Offer this run's champion (the evaluate report's ``best_on_val``) to the serving model."""
    serving = params.mlflow.serving_model
    if logged is None:
        return {"model": serving, "decision": "none", "reason": f"no registered candidate (evaluate's champion: {best})"}
    run_id, model_uri, detector_version = logged
    version, new = register_version(client, serving, model_uri, run_id, {
        TAG + "detector": best, TAG + "detector_model": detector_version.name,
        TAG + "detector_version": str(detector_version.version), **labels_tags(params)},
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
        meta = write_bundle(bundle, artifacts, evaluation["threshold"], calibration, params.windows.clip_sigma,
                            {"params_digest": params.digest(), "training_range": training_range(params)})
        found = client.search_runs(
            [experiment], max_results=1,
            filter_string=f"tags.`{TAG}bundle_digest` = '{meta['digest']}' and tags.`{TAG}detector` = '{name}' "
                          f"and attributes.status = 'FINISHED'")
        if found and found[0].data.tags.get(TAG + "model_uri"):
            return found[0].info.run_id, found[0].data.tags[TAG + "model_uri"], True

        train_report = _read_json(Path(params.paths.train_reports) / f"{name}.json")
        commit = tracking.git_commit() or "unknown"
        span = training_span(train_report)
        tags = {TAG + "detector": name, TAG + "bundle_digest": meta["digest"], "mlflow.source.git.commit": commit}
        # Created with the training's start (from the train report), ended with its end below: the run's
        # start and duration in the UI are the training's, not this stage's few seconds of logging.
        created = client.create_run(experiment, start_time=span[0] if span else None, run_name=name,
                                    tags=resolve_tags(tags))
        run_id = created.info.run_id
        splits = split_inputs(params)
        # Resuming a run by id fails when the process's active experiment (mlflow.set_experiment, by whoever
        # called it before) is another one: this stage logs to its own.
        mlflow.set_experiment(experiment_id=experiment)
        with mlflow.start_run(run_id=run_id):
            mlflow.log_params({
                **tracking.flat("detector", train_report.get("config") or {}),
                **tracking.flat("train", params.train.model_dump(exclude={"detectors"})),
                # the rule evaluate fitted (the alarm budget on the label-free path), not only the configured one
                **tracking.flat("threshold", {k: v for k, v in evaluation["threshold"].items()
                                              if k not in ("global_value", "per_kpi", "fit_info")}),
                **tracking.flat("calibration", params.evaluate.calibration_for(name)),  # what evaluate calibrated with
                "champion_metric": params.evaluate.champion_metric, "champion_folds": params.evaluate.champion_folds,
                "detector_name": name, "params_digest": params.digest(),
                "git_commit": commit,
                "data_dvc_md5": tracking.data_version(params) or "unknown (no dvc.lock)",
                **{k.removeprefix(TAG): v for k, v in labels_tags(params).items()}})
            log_datasets(splits)
            _log_history(client, run_id, train_report.get("history") or [], span[1] if span else None)
            mlflow.log_metrics(_final_metrics(evaluation, train_report))
            info = log_bundle(bundle, input_example=input_example(splits))
            mlflow.log_dict(evaluation["threshold"], "threshold.json")
            mlflow.log_dict(calibration, "calibration.json")
            mlflow.log_dict(train_report, "train_report.json")
            _log_plots(params, name)
            mlflow.set_tag(TAG + "model_uri", info.model_uri)
        if span:
            client.set_terminated(run_id, "FINISHED", end_time=span[1])
        return run_id, info.model_uri, False


def labels_tags(params: Params) -> dict[str, str]:
    """The reviewed label set the training data carried (ingest's manifest): its digest and whether it was
    merged, so a model version names the verdicts it learnt from."""
    manifest = _read_json(Path(params.paths.raw) / "manifest.json")
    reviews = (manifest.get("train") or {}).get("reviews") or {}
    if "digest" not in reviews:
        return {TAG + "labels_digest": "none", TAG + "labels_applied": "false"}
    return {TAG + "labels_digest": reviews["digest"], TAG + "labels_applied": str(bool(reviews["applied"])).lower()}


def training_range(params: Params) -> dict[str, str] | None:
    """First and last timestamp of the windows stage's train and validation splits: the data the detector,
    its calibration and its threshold were fitted on (the scorer warns about days far outside it)."""
    windows = Path(params.paths.windows)
    stamps = [pd.read_parquet(windows / f"{split}.parquet", columns=[TIMESTAMP])[TIMESTAMP] for split in ("train", "val")]
    return data_range(pd.concat(stamps, ignore_index=True))


def resolve_tags(tags: dict) -> dict:
    """``tags`` plus the source and user tags ``mlflow.start_run`` would have set on a run it created."""
    from mlflow.tracking.context import registry as context

    return context.resolve_tags(tags)


def training_span(train_report: dict) -> tuple[int, int] | None:
    """(start, end) of the detector's fit in epoch milliseconds, from its train report; None for a report
    written before the train stage recorded them. The end is at least ``train_seconds`` after the start
    (the report's times are to the millisecond, its seconds rounded)."""
    try:
        start = pd.Timestamp(train_report["started_at"])
        end = pd.Timestamp(train_report["finished_at"])
    except (KeyError, TypeError, ValueError):
        return None
    start_ms = int(start.value // 1_000_000)
    end_ms = max(int(end.value // 1_000_000), start_ms + math.ceil(float(train_report.get("train_seconds") or 0) * 1000))
    return start_ms, end_ms


# -- datasets: what each run trained, was thresholded and was tested on --------------------------
SPLIT_CONTEXTS = {"train": "train", "val": "validation", "test": "test"}
EXAMPLE_ROWS = 288  # the input example: a day of 5-minute points of one KPI


def split_inputs(params: Params) -> dict[str, dict]:
    """Each split of the windows stage: its frame, file, DVC md5 and the source spec it came from."""
    windows = Path(params.paths.windows)
    specs = {"train": params.data.train, "val": params.data.train, "test": params.data.test or params.data.train}
    out = {}
    for split, spec in specs.items():
        path = windows / f"{split}.parquet"
        out[split] = {"frame": _read_split(str(path), path.stat().st_mtime_ns), "path": path, "spec": spec,
                      "md5": tracking.file_md5(path)}
    return out


@functools.lru_cache(maxsize=3)
def _read_split(path: str, mtime_ns: int) -> pd.DataFrame:  # mtime: a rewritten split is read again
    return pd.read_parquet(path)


def log_datasets(splits: dict[str, dict]) -> None:
    """One MLflow dataset per split in the active run (its Datasets panel): name = the source spec,
    digest = the DVC md5 of the split's file, the schema and the row count (profile), the KPI count
    (a tag), context train / validation / test."""
    import warnings

    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    datasets, contexts, tags = [], [], []
    for split, part in splits.items():
        frame = part["frame"]
        with warnings.catch_warnings():  # a local path fits MLflow's "" and "file" local sources alike
            warnings.filterwarnings("ignore", message=".*can be interpreted in multiple ways", category=UserWarning)
            source = resolve_dataset_source(str(part["path"]))
        datasets.append(mlflow.data.from_pandas(frame, source=source, name=part["spec"], digest=part["md5"],
                                                targets=LABEL if LABEL in frame.columns else None))
        contexts.append(SPLIT_CONTEXTS[split])
        tags.append({"kpis": str(frame[KPI_ID].nunique()), "rows": str(len(frame)), "split": split,
                     "dvc_md5": part["md5"]})
    mlflow.log_inputs(datasets=datasets, contexts=contexts, tags_list=tags)


def input_example(splits: dict[str, dict]) -> pd.DataFrame | None:
    """The model's input example: the last observed validation (else train) rows of one KPI, raw."""
    for split in ("val", "train"):
        frame = splits[split]["frame"]
        if len(frame):
            first = frame[frame[KPI_ID] == frame[KPI_ID].iloc[0]]
            return to_model_input(observed_rows(first).tail(EXAMPLE_ROWS).reset_index(drop=True))
    return None


def _log_history(client, run_id: str, history: list[dict], at_ms: int | None = None) -> None:
    """Per-epoch losses with the epoch as step, time-stamped at the end of training when it is known."""
    from mlflow.entities import Metric

    now = at_ms or int(time.time() * 1000)
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
    for name, value in zip(("val_champion_low", "val_champion_high"), champion.get("interval") or ()):
        out[name] = float(value)  # its bootstrap interval over the validation events
    for split, value in (evaluation.get("alarms") or {}).items():
        if split in ("val", "test") and isinstance(value, (int, float)) and np.isfinite(value):
            out[f"{split}_alarms_per_kpi_day"] = float(value)
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
