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
                               "transfer": transfer, "detectors": results})
    header = next(line for line in md.splitlines() if line.startswith("| detector"))
    assert header.startswith("| detector | val point_f1 (mean of 3 folds) | fold min | fold std | val point_f1 "
                             "(one split) | test point_f1 | val → test gap | test aiops_f1 |")
    rows = [line for line in md.splitlines() if line.startswith("| steady") or line.startswith("| lucky")]
    assert rows[0].startswith("| steady | 0.667 | 0.667 | 0.000 | 0.667 | 0.800 | +0.133 |")  # ranked first
    assert rows[1].startswith("| lucky | 0.333 | 0.000 | 0.471 | 1.000 | 0.000 | -0.333 |")
    assert "The validation-chosen champion, **steady**, is also the best on test (point_f1 0.800)." in md
    lost = leaderboard.transfer_line(selection.champion_transfer("lucky", {"lucky": 0.5, "steady": 0.62}), "aiops_f1")
    assert lost == ("Validation-chosen champion: **lucky** (test aiops_f1 0.500); best on test: **steady** (0.620); "
                    "the validation choice is 0.120 aiops_f1 short of it.")


@pytest.mark.parametrize("folds", [0, 21, "three"])
def test_champion_folds_is_validated(folds):
    with pytest.raises(ParamsError, match="evaluate.champion_folds"):
        parse_params(small_params_dict(evaluate={"champion_folds": folds}))
