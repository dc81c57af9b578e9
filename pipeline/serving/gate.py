"""The champion gate: does a newly registered version replace the champion?

A new version and the current champion are both loaded from the registry (by
:func:`pipeline.serving.store.load_version`, which never runs code stored there), scored on the current
validation split and measured by the champion rule (:func:`pipeline.eval.selection.champion_metric`),
the same function the evaluate stage ranks detectors with: the mean over ``evaluate.champion_folds``
rolling-origin validation folds, thresholded by ``evaluate.threshold``. The new version becomes champion
only if it is better by more than ``mlflow.min_improvement``; otherwise it becomes challenger. The first
version becomes champion. Both figures and the decision go into the version's tags and description.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from models.frame import KPI_ID, LABEL, MISSING, TIMESTAMP
from pipeline.data.prep import load_splits
from pipeline.eval.selection import champion_metric
from pipeline.params import Params
from pipeline.serving.bundle import SCORE, observed_rows, predict_with
from pipeline.serving.registry import CHALLENGER, CHAMPION, TAG, champion_version, set_champion, utc_now


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

        The version is loaded by :func:`pipeline.serving.store.load_version`, which never executes code
        stored in the registry (and refuses a version whose code is not kpiguard's).
        """
        from pipeline.serving import store

        run_id = self.client.get_model_version(model, version).run_id
        if run_id not in self._cache:
            rows, val = self.data()
            if val.empty or LABEL not in val.columns:
                self._cache[run_id] = None
            else:
                scored = predict_with(store.load_version(self.client, model, version), rows)
                self._cache[run_id] = self._metric_on(val, scored)
        return self._cache[run_id]

    def _metric_on(self, val: pd.DataFrame, scored: pd.DataFrame) -> float | None:
        keys = [KPI_ID, TIMESTAMP]
        left = val[[*keys, LABEL, MISSING]].assign(**{KPI_ID: val[KPI_ID].astype(str)})
        joined = left.merge(scored[[*keys, SCORE]].assign(**{KPI_ID: scored[KPI_ID].astype(str)}), on=keys, how="left")
        scores = joined[SCORE].to_numpy(dtype=np.float64)  # NaN: an interpolated row, which no metric counts
        scores = np.where(np.isnan(scores), np.nanmin(scores) if np.isfinite(scores).any() else 0.0, scores)
        return champion_metric(joined, scores, self.params.evaluate)["value"]

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
            f"Gate ({utc_now()}): {out['metric']} on the validation split: this version {_fmt(out['candidate_value'])}, "
            f"champion v{out['champion_version']} {_fmt(out['champion_value'])} "
            f"(min improvement {out['min_improvement']}) -> {out['decision']}: {out['reason']}."
            if out["champion_version"] else
            f"Gate ({utc_now()}): {out['metric']} on the validation split: {_fmt(out['candidate_value'])} -> "
            f"{out['decision']}: {out['reason']}."))


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"
