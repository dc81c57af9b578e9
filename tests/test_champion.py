"""The champion choice (pipeline/stages/evaluate.py): rolling-origin validation folds, the pick, the leaderboard's
validation -> test gap. Exact small cases, no detector trained."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.frame import KPI_ID, LABEL, MISSING, TIMESTAMP
from pipeline.eval import leaderboard, protocol, selection
from pipeline.params import ParamsError, parse_params
from tests.conftest import small_params_dict

NONE = {"method": "none"}  # scores as written below, so every threshold can be worked out by hand


def test_fold_blocks_cut_each_kpi_into_consecutive_parts():
    ids = np.array(["a"] * 7 + ["b"] * 4)
    assert selection.fold_blocks(ids, 3).tolist() == [0, 0, 0, 1, 1, 2, 2] + [0, 0, 1, 2]
    assert selection.fold_blocks(ids, 1).tolist() == [0] * 11


def frame_with_scores():
    """One KPI: 20 train rows, 40 validation rows (4 blocks of 10, one anomaly at row 5 of each) and 20
    test rows (anomalies at rows 5 and 15). ``steady`` scores every anomaly 1 and one normal row per
    block 1 as well; ``lucky`` scores its anomalies 5, 5, 0.5, 0.4 in the four validation blocks and 0.3
    on test, nothing else."""
    split = ["train"] * 20 + ["val"] * 40 + ["test"] * 20
    labels = np.zeros(80, dtype=np.int8)
    val_anomalies, test_anomalies = [25, 35, 45, 55], [65, 75]
    labels[val_anomalies + test_anomalies] = 1
    full = pd.DataFrame({KPI_ID: "k", TIMESTAMP: pd.date_range("2026-01-01", periods=80, freq="5min", tz="UTC"),
                         LABEL: labels, MISSING: False, "split": split})
    steady = np.zeros(80)
    steady[val_anomalies + test_anomalies] = 1.0
    steady[[22, 32, 42, 52, 62]] = 1.0  # one false alarm per validation block, and one on test
    lucky = np.zeros(80)
    lucky[val_anomalies] = [5.0, 5.0, 0.5, 0.4]
    lucky[test_anomalies] = 0.3
    return full, {"steady": steady, "lucky": lucky}


def params(folds: int, **evaluate):
    # 4 validation events: below the default evaluate.min_events, so the metric-driven path needs min_events 1
    return parse_params(small_params_dict(evaluate={
        "champion_metric": "point_f1", "champion_folds": folds, "min_events": 1,
        "threshold": {"method": "best_f1", "scope": "global", "metric": "point_f1"}, **evaluate}))


def results_for(folds: int) -> dict:
    full, scores = frame_with_scores()
    return {name: protocol.evaluate_scores(name, full, s, params(folds), calibration=NONE)[0]
            for name, s in scores.items()}


def test_each_fold_is_thresholded_on_the_validation_rows_before_it():
    champion = results_for(3)["lucky"]["champion_metric"]
    # fold 1: fitted on block 0 (threshold 5) -> its 5 is caught; fold 2: fitted on blocks 0-1 (5) -> 0.5
    # missed; fold 3: fitted on blocks 0-2 (0.5) -> 0.4 missed. On the single split, fitted on all of
    # validation (0.4), every anomaly is caught: the in-sample figure.
    assert champion["fold_values"] == {"1": 1.0, "2": 0.0, "3": 0.0}
    assert (champion["fold_mean"], champion["fold_min"]) == (pytest.approx(1 / 3), 0.0)
    assert champion["fold_std"] == pytest.approx(np.std([1.0, 0.0, 0.0]))
    assert (champion["single_split"], champion["basis"], champion["value"]) == (1.0, "folds", champion["fold_mean"])
    assert champion["test"] == 0.0 and champion["val_test_gap"] == pytest.approx(-1 / 3)
    steady = results_for(3)["steady"]["champion_metric"]
    assert steady["fold_values"] == {"1": 2 / 3, "2": 2 / 3, "3": 2 / 3} and steady["single_split"] == 2 / 3


def test_the_champion_of_one_lucky_split_loses_on_the_fold_mean():
    assert selection.pick_champion(results_for(1), "point_f1") == "lucky"  # the single split: 1.0 against 0.667
    folded = results_for(3)
    assert selection.pick_champion(folded, "point_f1") == "steady"  # fold means: 0.333 against 0.667
    # and it transfers: on test, steady 0.8 (2 anomalies, 1 false alarm), lucky 0 (0.3 is below its threshold)
    transfer = selection.champion_transfer("steady", {n: r["test"]["point_f1"] for n, r in folded.items()})
    assert transfer == {"champion": "steady", "champion_test": 0.8, "test_best": "steady", "test_best_value": 0.8,
                        "shortfall": 0.0}


def test_folds_without_an_anomaly_or_a_fittable_threshold_are_not_scored():
    full, scores = frame_with_scores()
    full.loc[[25, 35], LABEL] = 0  # no anomaly in blocks 0 and 1: best_f1 cannot be fitted before fold 2
    res, _ = protocol.evaluate_scores("steady", full, scores["steady"], params(3), calibration=NONE)
    # fold 1 has no anomaly; fold 2's threshold has no anomaly to fit on; fold 3 is fitted on block 2
    assert res["champion_metric"]["fold_values"] == {"1": None, "2": None, "3": 2 / 3}
    full.loc[[45], LABEL] = 0  # the last block's anomaly only: no fold can be scored, the single split decides
    res, _ = protocol.evaluate_scores("steady", full, scores["steady"], params(3), calibration=NONE)
    champion = res["champion_metric"]
    assert champion["fold_values"] == {"1": None, "2": None, "3": None} and champion["fold_mean"] is None
    assert champion["basis"] == "single_split" and champion["value"] == champion["single_split"] == 2 / 9  # 1 hit, 7 false alarms


def test_a_detector_scored_on_folds_outranks_one_scored_on_the_single_split_only():
    ok = {"status": "ok"}
    results = {"a": {**ok, "champion_metric": selection.champion_summary("m", 0.9, [None, None])},
               "b": {**ok, "champion_metric": selection.champion_summary("m", 0.2, [0.4, 0.6])},
               "c": {**ok, "champion_metric": selection.champion_summary("m", 0.3, [0.6, 0.4])},
               "random": {**ok, "champion_metric": selection.champion_summary("m", 0.99, [0.9, 0.9])}}
    assert selection.pick_champion(results, "m") == "c"  # b and c tie on the mean: the better single split wins


def test_leaderboard_shows_the_fold_figures_and_the_validation_to_test_gap():
    results = results_for(3)
    transfer = selection.champion_transfer("steady", {n: r["test"]["point_f1"] for n, r in results.items()})
    md = leaderboard.leaderboard({"champion_metric": "point_f1", "champion_folds": 3, "best_on_val": "steady",
                                  "transfer": transfer, "detectors": results, "events": {"val": 4, "test": 2},
                                  "alarm_budget": 2.0, "bootstrap": {"draws": 200, "level": 0.9}})
    header = next(line for line in md.splitlines() if line.startswith("| detector"))
    assert header.startswith("| detector | val point_f1 (mean of 3 folds) | 90% interval | fold min | fold std | "
                             "val point_f1 (one split) | test point_f1 | val → test gap | test aiops_f1 |")
    assert header.endswith("| val alarms/KPI/day | test alarms/KPI/day | status |")
    rows = [line for line in md.splitlines() if line.startswith("| steady") or line.startswith("| lucky")]
    # One event per fold: each fold's resample redraws it, so the fold mean has no spread to show.
    assert rows[0].startswith("| steady | 0.667 | [0.667, 0.667] | 0.667 | 0.000 | 0.667 | 0.800 | +0.133 |")  # first
    assert rows[1].startswith("| lucky | 0.333 | [0.333, 0.333] | 0.000 | 0.471 | 1.000 | 0.000 | -0.333 |")
    # alarms per KPI per day: steady alarms on 8 of the 40 validation points (40 / 288 of a day): 57.6; on 6 of
    # the 20 test points: 43.2
    assert rows[0].endswith("| 57.60 | 43.20 | ok |")
    assert "Labelled events: validation 4, test 2." in md and "the alarm budget (evaluate.alarm_budget) is 2." in md
    assert "The validation-chosen champion, **steady**, is also the best on test (point_f1 0.800)." in md
    lost = leaderboard.transfer_line(selection.champion_transfer("lucky", {"lucky": 0.5, "steady": 0.62}), "aiops_f1")
    assert lost == ("Validation-chosen champion: **lucky** (test aiops_f1 0.500); best on test: **steady** (0.620); "
                    "the validation choice is 0.120 aiops_f1 short of it.")


@pytest.mark.parametrize("folds", [0, 21, "three"])
def test_champion_folds_is_validated(folds):
    with pytest.raises(ParamsError, match="evaluate.champion_folds"):
        parse_params(small_params_dict(evaluate={"champion_folds": folds}))


# -- the label-free path and the noise of the choice ------------------------------------------------------------
OK = {"status": "ok"}


def figure_with_draws(value: float, draws: np.ndarray) -> dict:
    return selection.champion_summary("aiops_f1", value, [value], draws=draws, level=0.9, events=50)


def test_a_challenger_replaces_the_default_only_beyond_the_noise():
    ev = params(1, champion_metric="aiops_f1").evaluate  # default detector sequence_novelty; min_events 1
    base = np.linspace(0.45, 0.65, 201)  # the default's resamples: 90% interval [0.46, 0.64]
    default = figure_with_draws(0.55, base)
    assert default["interval"] == [pytest.approx(0.46), pytest.approx(0.64)]
    # better on validation, but the paired difference spans -0.04 .. 0.16: its 90% interval [-0.03, 0.15] holds 0
    inside = {"sequence_novelty": {**OK, "champion_metric": default},
              "seasonal_residual": {**OK, "champion_metric": figure_with_draws(0.61, base + np.linspace(-0.04, 0.16, 201))}}
    chosen = selection.choose_champion(inside, ev, events=50)
    assert (chosen["champion"], chosen["best"], chosen["label_free"]) == ("sequence_novelty", "seasonal_residual", False)
    assert chosen["comparison"]["rule"] == "paired_bootstrap"
    assert chosen["comparison"]["difference_interval"] == [pytest.approx(-0.03), pytest.approx(0.15)]
    assert chosen["reason"] == ("seasonal_residual is best on validation (0.610 [0.430, 0.790]) but not beyond the noise "
                                "of the default sequence_novelty (0.550 [0.460, 0.640]) (difference +0.060, interval "
                                "[-0.030, +0.150], must lie above 0): kept the default.")
    # the same advantage with a paired difference of 0.02 .. 0.10 (interval [0.024, 0.096]): beyond the noise
    beyond = {**inside, "seasonal_residual": {**OK, "champion_metric": figure_with_draws(0.61, base + np.linspace(0.02, 0.10, 201))}}
    chosen = selection.choose_champion(beyond, ev, events=50)
    assert chosen["champion"] == "seasonal_residual" and chosen["comparison"]["better"] is True
    assert chosen["reason"].startswith("seasonal_residual replaces the default: it is better beyond the noise")
    # ... but not by more than mlflow.min_improvement 0.03
    assert selection.choose_champion(beyond, ev, events=50, margin=0.03)["champion"] == "sequence_novelty"
    # a metric without draws (rpa_f1, auc_pr): the plain figures decide
    plain = {"sequence_novelty": {**OK, "champion_metric": selection.champion_summary("rpa_f1", 0.55, [0.55])},
             "diff_z": {**OK, "champion_metric": selection.champion_summary("rpa_f1", 0.56, [0.56])}}
    chosen = selection.choose_champion(plain, ev, events=50)
    assert chosen["champion"] == "diff_z" and chosen["comparison"]["rule"] == "plain"


def test_without_enough_labelled_events_the_default_is_the_champion_whatever_the_figures():
    ev = params(1, min_events=40).evaluate
    results = {"sequence_novelty": {**OK, "champion_metric": figure_with_draws(0.2, np.full(200, 0.2))},
               "diff_z": {**OK, "champion_metric": figure_with_draws(0.9, np.full(200, 0.9))},
               "stacked_gbdt": {"status": "skipped", "reason": "no labels"}}
    chosen = selection.choose_champion(results, ev, events=11)
    assert (chosen["champion"], chosen["best"], chosen["label_free"]) == ("sequence_novelty", "diff_z", True)
    assert chosen["reason"] == ("No metric picks the champion: the validation split has 11 labelled events, fewer than "
                                "evaluate.min_events (40); it is the default detector, sequence_novelty "
                                "(evaluate.default_detector), and thresholds come from the alarm budget.")
    assert "has no labelled event" in selection.choose_champion(results, ev, events=0)["reason"]
    del results["sequence_novelty"]
    chosen = selection.choose_champion(results, ev, events=0)
    assert chosen["champion"] is None and "was not scored (not trained)" in chosen["reason"]


def test_paired_draws_on_real_alarms_tell_a_better_detector_from_noise():
    """40 one-point events on one KPI's validation split: "sharp" catches all, "blunt" catches every other one,
    "sharp_fp" is sharp with one false alarm more. Both comparisons use the same resampled events."""
    n = 2000
    split = ["train"] * 400 + ["val"] * 1200 + ["test"] * 400
    labels = np.zeros(n, dtype=np.int8)
    events = np.arange(420, 1600, 30)[:40]
    labels[events] = 1
    full = pd.DataFrame({KPI_ID: "k", TIMESTAMP: pd.date_range("2026-01-01", periods=n, freq="5min", tz="UTC"),
                         LABEL: labels, MISSING: False, "split": split})
    sharp = labels.astype(float)
    blunt = sharp.copy()
    blunt[events[1::2]] = 0.0
    sharp_fp = sharp.copy()
    sharp_fp[405 + 400] = 1.0  # a false alarm inside validation
    p = params(1, champion_metric="aiops_f1", min_events=30,
               threshold={"method": "fixed", "scope": "global", "value": 0.5})
    res = {name: protocol.evaluate_scores(name, full, s, p, calibration=NONE)[0]["champion_metric"]
           for name, s in (("sharp", sharp), ("blunt", blunt), ("sharp_fp", sharp_fp))}
    assert res["sharp"]["events"] == 40 and res["sharp"]["value"] == 1.0 and res["blunt"]["value"] == pytest.approx(2 / 3)
    assert res["sharp"]["interval"] == [1.0, 1.0]  # every event caught, no false alarm: every resample is 1
    low, high = res["blunt"]["interval"]
    assert low < 2 / 3 < high
    assert selection.beats(res["sharp"], res["blunt"], 0.0, 0.9)["better"] is True
    # one false alarm more: the bootstrap holds false alarms fixed (the events are resampled), so it lowers
    # sharp_fp's F1 in every draw: sharp is better beyond the noise, never the other way round
    assert selection.beats(res["sharp_fp"], res["sharp"], 0.0, 0.9)["better"] is False
    assert selection.beats(res["sharp"], res["sharp_fp"], 0.0, 0.9)["better"] is True


def test_label_free_evaluation_fits_the_alarm_budget():
    """No label anywhere: the threshold is the budget (best_f1 would need labels), the alarm rates are in
    alarms per KPI per day, and there is no figure to rank by."""
    full, scores = frame_with_scores()
    full = full.drop(columns=LABEL)
    rng = np.random.default_rng(0)
    res, _ = protocol.evaluate_scores("steady", full, rng.random(len(full)), params(1, min_events=40), calibration=NONE)
    assert res["threshold"]["method"] == "budget" and res["threshold"]["budget"] == 2.0
    # 40 validation points at 288 a day: the budget is 2 x 40/288 = 0.28 alarms: the quantile 1 - 2/288 of 40
    # uniform scores lies between the two largest, so the largest alone alarms: 1 / (40/288) = 7.2 a day
    assert res["alarms"]["val"] == pytest.approx(7.2) and res["alarms"]["budget"] == 2.0
    assert res["val"] is None and res["test"] is None and res["champion_metric"]["value"] is None
    assert res["champion_metric"]["events"] == 0


def test_threshold_rule_turns_a_label_rule_into_the_budget_on_the_label_free_path():
    ev = params(1).evaluate
    assert ev.threshold_rule(False)["method"] == "best_f1"
    assert ev.threshold_rule(True) == {**ev.threshold, "method": "budget", "budget": ev.alarm_budget}
    quantile = parse_params(small_params_dict(evaluate={"threshold": {"method": "quantile", "quantile": 0.9}})).evaluate
    assert quantile.threshold_rule(True) == {"method": "quantile", "quantile": 0.9}  # a label-free choice is kept
    with pytest.raises(ParamsError, match="evaluate.alarm_budget"):
        parse_params(small_params_dict(evaluate={"threshold": {"method": "budget", "budget": 3}}))
    with pytest.raises(ParamsError, match="supervised"):
        parse_params(small_params_dict(evaluate={"default_detector": "stacked_gbdt"}))
    with pytest.raises(ParamsError, match="evaluate.alarm_budget"):
        parse_params(small_params_dict(evaluate={"alarm_budget": 0}))
