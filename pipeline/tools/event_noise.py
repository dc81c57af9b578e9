"""How noisy is a validation figure with N labelled events? The measurement behind ``evaluate.min_events``.

On a finished ``kpiguard bench`` run (its windows and saved scores), each KPI's validation rows are cut
into ``chunks`` consecutive parts; each part is scored as a whole validation split by the champion rule
(:func:`pipeline.eval.selection.champion_metric`: folds, thresholds, the bootstrap interval of
``evaluate.champion_metric``). Printed per chunk count: the median labelled events per chunk, the median
width of each detector's interval, and in how many chunks the second detector is better, or worse, than the
first beyond the noise (:func:`pipeline.eval.selection.beats`)::

    python -m pipeline.tools.event_noise /tmp/s-aiops diff_z seasonal_residual --chunks 1,2,4,8,16,32
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    import numpy as np

    from models.frame import KPI_ID
    from pipeline.data.prep import load_splits
    from pipeline.eval.protocol import calibrate
    from pipeline.eval.selection import beats, champion_metric, fold_blocks, label_events
    from pipeline.params import load_params
    from pipeline.tools.bench import bench_params, protocol_for

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_dir", type=Path)
    ap.add_argument("detectors", nargs="+")
    ap.add_argument("--chunks", default="1,2,4,8,16,32")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="section.key=value, as the CLI's")
    args = ap.parse_args(argv)
    before = json.loads((args.bench_dir / "results.json").read_text())
    base = load_params(args.params, args.overrides)
    params = bench_params(base, before["data"]["train"], before["data"]["test"], args.bench_dir,
                          protocol_for(before["data"]["train"], before["data"]["test"], before["protocol"]))
    ev = params.evaluate
    full = load_splits(Path(params.paths.windows))
    val_rows = (full["split"] == "val").to_numpy()
    calibrated = {}
    for name in args.detectors:
        raw = np.load(args.bench_dir / "work" / "scores" / f"{name}.npy")
        calibrated[name] = calibrate(full, raw, ev.calibration_for(name))[0][val_rows]
    val = full[val_rows].reset_index(drop=True)
    print("| chunks | events per chunk (median) | " + " | ".join(f"{n} interval width (median)" for n in args.detectors)
          + f" | {args.detectors[1]} vs {args.detectors[0]} beyond the noise |")
    print("|---:|---:|" + "---:|" * len(args.detectors) + "---:|")
    for chunks in (int(c) for c in args.chunks.split(",")):
        block = fold_blocks(val[KPI_ID].to_numpy(), chunks)
        events, widths, decided = [], {n: [] for n in args.detectors}, []
        for c in range(chunks):
            rows = block == c
            part = val[rows]
            figures = {n: champion_metric(part, s[rows], ev) for n, s in calibrated.items()}
            events.append(label_events(part, ev.champion_metric))
            for n, fig in figures.items():
                if fig["interval"]:
                    widths[n].append(fig["interval"][1] - fig["interval"][0])
            a, b = (figures[n] for n in args.detectors[:2])
            if a["value"] is not None and b["value"] is not None:
                decided.append((beats(b, a, 0.0, ev.bootstrap_level)["better"], beats(a, b, 0.0, ev.bootstrap_level)["better"]))
        cells = [f"{np.median(widths[n]):.3f}" if widths[n] else "–" for n in args.detectors]
        print(f"| {chunks} | {np.median(events):.0f} | " + " | ".join(cells)
              + f" | {sum(d[0] for d in decided)} better, {sum(d[1] for d in decided)} worse, of {len(decided)} |",
              flush=True)


if __name__ == "__main__":
    main()
