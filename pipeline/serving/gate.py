"""The champion gate: does a newly registered version replace the champion?

A new version and the current champion are both loaded from the registry (by
:func:`pipeline.serving.store.load_version`, which never runs code stored there), scored as the evaluate
stage scores a detector (the windows stage's whole prepared series, once, with the version's own
normalisation and calibration) and measured on its validation rows by the champion rule
(:func:`pipeline.eval.selection.champion_metric`), the same function the evaluate stage ranks detectors
with: the mean over ``evaluate.champion_folds`` rolling-origin validation folds, thresholded by
``evaluate.threshold``. So the version evaluate has just reported gets the leaderboard's figure, and the
description quotes it as the leaderboard prints it (:func:`pipeline.eval.selection.figure`). (The gate
used to score the served model's raw input, train and validation rows only: a detector that scores a
point with windows reaching past it then scored the end of the validation split without the test rows
that follow it in evaluate, and got another figure: on the default data dense_autoencoder 0.4111 against
evaluate's 0.4126, isolation_forest 0.1551 against 0.1566; the issue saw 0.4431 against 0.447.)

The new version becomes champion only if it is better by more than ``mlflow.min_improvement``; otherwise
it becomes challenger. The first version becomes champion. Both figures and the decision go into the
version's tags and description.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.frame import LABEL
from pipeline.data.prep import load_splits
from pipeline.eval.selection import champion_metric, champion_summary, figure, figure_basis
from pipeline.params import Params
from pipeline.serving.registry import CHALLENGER, CHAMPION, TAG, champion_version, set_champion, utc_now


# -- the gate ----------------------------------------------------------------------------------
class Gate:
    """Scores registered versions on the current validation split and applies the promotion rule."""

    def __init__(self, client, params: Params):
        self.client, self.params = client, params
        self.metric = params.evaluate.champion_metric
        self.margin = params.mlflow.min_improvement
        self._data: pd.DataFrame | None = None
        self._cache: dict[str, dict] = {}

    def data(self) -> pd.DataFrame:
        """The windows stage's prepared splits in one frame (``split`` column): what evaluate scored."""
        if self._data is None:
            self._data = load_splits(Path(self.params.paths.windows))
        return self._data

    def validation_metric(self, model: str, version: str) -> float | None:
        """The champion metric of one registered version on the current validation split."""
        return self.validation_figure(model, version)["value"]

    def validation_figure(self, model: str, version: str) -> dict:
        """The champion figure (:func:`pipeline.eval.selection.champion_summary`'s dict) of one registered
        version on the current validation split, measured as evaluate measures a detector: the whole
        prepared series scored once (:meth:`pipeline.serving.bundle.Bundle.score_prepared`), its validation
        rows cut out, the champion rule applied. For the version this run's evaluate reported, it is the
        leaderboard's figure, to the last digit.

        The version is loaded by :func:`pipeline.serving.store.load_version`, which never executes code
        stored in the registry (and refuses a version whose code is not kpiguard's).
        """
        from pipeline.serving import store

        run_id = self.client.get_model_version(model, version).run_id
        if run_id not in self._cache:
            full = self.data()
            val_rows = (full["split"] == "val").to_numpy()
            if not val_rows.any() or LABEL not in full.columns:
                self._cache[run_id] = champion_summary(self.metric, None, [])
            else:
                scores = store.load_version(self.client, model, version).bundle.score_prepared(full)
                self._cache[run_id] = champion_metric(full[val_rows], scores[val_rows], self.params.evaluate)
        return self._cache[run_id]

    def decide(self, model: str, version) -> dict:
        """Champion or challenger for a newly registered ``version``; recorded on the version."""
        new = str(version.version)
        figure = self.validation_figure(model, new)
        candidate = figure["value"]
        current = champion_version(self.client, model)
        out = {"metric": self.metric, "candidate_value": candidate, "basis": figure_basis(figure),
               "min_improvement": self.margin,
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
                "gate.basis": out["basis"],
                "gate.champion_version": out["champion_version"], "gate.champion_value": out["champion_value"],
                "gate.min_improvement": out["min_improvement"], "gate.decision": out["decision"],
                "gate.reason": out["reason"]}
        for key, value in tags.items():
            self.client.set_model_version_tag(model, version, TAG + key, "" if value is None else str(value))
        # The figures as the leaderboard prints them (pipeline.eval.selection.figure): one number per version.
        where = f"{out['metric']} on the validation split ({out['basis']})"
        self.client.update_model_version(model, version, description=(
            f"Gate ({utc_now()}): {where}: this version {figure(out['candidate_value'])}, "
            f"champion v{out['champion_version']} {figure(out['champion_value'])} "
            f"(min improvement {out['min_improvement']}) -> {out['decision']}: {out['reason']}."
            if out["champion_version"] else
            f"Gate ({utc_now()}): {where}: {figure(out['candidate_value'])} -> "
            f"{out['decision']}: {out['reason']}."))
