"""register stage: track every trained detector in MLflow and keep the champions.

For each detector that trained and evaluated, one MLflow run (experiment ``mlflow.experiment``) with
its config, a hash of params, the git commit and the DVC hash of its data as params; its per-epoch
losses and final validation / test metrics as metrics; and the servable pyfunc bundle
(:mod:`pipeline.serving`), threshold, training report and plots as artifacts. A bundle that is
already tracked (same digest) is not logged again, so rerunning the stage changes nothing.

Registry scheme
---------------
- ``kpiguard-<detector>``: every new bundle of that detector is a new version.
- ``kpiguard`` (``mlflow.serving_model``): what is served. Its versions may wrap any detector: each is
  the validation-best detector of one pipeline run, registered from the same logged model, with
  tags ``kpiguard.detector``, ``kpiguard.detector_model`` and ``kpiguard.detector_version``.
- Aliases on every model: ``champion`` (served) and ``challenger`` (the latest that did not pass).

The gate
--------
A new version and the current champion are both loaded from the registry, scored on the current
validation split, thresholded by the same rule (``evaluate.threshold``) and compared on
``evaluate.champion_metric``, measured as the evaluate stage picks its champion: the mean over
``evaluate.champion_folds`` rolling-origin validation folds (:func:`pipeline.evaluate.fold_metrics`).
The serving candidate is the evaluate report's ``best_on_val``, picked the same way. The new version becomes champion only if it is better by more than
``mlflow.min_improvement``; otherwise it becomes challenger. The first version becomes champion.
Both figures and the decision go into the version's tags and description.

Every change of champion appends to the model's ``kpiguard.champion_history`` tag and records
``kpiguard.previous_champion``, so :func:`rollback` can go back one step at a time.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from models.frame import KPI_ID, LABEL, MISSING, TIMESTAMP
from pipeline import metrics as M
from pipeline import tracking
from pipeline.contract import DataError
from pipeline.evaluate import champion_summary, fold_metrics, load_splits
from pipeline.outputs import write_json_atomic
from pipeline.params import Params
from pipeline.serving import SCORE, bundle_digest, log_bundle, observed_rows, predict_with, write_bundle
from pipeline.thresholds import make_threshold

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"
TAG = "kpiguard."
HISTORY_TAG, PREVIOUS_TAG = TAG + "champion_history", TAG + "previous_champion"
HISTORY_KEEP = 100


class RegistryError(DataError):
    """A registry operation that cannot be done as asked (no champion, unknown version, ...)."""

    def __init__(self, model: str, rule: str, detail: str):
        super().__init__(f"registered model '{model}'", rule, detail)


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
                            {"params_digest": params.digest(), "clip_sigma": params.windows.clip_sigma})
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
                **tracking.flat("calibration", dict(params.evaluate.calibration)),
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

    pr = Path(params.paths.plots) / "pr" / f"{name}.csv"
    if pr.exists():
        mlflow.log_artifact(str(pr), "plots")
    scores = Path(params.paths.plots) / "scores"
    if scores.is_dir():
        mlflow.log_artifacts(str(scores), "plots/scores")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


# -- registry ----------------------------------------------------------------------------------
def register_version(client, model: str, model_uri: str, run_id: str, tags: dict, role: str):
    """The version of ``model`` made from ``run_id``'s model, creating it if needed: (version, is_new)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model)
    except MlflowException:
        client.create_registered_model(model, description=f"kpiguard: {role}")
    existing = client.search_model_versions(f"name = '{model}' and run_id = '{run_id}'")
    if existing:
        return max(existing, key=lambda v: int(v.version)), False
    # MLflow prints "Registered model ... already exists" and "Created version N" to stderr for each one;
    # the register stage's summary says what was created, once.
    with contextlib.redirect_stderr(io.StringIO()):
        return mlflow.register_model(model_uri, model, tags=tags), True


