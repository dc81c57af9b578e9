"""The ``kpiguard`` command line: one subcommand per pipeline stage, plus tools.

Every subcommand reads params.yaml (``--params``), validated on load, with ``-S section.key=value``
overrides. Bad input ends with one clear paragraph on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pipeline.contract import DataError
from pipeline.params import ParamsError, load_params

EXIT_BAD_INPUT = 2


def _params(args):
    return load_params(args.params, args.set)


def _detector_names(value: str, option: str) -> list[str]:
    """``a,b,c`` -> registered detector names, checked before any work starts.

    A name becomes a directory (``<paths.artifacts>/<name>``) that a stage replaces, so an empty or
    unknown name ("", "../x") must never get that far.
    """
    from models import registry

    names = [n.strip() for n in value.split(",")]
    bad = [n for n in names if n not in registry.names()]
    if bad:
        raise DataError(f"kpiguard {option}", "known_detector",
                        f"{', '.join(repr(n) for n in bad)} is not a registered detector; "
                        f"registered: {', '.join(registry.names())}")
    return list(dict.fromkeys(names))


def cmd_ingest(args) -> dict:
    from pipeline import ingest

    p = _params(args)
    return ingest.run(p, Path(p.paths.raw), start=args.start, end=args.end)


def cmd_validate(args) -> dict:
    from pipeline import validate

    p = _params(args)
    return validate.run(p, Path(p.paths.raw), Path(p.paths.validated), Path(p.paths.quarantine),
                        Path(p.paths.validation_report))


def cmd_windows(args) -> dict:
    from pipeline import windows

    p = _params(args)
    return windows.run(p, Path(p.paths.validated), Path(p.paths.windows))


def cmd_train(args) -> dict:
    from pipeline import train

    p = _params(args)
    names = p.train.detectors if args.detector == "all" else _detector_names(args.detector, "--detector")
    reports = [train.run(p, name, progress=not args.no_progress) for name in names]
    return {r["detector"]: {k: r.get(k) for k in ("status", "train_seconds", "device", "epochs", "reason")
                            if r.get(k) is not None} for r in reports}


def cmd_evaluate(args) -> dict:
    from pipeline import evaluate

    p = _params(args)
    report = evaluate.run(p)
    print(evaluate.leaderboard(report))
    return {"best_on_val": report["best_on_val"], "metrics": f"{p.paths.evaluation}/metrics.json"}


def cmd_register(args) -> dict:
    from pipeline import register

    report = register.run(_params(args))
    return {"serving": report["serving"],
            "detectors": {k: {f: v.get(f) for f in ("status", "version", "decision") if v.get(f) is not None}
                          for k, v in report["detectors"].items()}}


def cmd_promote(args) -> dict:
    from pipeline import register, tracking

    return register.promote(tracking.connect(_params(args).mlflow), args.model, args.version)


def cmd_rollback(args) -> dict:
    from pipeline import register, tracking

    return register.rollback(tracking.connect(_params(args).mlflow), args.model)


def cmd_score(args) -> dict:
    from pipeline import score

    p = _params(args)
    start, end = score.day_range(args.date, args.start, args.end)
    return score.run(p, args.input or p.score.input, start, end, args.output or p.score.output,
                     args.model_uri or p.score.model_uri)


def cmd_bench(args) -> dict:
    from pipeline import bench
    from models import registry

    p = _params(args)
    command = bench.command_line(sys.argv[1:] if args.argv is None else args.argv)
    if args.scores_from:
        report = bench.rescore(p, [Path(d) for d in args.scores_from], Path(args.out), command=command)
        print((Path(args.out) / "results.md").read_text())
        return {"results": str(Path(args.out) / "results.json"), "wall_s": report["wall_s"]}
    if not args.train:
        raise ParamsError("kpiguard bench: give --train SPEC (or --scores-from DIR to rescore a finished run)")
    names = registry.names() if args.detectors == "all" else _detector_names(args.detectors, "--detectors")
    report = bench.run(p, args.train, args.test, names, Path(args.out), protocol=args.protocol,
                       command=command, progress=not args.no_progress)
    print((Path(args.out) / "results.md").read_text())
    return {"results": str(Path(args.out) / "results.json"), "wall_s": report["wall_s"]}


def cmd_speed(args) -> None:
    from pipeline import speed

    speed.main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpiguard", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    common.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. -S windows.length=96 (repeatable)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", parents=[common], help="read the train/test sources into data/raw")
    p.add_argument("--start", help="first timestamp to read (synthetic: generate from here)")
    p.add_argument("--end", help="end timestamp, exclusive")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("validate", parents=[common], help="Great Expectations checks; quarantine bad rows")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("windows", parents=[common], help="regularise, split, normalise, window")
    p.set_defaults(func=cmd_windows)

    p = sub.add_parser("train", parents=[common], help="fit detectors on the windows stage's splits")
    p.add_argument("--detector", default="all", help="a registered name, a,b,c, or all (train.detectors)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", parents=[common],
                       help="score, threshold on validation, report test metrics and the leaderboard")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("register", parents=[common],
                       help="track runs in MLflow, register versions, gate champion / challenger")
    p.set_defaults(func=cmd_register)

    p = sub.add_parser("promote", parents=[common], help="make a registered version the champion")
    p.add_argument("--model", default="kpiguard", help="registered model name (default: kpiguard)")
    p.add_argument("--version", required=True, help="version number")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser("rollback", parents=[common], help="move champion back to the previous champion")
    p.add_argument("--model", default="kpiguard", help="registered model name (default: kpiguard)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser("score", parents=[common],
                       help="score a day or a date range with the champion; Parquet partitioned by date")
    p.add_argument("--input", help="source spec (default: score.input)")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--date", help="YYYY-MM-DD: score that UTC day")
    when.add_argument("--start", help="first day of a range (with --end, exclusive)")
    p.add_argument("--end", help="end of the range, exclusive")
    p.add_argument("--output", help="local directory or s3:// prefix (default: score.output)")
    p.add_argument("--model-uri", help="default: score.model_uri (models:/kpiguard@champion)")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("bench", parents=[common],
                       help="ingest → validate → windows → train → evaluate on any sources, outside DVC")
    p.add_argument("--train", help="source spec, e.g. nab:../shared/datasets/nab (required unless --scores-from)")
    p.add_argument("--scores-from", metavar="DIR", action="append",
                   help="rescore a finished benchmark's saved scores with today's evaluate settings "
                        "(e.g. -S evaluate.calibration.method=ecdf): no ingest, no training; repeat to "
                        "combine runs on the same data")
    p.add_argument("--test", help="a separate test source, scored whole")
    p.add_argument("--detectors", default="all", help="a,b,c or all (every registered detector)")
    p.add_argument("--out", default="bench-results", help="output directory (results.json, results.md)")
    p.add_argument("--protocol", choices=["auto", "split", "nab"], default="auto",
                   help="auto: nab for nab: sources without --test, else split")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("speed", help="benchmark training and scoring speed of the detectors",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_speed)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("great_expectations", "matplotlib", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        result = args.func(args)
    except (DataError, ParamsError) as exc:
        print(f"kpiguard {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
