"""windows stage: validated KPI frames -> the prepared splits, windows and normalisation of
:mod:`pipeline.data.prep`, written to ``paths.windows`` in one atomic swap.

Outputs (``data/windows/``):

- ``{train,val,test}.parquet``: prepared frames (see ``models.frame``), the input of every detector.
- ``{train,val,test}_windows.npz``: the sliding windows of ``windows.length`` / ``windows.stride``
  (``values``, ``missing``, ``labels`` (per point), ``start`` (row index of each window's start)).
- ``norm_stats.json``: per-KPI ``center``, ``scale`` and ``interval_s``, fitted on train only.
- ``summary.json``: counts per split, and what regularisation did.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.prep import build, window_arrays
from pipeline.io.outputs import replace_dir_atomic
from pipeline.params import Params


def run(params: Params, validated_dir: Path, out_dir: Path) -> dict:
    """The DVC stage: read ``validated_dir``, write ``out_dir`` atomically."""
    validated_dir, out_dir = Path(validated_dir), Path(out_dir)
    train = pd.read_parquet(validated_dir / "train.parquet")
    test_path = validated_dir / "test.parquet"
    test = pd.read_parquet(test_path) if test_path.exists() else None
    splits, norm, summary = build(train, test, params.windows)

    def write(tmp: Path) -> None:
        for split, frame in splits.items():
            frame.to_parquet(tmp / f"{split}.parquet", index=False)
            np.savez_compressed(tmp / f"{split}_windows.npz", **window_arrays(frame, params.windows))
        (tmp / "norm_stats.json").write_text(json.dumps(
            {k: vars(v) for k, v in norm.items()}, indent=2, sort_keys=True))
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))

    replace_dir_atomic(out_dir, write)
    return summary
