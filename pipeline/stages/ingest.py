"""ingest stage: read the train source (and an optional separate test source) into ``data/raw/``.

Writes ``train.parquet``, ``test.parquet`` (only when ``data.test`` names a source) and
``manifest.json`` (spec, rows, KPIs, time range per split). Rows are not filtered here: whatever the
source holds reaches validation, which quarantines bad rows with a reason.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.frame import KPI_ID, LABEL, TIMESTAMP
from pipeline.data.sources import read_source
from pipeline.errors import DataError
from pipeline.io.outputs import replace_dir_atomic
from pipeline.params import Params


def describe(frame: pd.DataFrame, spec: str) -> dict:
    return {
        "spec": spec,
        "rows": int(len(frame)),
        "kpis": int(frame[KPI_ID].nunique()),
        "start": str(frame[TIMESTAMP].min()) if len(frame) else None,
        "end": str(frame[TIMESTAMP].max()) if len(frame) else None,
        "labelled": LABEL in frame.columns,
    }


def run(params: Params, out_dir: Path, start=None, end=None) -> dict:
    specs = {"train": params.data.train, "test": params.data.test}
    frames = {split: read_source(spec, params, start=start, end=end)
              for split, spec in specs.items() if spec}
    for split, frame in frames.items():
        if frame.empty:
            raise DataError(specs[split], "non_empty_source", "the source holds no rows"
                            + (f" between {start} and {end}" if start or end else ""))
    manifest = {split: describe(frame, specs[split]) for split, frame in frames.items()}

    def write(tmp: Path) -> None:
        import json

        for split, frame in frames.items():
            frame.to_parquet(tmp / f"{split}.parquet", index=False)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))

    replace_dir_atomic(out_dir, write)
    return manifest
