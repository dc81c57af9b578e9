"""``kpiguard speed``: how fast each detector trains and scores, on synthetic data.

Builds prepared frames with numpy alone (daily sine + noise + a few labelled spikes, normalised per
KPI; no other pipeline stage is involved), trains each detector briefly (``--epochs``), times
scoring of ``--points`` points and prints a markdown table::

    kpiguard speed --points 1000000 --detectors all --kpis 10

``--epochs 20 --train-points 19354 --kpis 4`` reproduces a default training run (the train split of
the default synthetic data: 4 KPIs x 28 days at 5 minutes, 60%).
"""
from __future__ import annotations

import argparse
import time

# numpy, pandas and the detectors load in the functions that use them: `kpiguard speed --help` answers
# with the standard library alone, as every other command's --help does (pipeline.cli).

PERIOD = 288  # one day at 5-minute sampling


def synthetic_frame(points: int, kpis: int, seed: int = 0):
    """A prepared frame of about ``points`` rows over ``kpis`` KPIs (vectorised over KPIs and points)."""
    import numpy as np
    import pandas as pd

    from models.frame import KPI_ID, LABEL, MISSING, RAW_VALUE, TIMESTAMP, VALUE

    rng = np.random.default_rng(seed)
    per = max(points // kpis, 1)
    t = np.arange(per)[None, :]
    amp = rng.uniform(1.0, 3.0, (kpis, 1))
    raw = 10 + amp * np.sin(2 * np.pi * t / PERIOD + rng.uniform(0, 2 * np.pi, (kpis, 1)))
    raw = raw + 0.1 * amp * rng.standard_normal((kpis, per))
    spikes = rng.random((kpis, per)) < 1 / 500
    raw = raw + spikes * 4 * amp * rng.choice([-1.0, 1.0], (kpis, per))
    value = (raw - raw.mean(1, keepdims=True)) / raw.std(1, keepdims=True)
    stamps = pd.date_range("2026-01-01", periods=per, freq="5min", tz="UTC")
    return pd.DataFrame({
        KPI_ID: pd.array(np.repeat([f"kpi_{k:03d}" for k in range(kpis)], per), dtype="string"),
        TIMESTAMP: np.tile(stamps, kpis),
        VALUE: value.ravel(),
        RAW_VALUE: raw.ravel(),
        MISSING: (rng.random(kpis * per) < 0.002),
        LABEL: spikes.ravel().astype(np.int8),
    })


def _table(rows: list[dict]) -> str:
    head = "| detector | train_s | score_s | points/s | device | torch threads |"
    lines = [head, "|---|---:|---:|---:|---|---:|"]
    for r in rows:
        lines.append(f"| {r['detector']} | {r['train_s']} | {r['score_s']} | {r['points_per_s']} | "
                     f"{r['device']} | {r['threads']} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpiguard speed", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Measure how fast each detector trains and scores, on synthetic data.",
        epilog="example:\n  kpiguard speed --points 1000000 --detectors all --kpis 10\n\n"
               "--epochs 20 --train-points 19354 --kpis 4 reproduces a default training run.")
    parser.add_argument("--points", type=int, default=1_000_000, help="points to score (default 1,000,000)")
    parser.add_argument("--detectors", default="all", help="'all' or a comma-separated list of detector names")
    parser.add_argument("--kpis", type=int, default=10, help="KPIs the points are spread over (default 10)")
    parser.add_argument("--train-points", type=int, default=20_000, help="points in the train frame (default 20,000)")
    parser.add_argument("--epochs", type=int, default=1, help="train.max_epochs for the benchmark (default 1)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: this task's share of the machine, as train.threads: null)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    import numpy as np

    from models import registry
    from models.base import SkipDetector, TrainConfig
    from pipeline import runtime

    names = registry.names() if args.detectors == "all" else [n.strip() for n in args.detectors.split(",") if n.strip()]
    unknown = [n for n in names if n not in registry.names()]
    if unknown:
        parser.error(f"unknown detector(s) {unknown}; known: {', '.join(registry.names())}")
    if args.points < 1 or args.kpis < 1 or args.train_points < args.kpis or args.epochs < 1:
        parser.error("--points, --kpis, --train-points and --epochs must be positive (and train points >= kpis)")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be positive")
    runtime.apply_threads(args.threads)  # its entry point, before torch loads: OpenMP reads its pool size once
    import torch

    train = synthetic_frame(args.train_points, args.kpis, seed=1)
    val = synthetic_frame(args.train_points // 3, args.kpis, seed=2)  # the 60/20 ratio of the default split
    frame = synthetic_frame(args.points, args.kpis, seed=3)
    train_config = TrainConfig(device=args.device, max_epochs=args.epochs, progress=False)
    print(f"scoring {len(frame):,} points over {args.kpis} KPIs; training on {len(train):,} points, "
          f"max_epochs={args.epochs}; torch {torch.__version__}", flush=True)
    rows = []
    for name in names:
        detector = registry.create(name, train_config=train_config)
        start = time.perf_counter()
        try:
            detector.fit(train, val)
        except SkipDetector as exc:
            print(f"{name}: {exc}", flush=True)
            continue
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        scores = detector.score(frame)
        if detector.device.startswith("cuda"):
            torch.cuda.synchronize()
        score_s = time.perf_counter() - start
        assert len(scores) == len(frame) and np.isfinite(scores).all(), f"{name}: bad scores"
        rows.append({"detector": name, "train_s": f"{train_s:.1f}", "score_s": f"{score_s:.1f}",
                     "points_per_s": f"{len(frame) / score_s:,.0f}", "device": detector.device,
                     "threads": torch.get_num_threads()})
        print(f"{name}: train {train_s:.1f}s, score {score_s:.1f}s", flush=True)
    print()
    print(_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
