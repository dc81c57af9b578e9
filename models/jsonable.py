"""Plain JSON values from numpy ones: what config.json, calibrations and thresholds are written with."""
from __future__ import annotations

import math
from typing import Any

import numpy as np


def to_jsonable(x: Any, nonfinite: str = "keep") -> Any:
    """``x`` with numpy scalars and arrays turned into Python ones (dict keys into str), recursively.

    ``nonfinite``: ``"keep"`` leaves NaN and ±inf floats (``json`` writes them as NaN / Infinity);
    ``"null"`` turns them into None (strict JSON)."""
    if nonfinite not in ("keep", "null"):
        raise ValueError(f"nonfinite must be 'keep' or 'null', got {nonfinite!r}")
    if isinstance(x, dict):
        return {str(k): to_jsonable(v, nonfinite) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [to_jsonable(v, nonfinite) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if nonfinite == "keep" or math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x
