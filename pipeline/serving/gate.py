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

The new version becomes champion only if it is better beyond the noise (:func:`pipeline.eval.selection.beats`,
the rule evaluate picks a challenger over the default detector by: the paired bootstrap interval of the
difference above ``mlflow.min_improvement``); otherwise it becomes challenger. The first version becomes
champion. On the label-free path (fewer labelled validation events than ``evaluate.min_events``, or none:
no metric decides) the new version becomes champion when the champion does not cover the validation data's
KPIs (it was trained on other KPIs: its bundle's normalisation statistics name those it was trained on),
or else because neither has a metric that decides (a retrain replaces the previous one). Both figures, the
intervals and the decision with its reason go into the version's tags and description.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.frame import KPI_ID, has_labels
from pipeline.data.prep import load_splits
from pipeline.eval.selection import (beats, champion_metric, champion_summary, figure_basis,
                                     figure_with_interval, label_events, label_free_reason)
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
        self._kpis: dict[str, set[str]] = {}

    def data(self) -> pd.DataFrame:
        """The windows stage's prepared splits in one frame (``split`` column): what evaluate scored."""
        if self._data is None:
            self._data = load_splits(Path(self.params.paths.windows))
        return self._data

    def validation(self) -> pd.DataFrame:
        full = self.data()
        return full[(full["split"] == "val").to_numpy()]

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
            if not val_rows.any() or not has_labels(full[val_rows]):
                self._cache[run_id] = champion_summary(self.metric, None, [])
            else:
                loaded = store.load_version(self.client, model, version).bundle
                self._kpis[run_id] = set(loaded.norm)
                scores = loaded.score_prepared(full)
                self._cache[run_id] = champion_metric(full[val_rows], scores[val_rows], self.params.evaluate)
        return self._cache[run_id]

    def trained_kpis(self, model: str, version: str) -> set[str]:
        """The KPIs one registered version was trained on: its bundle's normalisation statistics name them."""
        from pipeline.serving import store

        run_id = self.client.get_model_version(model, version).run_id
        if run_id not in self._kpis:
            self._kpis[run_id] = set(store.load_version(self.client, model, version).bundle.norm)
        return self._kpis[run_id]

    def decide(self, model: str, version) -> dict:
        """Champion or challenger for a newly registered ``version``; recorded on the version."""
        new = str(version.version)
        candidate = self.validation_figure(model, new)
        current = champion_version(self.client, model)
        val = self.validation()
        events = label_events(val, self.metric)
        out = {"metric": self.metric, "candidate_value": candidate["value"], "basis": figure_basis(candidate),
               "candidate_figure": figure_with_interval(candidate), "min_improvement": self.margin, "events": events,
               "champion_version": str(current.version) if current else None, "champion_value": None,
               "champion_figure": None, "difference_interval": None}
        if current is None:
            out["decision"], why = CHAMPION, "the first version registered"
        else:
            champion = self.validation_figure(model, str(current.version))
            out["champion_value"], out["champion_figure"] = champion["value"], figure_with_interval(champion)
            why_free = label_free_reason(events, self.params.evaluate)
            uncovered = (sorted(set(val[KPI_ID].astype(str).unique()) - self.trained_kpis(model, str(current.version)))
                         if why_free is not None else [])
            comparison = beats(candidate, champion, self.margin, self.params.evaluate.bootstrap_level)
            out["difference_interval"] = comparison["difference_interval"]
            out["decision"], why = gate_rule(str(current.version), comparison, why_free, uncovered,
                                             val[KPI_ID].nunique(), self.margin)
        out["reason"] = why
        self._record(model, new, out)
        if out["decision"] == CHAMPION:
            set_champion(self.client, model, new, f"gate: {why}")
        else:
            self.client.set_registered_model_alias(model, CHALLENGER, new)
        return out

    def _record(self, model: str, version: str, out: dict) -> None:
        tags = {"gate.metric": out["metric"], "gate.candidate_value": out["candidate_value"],
                "gate.basis": out["basis"], "gate.events": out["events"],
                "gate.difference_interval": out["difference_interval"],
                "gate.champion_version": out["champion_version"], "gate.champion_value": out["champion_value"],
                "gate.min_improvement": out["min_improvement"], "gate.decision": out["decision"],
                "gate.reason": out["reason"]}
        for key, value in tags.items():
            self.client.set_model_version_tag(model, version, TAG + key, "" if value is None else str(value))
        # The figures as the leaderboard prints them (pipeline.eval.selection.figure): one number per version.
        where = f"{out['metric']} on the validation split ({out['basis']}, {out['events']} labelled events)"
        self.client.update_model_version(model, version, description=(
            f"Gate ({utc_now()}): {where}: this version {out['candidate_figure']}, "
            f"champion v{out['champion_version']} {out['champion_figure']} "
            f"(min improvement {out['min_improvement']}) -> {out['decision']}: {out['reason']}."
            if out["champion_version"] else
            f"Gate ({utc_now()}): {where}: {out['candidate_figure']} -> "
            f"{out['decision']}: {out['reason']}."))


def gate_rule(champion: str, comparison: dict, label_free: str | None, uncovered: list[str], kpis: int,
              margin: float) -> tuple[str, str]:
    """(decision, reason) for a new version against champion ``v<champion>``: ``comparison`` is
    :func:`pipeline.eval.selection.beats` of their figures; ``label_free`` is why no metric decides
    (:func:`pipeline.eval.selection.label_free_reason`; None when one does); ``uncovered``: the validation
    data's KPIs (``kpis`` of them) the champion was not trained on."""
    if label_free is not None:
        if uncovered:
            shown = ", ".join(uncovered[:3]) + (", ..." if len(uncovered) > 3 else "")
            return CHAMPION, (f"v{champion} was trained on other KPIs: {len(uncovered)} of the {kpis} validation "
                              f"KPIs ({shown}) are not among its KPIs; no metric decides ({label_free})")
        return CHAMPION, (f"neither version has a metric that decides ({label_free}): the new version, a retrain, "
                          f"replaces v{champion}")
    if comparison["better"] is None:
        return CHALLENGER, "the metric is undefined on this validation data; promote by hand"
    noise = ("beyond the noise (paired bootstrap interval of the difference "
             f"[{comparison['difference_interval'][0]:+.3f}, {comparison['difference_interval'][1]:+.3f}])"
             if comparison["rule"] == "paired_bootstrap" else f"({comparison['difference']:+.3f})")
    if comparison["better"]:
        return CHAMPION, f"beats v{champion} by more than {margin} {noise}"
    return CHALLENGER, f"does not beat v{champion} by more than {margin} {noise}"
