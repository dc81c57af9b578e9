"""Prometheus ingest throughput: 29 KPIs x 30 days at 1 minute (1,252,800 points), backfilled into a real
Prometheus with promtool, read by the ``prometheus:`` source (pipeline/data/sources.py::read_prometheus).

    .venv/bin/python docs/benchmarks/alerting/ingest.py --out docs/benchmarks/alerting/ingest.json

Prints and writes: points read, the queries it took (each under Prometheus's 11,000 points per series),
and the wall time of each of ``--repeats`` reads (median quoted in BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from pipeline.data import sources  # noqa: E402
from pipeline.io import storage  # noqa: E402
from pipeline.params import Params, parse_params  # noqa: E402
from tests.servers import openmetrics, prometheus  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kpis", type=int, default=29)
    ap.add_argument("--days", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    end = pd.Timestamp("2026-11-01", tz="UTC")
    stamps = pd.date_range(end=end - pd.Timedelta("1min"), periods=args.days * 1440, freq="1min")
    rng = np.random.default_rng(0)
    frame = pd.concat([pd.DataFrame({"kpi_id": f"kpi_{k:02d}", "timestamp": stamps,
                                     "value": np.round(rng.normal(100, 10, len(stamps)), 3)})
                       for k in range(args.kpis)], ignore_index=True)
    raw = Params().model_dump(by_alias=True)
    raw["data"]["prometheus"].update({"step": "1m", "kpi_labels": ["name"]})
    params = parse_params(raw)
    storage.configure(params.storage)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with prometheus(tmp, openmetrics(frame)) as url:
            backfill_s = time.perf_counter() - t0
            spec, times, rows = f"prometheus:{url}?query=kpi", [], 0
            for _ in range(args.repeats):
                t = time.perf_counter()
                out = sources.read_source(spec, params, stamps[0], end)
                times.append(time.perf_counter() - t)
                rows = len(out)
    steps = len(stamps)
    queries = -(-steps // (params.data.prometheus.max_points_per_query - 1))
    result = {"kpis": args.kpis, "days": args.days, "points_in": len(frame), "points_read": rows,
              "queries_per_read": queries, "read_s": [round(t, 2) for t in times],
              "median_s": round(float(np.median(times)), 2),
              "points_per_s": round(rows / float(np.median(times))), "backfill_and_start_s": round(backfill_s, 1)}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
