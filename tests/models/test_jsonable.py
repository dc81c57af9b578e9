"""models.jsonable.to_jsonable: the one JSON converter of fitted state (calibrations keep non-finite
floats, thresholds write them as null)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from models.jsonable import to_jsonable


def test_keep_converts_numpy_recursively_and_keeps_nonfinite_floats():
    state = {1: {"mu": np.float32(0.5), "n": np.int64(3), "knots": np.array([0.0, np.inf, 2.5])},
             "pooled": (np.float64(-np.inf), np.nan, [np.int8(-2), "s", None, True]),
             "grid": np.arange(4).reshape(2, 2)}
    got = to_jsonable(state)
    assert list(got) == ["1", "pooled", "grid"]
    assert got["1"]["mu"] == 0.5 and type(got["1"]["mu"]) is float
    assert got["1"]["n"] == 3 and type(got["1"]["n"]) is int
    assert got["1"]["knots"][0] == 0.0 and got["1"]["knots"][1] == math.inf and got["1"]["knots"][2] == 2.5
    assert all(type(v) is float for v in got["1"]["knots"])
    assert got["pooled"][0] == -math.inf and math.isnan(got["pooled"][1]) and type(got["pooled"][1]) is float
    assert got["pooled"][2] == [-2, "s", None, True] and type(got["pooled"][2][0]) is int
    assert got["grid"] == [[0, 1], [2, 3]] and all(type(v) is int for row in got["grid"] for v in row)
    assert json.dumps(got) == ('{"1": {"mu": 0.5, "n": 3, "knots": [0.0, Infinity, 2.5]}, '
                               '"pooled": [-Infinity, NaN, [-2, "s", null, true]], "grid": [[0, 1], [2, 3]]}')
    assert json.dumps(to_jsonable(state, nonfinite="keep")) == json.dumps(got)  # the default


def test_null_writes_nonfinite_floats_as_none_and_converts_arrays_too():
    state = {"global": np.float64(np.nan), "per_kpi": {"a": 1.5, "b": np.float32(np.inf), "c": -math.inf},
             "fit": (np.int32(7), [np.float64(2.0), float("nan")]), "arr": np.array([1.0, np.nan])}
    got = to_jsonable(state, nonfinite="null")
    assert got == {"global": None, "per_kpi": {"a": 1.5, "b": None, "c": None},
                   "fit": [7, [2.0, None]], "arr": [1.0, None]}
    assert type(got["fit"][0]) is int and type(got["fit"][1][0]) is float
    assert json.dumps(got) == ('{"global": null, "per_kpi": {"a": 1.5, "b": null, "c": null}, '
                               '"fit": [7, [2.0, null]], "arr": [1.0, null]}')


@pytest.mark.parametrize("x", ["text", None, True, False, 3, np.bool_(True)])
def test_other_values_are_returned_as_they_are(x):
    assert to_jsonable(x) is x and to_jsonable(x, nonfinite="null") is x


def test_unknown_nonfinite_mode_is_refused():
    with pytest.raises(ValueError, match="nonfinite must be 'keep' or 'null', got 'drop'"):
        to_jsonable({}, nonfinite="drop")
