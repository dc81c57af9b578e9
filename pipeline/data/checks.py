"""The data checks: raw KPI frames against the Great Expectations suites in ``expectations/``.

Three levels, in this order:

1. **schema** (columns and dtypes): a failure stops the caller with a :class:`DataError` naming the
   source, the column and the expectation. Nothing sensible can be quarantined row by row.
2. **row** (non-null, finite, label in {0, 1}, unique (kpi_id, timestamp)): failing rows go to
   quarantine with the expectation that failed. Of duplicated (kpi_id, timestamp) rows the first is
   kept and the later ones are quarantined.
3. **kpi** (length, regular sampling, gap ratio), checked on one row of statistics per KPI: a
   failing KPI goes to quarantine whole.

The validate stage (:mod:`pipeline.stages.validate`) and batch scoring (:mod:`pipeline.batch.score`)
both run them. GX Core is called from our own code (the Airflow GX provider does not install beside
Airflow 3.3).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from models.frame import KPI_ID, LABEL, TIMESTAMP
from pipeline.data.contract import CANONICAL_COLUMNS
from pipeline.errors import DataError
from pipeline.params import Params

log = logging.getLogger(__name__)

EXPECTATIONS_DIR = Path(__file__).resolve().parents[2] / "expectations"
ROW_SUITE, KPI_SUITE = "kpi_rows", "kpi_series"
QUARANTINE_COLUMNS = ("rule", "column", "level", "reason")


@dataclass
class Outcome:
    """What validation made of one frame."""

    source: str
    valid: pd.DataFrame
    quarantine: pd.DataFrame
    kpi_stats: pd.DataFrame
    results: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        q = self.quarantine
        return {
            "source": self.source,
            "rows_in": int(len(self.valid) + len(q)),
            "rows_valid": int(len(self.valid)),
            "rows_quarantined": int(len(q)),
            "quarantined_by_rule": {str(k): int(v) for k, v in q.groupby("rule").size().items()} if len(q) else {},
            "kpis_valid": int(self.valid[KPI_ID].nunique()),
            "kpis_quarantined": sorted(q.loc[q["level"] == "kpi", KPI_ID].astype(str).unique().tolist()) if len(q) else [],
            "expectations": self.results,
        }


def load_suite_spec(name: str, directory: Path = EXPECTATIONS_DIR) -> dict:
    path = Path(directory) / f"{name}.json"
    return json.loads(path.read_text())


class Validator:
    """Holds one ephemeral GX context with both suites; validates any number of frames."""

    def __init__(self, params: Params, expectations_dir: Path = EXPECTATIONS_DIR, docs_dir: Path | None = None,
                 min_points: int | None = None):
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig
        self._gx, self.params = gx, params
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.docs_dir = docs_dir
        if docs_dir is not None:
            self.context.add_data_docs_site(site_name="kpiguard", site_config={
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(Path(docs_dir).resolve())},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            })
        source = self.context.data_sources.add_pandas("kpiguard")
        self.specs = {name: load_suite_spec(name, expectations_dir) for name in (ROW_SUITE, KPI_SUITE)}
        # One checkpoint per (suite, optional columns absent): GX objects must live in the context.
        self.checkpoints = {
            (ROW_SUITE, True): self._checkpoint(source, ROW_SUITE, "kpi_rows_labelled", drop=set()),
            (ROW_SUITE, False): self._checkpoint(source, ROW_SUITE, "kpi_rows_unlabelled", drop={LABEL}),
            (KPI_SUITE, True): self._checkpoint(source, KPI_SUITE, "kpi_series", drop=set()),
        }
        # Training needs min_points_per_kpi; scoring a day of new data needs at least one window.
        self.min_points = min_points or max(params.validation.min_points_per_kpi, params.windows.length)

    def _checkpoint(self, source, suite_name: str, name: str, drop: set[str]):
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        gx, spec = self._gx, self.specs[suite_name]
        suite = gx.ExpectationSuite(name=name, meta=spec.get("meta", {}))
        for exp in spec["expectations"]:
            if exp["kwargs"].get("column") in drop:  # e.g. the label rule on an unlabelled source
                continue
            suite.add_expectation_configuration(ExpectationConfiguration(
                type=exp["type"], kwargs=exp["kwargs"], meta=exp.get("meta", {})))
        suite = self.context.suites.add(suite)
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite))
        return self.context.checkpoints.add(gx.Checkpoint(
            name=name, validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=["kpiguard"])] if self.docs_dir else [],
            result_format={"result_format": "COMPLETE", "return_unexpected_index_query": False}))

    def _run(self, suite_name: str, frame: pd.DataFrame, parameters: dict, labelled: bool = True):
        checkpoint = self.checkpoints[(suite_name, labelled)]
        result = checkpoint.run(batch_parameters={"dataframe": frame}, expectation_parameters=parameters)
        return [r for run in result.run_results.values() for r in run.results]

    def validate(self, frame: pd.DataFrame, source: str) -> Outcome:
        frame = frame.reset_index(drop=True)
        columns = [c for c in (*CANONICAL_COLUMNS, LABEL) if c in frame.columns or c != LABEL]
        row_results = self._run(ROW_SUITE, frame, {"columns": columns}, labelled=LABEL in frame.columns)
        self._raise_on_schema(row_results, source)

        reason_of: dict[int, tuple] = {}
        records = []
        for res in row_results:
            cfg = res.expectation_config
            bad = _unexpected_rows(res, frame)
            records.append(_record(res, len(bad)))
            for i in bad:  # the first failing rule names the row
                reason_of.setdefault(i, (cfg.type, _column_of(cfg), "row", _row_reason(cfg)))
        failed = np.zeros(len(frame), dtype=bool)
        failed[list(reason_of)] = True
        ok_rows = frame[~failed]
        bad_rows = frame[failed]
        quarantined = [quarantine_frame(bad_rows, pd.Series([reason_of[i] for i in np.flatnonzero(failed)],
                                                       index=bad_rows.index, dtype="object"))]

        stats = kpi_statistics(ok_rows)
        kpi_results = self._run(KPI_SUITE, stats, {
            "min_points": self.min_points,
            "interval_tolerance": self.params.validation.interval_tolerance,
            "max_gap_ratio": self.params.validation.max_gap_ratio})
        failed_kpis: dict[str, tuple] = {}
        for res in kpi_results:
            records.append(_record(res, len(_unexpected_rows(res, stats))))
            for i in _unexpected_rows(res, stats):
                kpi = stats.index[i]
                failed_kpis.setdefault(kpi, (res.expectation_config.type, _column_of(res.expectation_config),
                                             "kpi", _kpi_reason(stats.loc[kpi], res.expectation_config)))
        bad_kpi = ok_rows[KPI_ID].astype(str).isin(failed_kpis.keys())
        kpi_rows = ok_rows[bad_kpi]
        quarantined.append(quarantine_frame(kpi_rows, kpi_rows[KPI_ID].astype(str).map(failed_kpis)))
        valid = ok_rows[~bad_kpi].sort_values([KPI_ID, TIMESTAMP], kind="stable").reset_index(drop=True)
        quarantine = pd.concat(quarantined, ignore_index=True)
        return Outcome(source, valid, quarantine, stats, records)

    def _raise_on_schema(self, results, source: str) -> None:
        for res in results:
            cfg = res.expectation_config
            if (cfg.meta or {}).get("level") == "schema" and not res.success:
                observed = res.result.get("details") or res.result.get("observed_value")
                raise DataError(source, cfg.type, f"observed {observed}; expected {_kwargs(cfg)}",
                                column=_column_of(cfg))


def kpi_statistics(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per KPI: n_points, interval_s (most common step), on_grid_ratio, gap_ratio."""
    rows = {}
    for kpi_id, ts in frame.groupby(KPI_ID, sort=True, observed=True)[TIMESTAMP]:
        t = np.sort(pd.DatetimeIndex(ts).as_unit("ns").asi8)
        steps = np.diff(t)
        steps = steps[steps > 0]
        if len(steps) == 0:
            rows[str(kpi_id)] = (len(t), np.nan, 0.0, 1.0)
            continue
        values, counts = np.unique(steps, return_counts=True)
        interval = values[np.argmax(counts)]
        on_grid = float(np.mean(steps % interval == 0))
        expected = (t[-1] - t[0]) // interval + 1
        rows[str(kpi_id)] = (len(t), interval / 1e9, on_grid, float(1 - len(np.unique(t)) / expected))
    stats = pd.DataFrame.from_dict(rows, orient="index",
                                   columns=["n_points", "interval_s", "on_grid_ratio", "gap_ratio"])
    stats.index.name = KPI_ID
    return stats


