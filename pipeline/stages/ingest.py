"""ingest stage: read the train source (and an optional separate test source) into ``data/raw/``.

Writes ``train.parquet``, ``test.parquet`` (only when ``data.test`` names a source) and
``manifest.json`` (spec, rows, KPIs, time range per split). Rows are not filtered here: whatever the
source holds reaches validation, which quarantines bad rows with a reason.

Reviewed labels (``paths.labels``, the DVC stage ``labels``: people's verdicts, :mod:`pipeline.review`)
go into an unlabelled train source once they hold enough events (:func:`pipeline.data.review_labels.enough_events`):
the train split is then the reviewed rows, labelled; the unreviewed rows are counted in the manifest, not
guessed. Fewer events, or ``reviews.apply: false``, and the source stays as it is (the label-free path).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from models.frame import KPI_ID, LABEL, TIMESTAMP
from pipeline.data import review_labels
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
    reviewed = with_reviewed_labels(params, frames["train"])
    frames["train"] = reviewed.pop("frame")
    manifest = {split: describe(frame, specs[split]) for split, frame in frames.items()}
    manifest["train"]["reviews"] = reviewed

    def write(tmp: Path) -> None:
        import json

        for split, frame in frames.items():
            frame.to_parquet(tmp / f"{split}.parquet", index=False)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))

    replace_dir_atomic(out_dir, write)
    return manifest


def with_reviewed_labels(params: Params, train: pd.DataFrame) -> dict:
    """The train frame with the exported review labels merged when they apply, and what was done (the
    manifest's ``reviews``: the label set's digest, which the registered model versions carry)."""
    export = review_labels.read_export(params.paths.labels)
    if export is None:
        return {"frame": train, "applied": False, "reason": f"no label set at {params.paths.labels}"}
    spans, summary = export
    base = {"digest": summary["digest"], "spans": summary["spans"], "by_origin": summary["by_origin"]}
    if not params.reviews.apply:
        return {"frame": train, **base, "applied": False, "reason": "reviews.apply is false"}
    merged, counts = review_labels.apply_labels(train, spans)
    if not counts["applied"]:
        return {"frame": train, **base, **counts}
    needed = review_labels.enough_events(params)
    if counts["events"] < needed:
        return {"frame": train, **base, **counts, "applied": False,
                "reason": f"{counts['events']} reviewed events, fewer than the {needed} that give the validation "
                          f"split evaluate.min_events ({params.evaluate.min_events}): the label-free path serves"}
    return {"frame": merged, **base, **counts}
