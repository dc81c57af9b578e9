"""Fitted state as JSON: numpy scalars and arrays to Python numbers and lists, recursively.

Calibrations (:mod:`models.calibration`) and thresholds (:mod:`pipeline.thresholds`) serialise their
fitted state with :func:`to_jsonable`. They differ in one thing, the non-finite floats: a calibration
keeps them (``json`` writes ``NaN``/``Infinity``, which it reads back), a threshold writes ``null``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

NONFINITE = ("keep", "null")


def to_jsonable(x: Any, nonfinite: str = "keep") -> Any:
    """``x`` with dict keys as str, tuples and ndarrays as lists, numpy floats/ints as float/int.

    ``nonfinite``: ``"keep"`` leaves NaN and +-inf as floats; ``"null"`` turns them into None. Anything
    else (str, bool, None, ...) is returned as it is.
    """
    if nonfinite not in NONFINITE:
        raise ValueError(f"nonfinite must be one of {', '.join(NONFINITE)}, got {nonfinite!r}")
    return _convert(x, nonfinite == "null")


def _convert(x: Any, null: bool) -> Any:
    if isinstance(x, dict):
        return {str(k): _convert(v, null) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_convert(v, null) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if null and not math.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x
