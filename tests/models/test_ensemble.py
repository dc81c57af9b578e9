"""Exact tests of models/ensemble.py: calibrated members, their mean, nesting, config rules."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from models import registry
from models.base import fill_uncovered
from models.frame import KPI_ID, MISSING
from tests.models.conftest import CPU


def test_ensemble_of_one_member_is_that_members_calibrated_score(splits):
    from models.calibration import EcdfCalibration

    train, val, test = splits
    ensemble = registry.create("ensemble", {"members": ["robust_zscore"]}, CPU).fit(train, val)
    member = registry.create("robust_zscore", None, CPU).fit(train, val)
    # train and val scored each on its own, then each KPI's train rows followed by its val rows
    history = pd.concat([train.assign(raw=member.score_unfilled(train)), val.assign(raw=member.score_unfilled(val))])
    history = history.sort_values(KPI_ID, kind="stable")
    calibration = EcdfCalibration().fit(history["raw"], history[KPI_ID], history[MISSING])
    raw = member.score_unfilled(test)
    assert np.isnan(raw).any()  # the first 2 x 48 points of each KPI: no reference yet, filled as any detector's
    np.testing.assert_array_equal(ensemble.score(test),
                                  fill_uncovered(calibration.transform(raw, test[KPI_ID]), test))


def test_ensemble_averages_the_members_that_scored_each_point(splits):
    train, val, test = splits
    one = {name: registry.create("ensemble", {"members": [name]}, CPU).fit(train, val).score_unfilled(test)
           for name in ("diff_z", "spectral_residual")}
    both = registry.create("ensemble", {"members": ["diff_z", "spectral_residual"]}, CPU).fit(train, val)
    got = both.score_unfilled(test)
    only_diff = np.isnan(one["spectral_residual"]) & ~np.isnan(one["diff_z"])
    assert only_diff.sum() > 200  # spectral_residual scores from the 128th point of a KPI on
    np.testing.assert_array_equal(got[only_diff], one["diff_z"][only_diff])  # not pulled down by a fill value
    scored = ~np.isnan(one["spectral_residual"]) & ~np.isnan(one["diff_z"])
    np.testing.assert_array_equal(got[scored], (one["diff_z"][scored] + one["spectral_residual"][scored]) / 2)
    assert np.isnan(got[~(scored | only_diff)]).all()  # each KPI's first row: no member scored it


def test_ensemble_nests_a_torch_member_in_its_own_files(splits, tmp_path):
    train, val, test = splits
    ensemble = registry.create("ensemble", {"members": ["diff_z", "dense_autoencoder"], "calibration": "likelihood"},
                               CPU).fit(train, val)
    assert ensemble.members.detectors["dense_autoencoder"].history  # fitted with the ensemble's TrainConfig (2 epochs)
    ensemble.save(tmp_path)
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert state and all(k.startswith("dense_autoencoder.") for k in state)
    fitted = json.loads((tmp_path / "config.json").read_text())["fitted"]
    assert fitted["members"]["diff_z"]["fitted"]["scales"] == ensemble.members.detectors["diff_z"].scales
    assert fitted["calibrations"]["dense_autoencoder"]["method"] == "likelihood"
    loaded = registry.load(tmp_path)
    assert loaded.members.detectors["dense_autoencoder"].history == ensemble.members.detectors["dense_autoencoder"].history
    for causal in (False, True):
        np.testing.assert_array_equal(loaded.score(test, causal=causal), ensemble.score(test, causal=causal))


@pytest.mark.parametrize("members, calibration, match", [
    ([], "ecdf", "at least one"), (["diff_z", "diff_z"], "ecdf", "distinct"),
    (["nope"], "ecdf", "'nope'; choose among"), (["ensemble"], "ecdf", "'ensemble'; choose among"),
    (["diff_z", "cnn_classifier"], "ecdf", "'cnn_classifier', which is supervised"),
    (["diff_z"], "none", "'calibration' must be ecdf or likelihood")])
def test_ensemble_config_refuses_bad_members_and_calibrations(members, calibration, match):
    from models.configs.ensemble import EnsembleConfig
    from pipeline.params import ParamsError, parse_params
    from tests.conftest import small_params_dict

    with pytest.raises(ValueError, match=match):
        EnsembleConfig.from_dict({"members": members, "calibration": calibration})
    with pytest.raises(ParamsError, match=f"detectors.ensemble: .*{match}"):  # at params load, before any work
        parse_params(small_params_dict(detectors={"ensemble": {"members": members, "calibration": calibration}}))