def alias_version(client, model: str, alias: str):
    """The ModelVersion that holds ``alias``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model, alias)
    except MlflowException:
        return None


def champion_version(client, model: str):
    return alias_version(client, model, CHAMPION)


def set_champion(client, model: str, version: str, reason: str) -> dict:
    """Point ``champion`` at ``version``, recording the previous champion and the history."""
    version = str(version)
    client.get_model_version(model, version)  # fails clearly on an unknown version
    previous = champion_version(client, model)
    previous = str(previous.version) if previous is not None else None
    client.set_registered_model_alias(model, CHAMPION, version)
    history = [v for v in _history(client, model) if v != version] + [version]
    client.set_registered_model_tag(model, HISTORY_TAG, json.dumps(history[-HISTORY_KEEP:]))
    client.set_registered_model_tag(model, PREVIOUS_TAG, previous or "")
    client.set_model_version_tag(model, version, PREVIOUS_TAG, previous or "")
    client.set_model_version_tag(model, version, TAG + "promoted", f"{_now()}: {reason}")
    challenger = alias_version(client, model, CHALLENGER)
    if challenger is not None and str(challenger.version) == version:
        client.delete_registered_model_alias(model, CHALLENGER)
    return {"model": model, "champion": version, "previous_champion": previous, "reason": reason}


def promote(client, model: str, version: str) -> dict:
    _require_model(client, model)
    try:
        client.get_model_version(model, str(version))
    except Exception:
        raise RegistryError(model, "version_exists", f"there is no version {version}") from None
    return set_champion(client, model, str(version), "manual promote")


def rollback(client, model: str) -> dict:
    """Move ``champion`` back to the champion before the current one."""
    _require_model(client, model)
    current = champion_version(client, model)
    if current is None:
        raise RegistryError(model, "has_champion", "no version holds the 'champion' alias; nothing to roll back")
    history, current_version = _history(client, model), str(current.version)
    earlier = [v for v in history if v != current_version]
    if not earlier:
        tagged = (current.tags or {}).get(PREVIOUS_TAG)
        if not tagged:
            raise RegistryError(model, "has_previous_champion",
                                f"version {current_version} is the first champion on record; nothing to roll back to")
        earlier = [tagged]
    target = earlier[-1]
    client.set_registered_model_alias(model, CHAMPION, target)
    # Cut the history back to the target, so a second rollback goes one further step back.
    kept = history[:len(history) - history[::-1].index(target)] if target in history else [target]
    client.set_registered_model_tag(model, HISTORY_TAG, json.dumps(kept))
    client.set_registered_model_tag(model, PREVIOUS_TAG, kept[-2] if len(kept) > 1 else "")
    client.set_model_version_tag(model, current_version, TAG + "rolled_back", f"{_now()}: champion -> {target}")
    return {"model": model, "champion": target, "rolled_back_from": current_version}


def _require_model(client, model: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(model)
    except MlflowException:
        raise RegistryError(model, "model_exists", "no such registered model; run the pipeline first") from None


def _history(client, model: str) -> list[str]:
    tags = client.get_registered_model(model).tags or {}
    try:
        return [str(v) for v in json.loads(tags.get(HISTORY_TAG) or "[]")]
    except json.JSONDecodeError:
        return []


def _now() -> str:
    return pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")


# -- the gate ----------------------------------------------------------------------------------
class Gate:
    """Scores registered versions on the current validation split and applies the promotion rule."""

    def __init__(self, client, params: Params):
        self.client, self.params = client, params
        self.metric = params.evaluate.champion_metric
        self.margin = params.mlflow.min_improvement
        self._data = None
        self._cache: dict[str, float | None] = {}

    def data(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(model input: observed train + val rows, the validation rows with labels). The interpolated
        rows stay in the second, masked as the evaluate stage masks them, so the folds are the same."""
        if self._data is None:
            full = load_splits(Path(self.params.paths.windows))
            history = full[full["split"].isin(["train", "val"])].drop(columns="split")
            self._data = observed_rows(history), full[full["split"] == "val"]
        return self._data

    def validation_metric(self, model: str, version: str) -> float | None:
        """The champion metric of one registered version on the current validation split.

        The version is loaded by :func:`pipeline.model_store.load_version`, which never executes code
        stored in the registry (and refuses a version whose code is not kpiguard's).
        """
        from pipeline import model_store

        run_id = self.client.get_model_version(model, version).run_id
        if run_id not in self._cache:
            rows, val = self.data()
            if val.empty or LABEL not in val.columns:
                self._cache[run_id] = None
            else:
                scored = predict_with(model_store.load_version(self.client, model, version), rows)
                self._cache[run_id] = self._metric_on(val, scored)
        return self._cache[run_id]

    def _metric_on(self, val: pd.DataFrame, scored: pd.DataFrame) -> float | None:
        keys = [KPI_ID, TIMESTAMP]
        left = val[[*keys, LABEL, MISSING]].assign(**{KPI_ID: val[KPI_ID].astype(str)})
        joined = left.merge(scored[[*keys, SCORE]].assign(**{KPI_ID: scored[KPI_ID].astype(str)}), on=keys, how="left")
        scores = joined[SCORE].to_numpy(dtype=np.float64)  # NaN: an interpolated row, which no metric counts
        scores = np.where(np.isnan(scores), np.nanmin(scores) if np.isfinite(scores).any() else 0.0, scores)
        labels, ids, missing = joined[LABEL].to_numpy(), joined[KPI_ID].to_numpy(), joined[MISSING].to_numpy(dtype=bool)
        ev = self.params.evaluate
        threshold = make_threshold(dict(ev.threshold)).fit(scores, labels=labels, missing=missing, kpi_ids=ids)
        spec = M.METRICS[self.metric]
        values = scores if spec.needs == "scores" else threshold.apply(scores, ids)
        single = spec.compute(labels, values, missing, ids, delay=ev.delay, vus_window=None, probation=ev.nab_probation)
        folds = (fold_metrics(joined, scores, self.metric, dict(ev.threshold), ev.champion_folds, ev.delay,
                              ev.nab_probation) if ev.champion_folds > 1 else [])
        return champion_summary(self.metric, single, folds)["value"]

    def decide(self, model: str, version) -> dict:
        """Champion or challenger for a newly registered ``version``; recorded on the version."""
        new = str(version.version)
        candidate = self.validation_metric(model, new)
        current = champion_version(self.client, model)
        out = {"metric": self.metric, "candidate_value": candidate, "min_improvement": self.margin,
               "champion_version": str(current.version) if current else None, "champion_value": None}
        if current is None:
            out["decision"], why = CHAMPION, "the first version registered"
        else:
            out["champion_value"] = champion = self.validation_metric(model, str(current.version))
            if candidate is None or champion is None:
                out["decision"], why = CHALLENGER, "the metric is undefined on this validation data; promote by hand"
            elif candidate > champion + self.margin:
                out["decision"], why = CHAMPION, f"beats v{current.version} by more than {self.margin}"
            else:
                out["decision"], why = CHALLENGER, f"does not beat v{current.version} by more than {self.margin}"
        out["reason"] = why
        self._record(model, new, out)
        if out["decision"] == CHAMPION:
            set_champion(self.client, model, new, f"gate: {why}")
        else:
            self.client.set_registered_model_alias(model, CHALLENGER, new)
        return out

    def _record(self, model: str, version: str, out: dict) -> None:
        tags = {"gate.metric": out["metric"], "gate.candidate_value": out["candidate_value"],
                "gate.champion_version": out["champion_version"], "gate.champion_value": out["champion_value"],
                "gate.min_improvement": out["min_improvement"], "gate.decision": out["decision"],
                "gate.reason": out["reason"]}
        for key, value in tags.items():
            self.client.set_model_version_tag(model, version, TAG + key, "" if value is None else str(value))
        self.client.update_model_version(model, version, description=(
            f"Gate ({_now()}): {out['metric']} on the validation split: this version {_fmt(out['candidate_value'])}, "
            f"champion v{out['champion_version']} {_fmt(out['champion_value'])} "
            f"(min improvement {out['min_improvement']}) -> {out['decision']}: {out['reason']}."
            if out["champion_version"] else
            f"Gate ({_now()}): {out['metric']} on the validation split: {_fmt(out['candidate_value'])} -> "
            f"{out['decision']}: {out['reason']}."))


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"
