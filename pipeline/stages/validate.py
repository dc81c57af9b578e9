"""validate stage: the Great Expectations checks of :mod:`pipeline.data.checks` on the ingested frames.

Writes the validated rows (``paths.validated``), the quarantined ones with their rule and reason
(``paths.quarantine``) and the report with GX Data Docs (``paths.validation_report``), all three
swapped in together.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd

from pipeline.data.checks import Validator
from pipeline.errors import DataError
from pipeline.io.outputs import replace_dirs_atomic
from pipeline.params import Params


def run(params: Params, raw_dir: Path, out_dir: Path, quarantine_dir: Path, report_dir: Path) -> dict:
    """The DVC stage. Reads ``raw_dir/{train,test}.parquet``; writes validated data, quarantine, report."""
    raw_dir, report_dir = Path(raw_dir), Path(report_dir)
    docs_tmp = report_dir.parent / f".{report_dir.name}.docs-tmp"
    validator = Validator(params, docs_dir=docs_tmp)
    outcomes = {}
    for split in ("train", "test"):
        path = raw_dir / f"{split}.parquet"
        if path.exists():
            frame = pd.read_parquet(path)
            outcomes[split] = validator.validate(frame, source=_source_name(raw_dir, split, path))

    def write_valid(tmp: Path) -> None:
        for split, o in outcomes.items():
            o.valid.to_parquet(tmp / f"{split}.parquet", index=False)

    def write_quarantine(tmp: Path) -> None:
        for split, o in outcomes.items():
            o.quarantine.to_parquet(tmp / f"{split}.parquet", index=False)
            o.kpi_stats.to_csv(tmp / f"{split}_kpi_stats.csv")

    summary = {split: o.summary() for split, o in outcomes.items()}
    # A failing stage leaves its previous outputs as they were: decide before anything is replaced.
    for split, o in outcomes.items():
        if o.valid.empty:
            shutil.rmtree(docs_tmp, ignore_errors=True)
            rules = summary[split]["quarantined_by_rule"]
            raise DataError(o.source, "at_least_one_valid_kpi",
                            f"every row or KPI failed validation (quarantined by rule: {rules}); the previous "
                            f"{out_dir}, {quarantine_dir} and {report_dir} are left as they were")
    metrics = {s: {k: v for k, v in summary[s].items() if isinstance(v, int)} for s in summary}

    def write_report(tmp: Path) -> None:
        if docs_tmp.exists():
            os.replace(docs_tmp, tmp / "data_docs")
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")

    # All three written before any is swapped in, so they never go out of step.
    replace_dirs_atomic([(out_dir, write_valid), (quarantine_dir, write_quarantine), (report_dir, write_report)])
    return summary


def _source_name(raw_dir: Path, split: str, path: Path) -> str:
    manifest = raw_dir / "manifest.json"
    if manifest.exists():
        spec = json.loads(manifest.read_text()).get(split, {}).get("spec")
        if spec:
            return f"{spec} ({path})"
    return str(path)