def _unexpected_rows(res, frame: pd.DataFrame) -> list[int]:
    if res.success:
        return []
    idx = res.result.get("unexpected_index_list")
    if idx is None:
        return []
    positions = frame.index.get_indexer([i[KPI_ID] if isinstance(i, dict) else i for i in idx]) \
        if not isinstance(frame.index, pd.RangeIndex) else list(idx)
    if res.expectation_config.type == "expect_compound_columns_to_be_unique":
        keys = frame.loc[frame.index[positions], [KPI_ID, TIMESTAMP]]
        positions = list(np.asarray(positions)[keys.duplicated(keep="first").to_numpy()])
    return [int(p) for p in positions]


def _column_of(cfg) -> str | None:
    kw = cfg.kwargs
    return kw.get("column") or (",".join(kw["column_list"]) if "column_list" in kw else None)


def _kwargs(cfg) -> dict:
    return {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id", "result_format")}


def _record(res, unexpected: int) -> dict:
    cfg = res.expectation_config
    return {"expectation": cfg.type, "column": _column_of(cfg), "kwargs": _kwargs(cfg),
            "level": (cfg.meta or {}).get("level"), "success": bool(res.success), "unexpected": unexpected}


_ROW_REASONS = {
    "expect_column_values_to_not_be_null": "{column} is null or NaN",
    "expect_column_values_to_be_between": "{column} is not finite (inf or beyond +-1e300)",
    "expect_column_values_to_be_in_set": "{column} is not in {value_set}",
    "expect_compound_columns_to_be_unique": "duplicate ({column}); the first occurrence is kept",
}


def _row_reason(cfg) -> str:
    template = _ROW_REASONS.get(cfg.type, "{type} failed on column {column}")
    return template.format(type=cfg.type, column=_column_of(cfg), value_set=cfg.kwargs.get("value_set"))


def _kpi_reason(stats_row: pd.Series, cfg) -> str:
    col = cfg.kwargs["column"]
    lo, hi = cfg.kwargs.get("min_value"), cfg.kwargs.get("max_value")
    bound = f">= {lo:g}" if lo is not None else f"<= {hi:g}"
    return f"{col} = {stats_row[col]:.4g}; must be {bound}"


def quarantine_frame(rows: pd.DataFrame, reasons: pd.Series) -> pd.DataFrame:
    """``rows`` with :data:`QUARANTINE_COLUMNS`: ``reasons`` holds one (rule, column, level, reason) per row."""
    out = rows.copy()
    if out.empty:
        for c in QUARANTINE_COLUMNS:
            out[c] = pd.Series(dtype="string")
        return out
    parts = pd.DataFrame(reasons.tolist(), index=rows.index, columns=list(QUARANTINE_COLUMNS))
    for c in QUARANTINE_COLUMNS:
        out[c] = parts[c].astype("string")
    return out
