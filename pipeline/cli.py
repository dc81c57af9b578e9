"""The ``kpiguard`` command line: one subcommand per pipeline stage, plus tools.

Every subcommand reads params.yaml (``--params``), validated on load, with ``-S section.key=value``
overrides. Bad input ends with one clear paragraph on stderr and exit code 2, never a traceback; a
command that ran but produced nothing usable (no detector scored or tracked, no row scored)
ends with one line saying why and exit code 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import NamedTuple

from pipeline import summary

# Nothing heavier than the standard library above: `kpiguard --help` answers without pandas or pydantic,
# and each command imports what it needs (torch, GX, MLflow) only once its params and arguments are good.

# Exit codes: 0 done; 1 ran but produced nothing usable (one line says why); 2 something the user can fix
# (input, params, model, server, disk); 70 an internal error (a bug: -v shows its traceback; sysexits'
# EX_SOFTWARE); 130 interrupted.
EXIT_NOTHING_USABLE, EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_INTERRUPTED = 1, 2, 70, 130


def _params(args, work: str | None = None):
    """params.yaml with the ``-S`` overrides, validated, then applied to this process (storage bounds,
    MLflow client environment and, for ``work`` "train" or "score", the thread pools: before torch loads)."""
    from pipeline import runtime
    from pipeline.params import load_params

    p = load_params(args.params, args.set)
    runtime.apply(p, work)
    return p


class Output(NamedTuple):
    """What a subcommand prints: ``summary`` for people (one line per thing done), ``data`` for ``--json``
    (the stage's full result, as in its report file)."""

    summary: str
    data: dict


def cmd_ingest(args) -> Output:
    p = _params(args)
    from pipeline.stages import ingest

    manifest = ingest.run(p, Path(p.paths.raw), start=args.start, end=args.end)
    return Output(summary.ingest(manifest, p.paths.raw), manifest)


def cmd_validate(args) -> Output:
    p = _params(args)
    from pipeline.stages import validate

    result = validate.run(p, Path(p.paths.raw), Path(p.paths.validated), Path(p.paths.quarantine),
                          Path(p.paths.validation_report))
    return Output(summary.validate(result, p.paths.validated, p.paths.validation_report), result)


def cmd_windows(args) -> Output:
    p = _params(args)
    from pipeline.stages import windows

    result = windows.run(p, Path(p.paths.validated), Path(p.paths.windows))
    return Output(summary.windows(result, p.paths.windows), result)


def cmd_train(args) -> Output:
    chosen = None if args.detector == "all" else _detectors(args.detector, [])  # a bad name answers first
    p = _params(args, "train")
    names = chosen or list(p.train.detectors)
    from pipeline.stages import train

    reports = []
    for name in names:
        reports.append(train.run(p, name, progress=_progress(args)))
        if not args.json:  # each detector's line as soon as it is done
            print(summary.train(reports[-1], p.paths.artifacts), flush=True)
    return Output("", {r["detector"]: r for r in reports})


def cmd_evaluate(args) -> Output:
    p = _params(args, "score")
    from pipeline.stages import evaluate

    report = evaluate.run(p, progress=_progress(args))
    return Output(summary.evaluate(report, p.paths.evaluation), report)


def cmd_register(args) -> Output:
    p = _params(args, "score")
    from pipeline.stages import register

    report = register.run(p)
    return Output(summary.register(report, p.paths.register_report), report)


def cmd_promote(args) -> Output:
    from pipeline.serving import registry, tracking

    r = registry.promote(tracking.connect(_params(args).mlflow), args.model, args.version)
    return Output(f"promote: {r['model']}@champion = v{r['champion']} (was v{r['previous_champion'] or '–'})", r)


def cmd_rollback(args) -> Output:
    from pipeline.serving import registry, tracking

    r = registry.rollback(tracking.connect(_params(args).mlflow), args.model)
    return Output(f"rollback: {r['model']}@champion = v{r['champion']} (was v{r['rolled_back_from']})", r)


def cmd_score(args) -> Output:
    p = _params(args, "score")
    from pipeline.batch import score

    start, end = score.day_range(args.date, args.start, args.end)
    output = args.output or p.score.output
    result = score.run(p, args.input or p.score.input, start, end, output,
                       args.model_uri or p.score.model_uri, progress=_progress(args))
    from pipeline.batch import alerts, daily

    if alerts.enabled(p):  # each day once its partition is written; a failure leaves the partitions in place
        result["alerts"] = []
        for part in result["partitions"]:
            try:
                result["alerts"].append(daily.push_day(p, part["date"], output=output))
            except alerts.AlertError as exc:
                written = ", ".join(q["path"] for q in result["partitions"])
                raise alerts.AlertError(exc.source, exc.rule, f"{exc.detail} (the scores are written: {written}; "
                                        f"`kpiguard alert --date {part['date']}` sends the rest)",
                                        summary=exc.summary) from None
    return Output(summary.score(result), result)


def _day_option(command: str, date: str) -> str:
    """``--date`` of ``command`` as YYYY-MM-DD; a bad day is a DataError naming that command's option."""
    from pipeline.batch import score
    from pipeline.errors import DataError

    try:
        day, _ = score.day_range(date)
    except DataError as exc:  # the rule and detail are score's; the option is the command's
        raise DataError(f"kpiguard {command} --date", exc.rule, exc.detail) from None
    return day.date().isoformat()


def cmd_report(args) -> Output:
    p = _params(args)
    from pipeline.batch import daily

    result = daily.build_day_report(p, _day_option("report", args.date), args.output)
    return Output(summary.report(result), result)


def cmd_alert(args) -> Output:
    p = _params(args)
    from pipeline.batch import daily

    result = daily.push_day(p, _day_option("alert", args.date), output=args.output)
    return Output(summary.alert(result), result)


def cmd_review(args) -> Output:
    p = _params(args)
    from pipeline.review import service

    if args.action == "list":
        result = service.day_review(p, _day_option("review list", args.date), args.output)
    elif args.action == "verdict":
        result = service.give_verdict(p, _day_option("review verdict", args.date), args.incident, args.verdict,
                                      _reviewer(args), note=args.note, kpi=args.kpi, output=args.output,
                                      start=args.start, end=args.end)
    elif args.action == "miss":
        result = service.report_miss(p, args.kpi, args.start, args.end, _reviewer(args), note=args.note)
    elif args.action == "done":
        result = service.mark_reviewed(p, _day_option("review done", args.date), _reviewer(args))
    elif args.action == "mutes":
        result = service.mute_overview(p, all_rules=args.all)
    elif args.action == "mute":
        incidents = [i for i in (args.incidents or "").split(",") if i.strip()]
        result = service.confirm_mute(p, args.kpi, args.direction, args.from_time, args.to_time, args.max_severity,
                                      _reviewer(args), note=args.note, incidents=incidents)
    elif args.action == "unmute":
        result = service.lift_mute(p, args.rule, _reviewer(args))
    else:
        result = service.export(p, args.out)
    return Output(summary.review(args.action, result), result)


def _reviewer(args) -> str:
    """--reviewer, else the login name: a verdict always says who gave it."""
    return args.reviewer or os.environ.get("KPIGUARD_REVIEWER") or os.environ.get("USER") or os.environ.get("LOGNAME") or ""


def cmd_serve(args) -> Output:
    p = _params(args)
    from pipeline.review import server

    result = server.serve(p, host=args.host, port=args.port)
    return Output(f"serve: stopped after {result.get('requests', 0)} requests", result)


def cmd_bench(args) -> Output:
    from models import registry

    command = bench_command(args)
    if args.scores_from:
        p = _params(args, "score")
        from pipeline.tools import bench

        report = bench.rescore(p, [Path(d) for d in args.scores_from], Path(args.out), command=command,
                               label_free=args.label_free)
        return Output(summary.bench(report, args.out), report)
    if not args.train:
        from pipeline.errors import ParamsError

        raise ParamsError("kpiguard bench: give --train SPEC (or --scores-from DIR to rescore a finished run)")
    names = _detectors(args.detectors, registry.names(), "--detectors")
    p = _params(args, "train")  # the spawned detector processes inherit the pool sizes
    from pipeline.tools import bench

    report = bench.run(p, args.train, args.test, names, Path(args.out), protocol=args.protocol,
                       command=command, progress=_progress(args), label_free=args.label_free)
    return Output(summary.bench(report, args.out), report)


def bench_command(args) -> str:
    import shlex

    argv = sys.argv[1:] if args.argv is None else args.argv
    return "kpiguard " + " ".join(shlex.quote(a) for a in argv)


def _detectors(arg: str, default: list[str], option: str = "--detector") -> list[str]:
    """``all`` or ``a,b,c`` -> registered detector names, checked before any work starts.

    A name becomes a directory (``<paths.artifacts>/<name>``) that a stage replaces, so an empty or
    unknown name ("", "../x") must never get that far: a usage error (exit 2), naming the rule.
    """
    from models import registry

    if arg == "all":
        return list(default)
    names = [n.strip() for n in arg.split(",")]
    bad = [n for n in names if n not in registry.names()]
    if bad:
        from pipeline.errors import DataError

        raise DataError(f"kpiguard {option}", "known_detector",
                        f"unknown detector(s) {', '.join(repr(n) for n in bad)}; "
                        f"registered: {', '.join(registry.names())}")
    return list(dict.fromkeys(names))


def _progress(args) -> bool:
    """Progress bars only for a person watching: stderr is a terminal, and --no-progress was not given.
    CI logs, Airflow task logs and DVC's captured output stay free of bar redraws."""
    return not args.no_progress and sys.stderr.isatty()


def nothing_usable(command: str, data: dict) -> str | None:
    """Why a command that ran produced nothing to use, in one line; None when it did.

    A skipped detector is not a failure (``train@<supervised>`` on unlabelled data is skipped by design,
    and the run goes on), but an evaluate that scored none of them, a register that tracked none, a
    score that scored no row or a bench whose every detector failed is: the exit code says so, to a
    person, to ``dvc repro`` and to an Airflow task."""
    if command == "evaluate":
        detectors = {n: r for n, r in data["detectors"].items() if n != "random"}
        if not any(r.get("status") == "ok" for r in detectors.values()):
            return f"0 of {len(detectors)} detectors scored ({_reasons(detectors)})"
    elif command == "register":
        detectors = data["detectors"]
        if not any(r.get("status") == "ok" for r in detectors.values()):
            return f"0 of {len(detectors)} detectors tracked ({_reasons(detectors)})"
    elif command == "score":
        if not sum(p["rows"] for p in data["partitions"]):
            return f"0 rows scored in {len(data['partitions'])} partition(s): every row was quarantined"
    elif command == "alert":
        if not data["sinks"]:
            return "no alert sink configured: set alerts.alertmanager.url or alerts.webhook.url"
    elif command == "bench":
        rows = {n: r for n, r in data["summary"].items() if n != "random"}
        if not any(r.get("status") == "ok" for r in rows.values()):
            return f"0 of {len(rows)} detectors benchmarked ({_reasons(rows)})"
    return None


def _reasons(results: dict) -> str:
    return "; ".join(f"{n}: {r.get('status', 'missing')}" + (f": {r['reason']}" if r.get("reason") else "")
                     for n, r in results.items()) or "none configured"


def cmd_speed(args) -> None:
    from pipeline.tools import speed

    speed.main(args.rest)


def _ours_or_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name.split(".")[0] in ("pipeline", "models", "__main__")


# One line on what each command does (its --help description and its line in `kpiguard --help`) and an
# example (its --help epilog): plain text, as a terminal shows it.
COMMANDS = {
    "ingest": ("Read the train (and test) sources into data/raw as Parquet, with a manifest.",
               "kpiguard ingest -S data.train=nab:../shared/datasets/nab"),
    "validate": ("Run the Great Expectations suites; quarantine failing rows and KPIs with the reason.",
                 "kpiguard validate"),
    "windows": ("Regularise each KPI, split it chronologically, normalise with train statistics, build windows.",
                "kpiguard windows -S windows.length=96"),
    "train": ("Fit detectors on the windows stage's train and validation splits.",
              "kpiguard train --detector robust_zscore,isolation_forest"),
    "evaluate": ("Score every trained detector, threshold on validation, write the metrics and the leaderboard.",
                 "kpiguard evaluate -S evaluate.threshold.method=quantile"),
    "register": ("Track each detector's run in MLflow, register new versions, gate champion or challenger.",
                 "kpiguard register"),
    "promote": ("Make a registered version the champion (records the previous one for rollback).",
                "kpiguard promote --model kpiguard --version 4"),
    "rollback": ("Move the champion alias back to the previous champion.",
                 "kpiguard rollback --model kpiguard"),
    "score": ("Score a day or a date range with a registered model; one Parquet partition per day.",
              "kpiguard score --date 2026-01-28 --json"),
    "report": ("Build a scored day's anomaly report (HTML and JSON): its incidents, most severe first.",
               "kpiguard report --date 2026-01-28"),
    "alert": ("Send a scored day's incidents to Alertmanager and/or a webhook (alerts.*), each exactly once.",
              "kpiguard alert --date 2026-01-28 -S alerts.alertmanager.url=http://127.0.0.1:9093"),
    "review": ("List a day's incidents with their verdicts, give a verdict, report a miss, mute a repeated false "
               "alarm, export the labels.",
               "kpiguard review verdict --date 2026-01-28 --incident inc-20260128-1010-1a2b3c4d --verdict confirmed"),
    "serve": ("Serve the daily reports with a verdict button on each incident and a missed-anomaly form.",
              "kpiguard serve --port 8765   (with KPIGUARD_REVIEW_TOKEN set: writes need it)"),
    "bench": ("Run ingest, validate, windows, train and evaluate on any sources, outside DVC.",
              "kpiguard bench --train nab:../shared/datasets/nab --detectors robust_zscore,diff_z"),
    "speed": ("Measure how fast each detector trains and scores, on synthetic data.",
              "kpiguard speed --points 1000000 --detectors all --kpis 10"),
}

DESCRIPTION = """kpiguard finds anomalies in KPI time series. One command per pipeline stage (ingest, validate,
windows, train, evaluate, register), the model registry (promote, rollback), batch scoring, its daily
report and alerts (score, report, alert), reviews (review, serve) and tools (bench, speed). Each reads params.yaml; -S section.key=value overrides a parameter."""

EPILOG = """examples:
  kpiguard ingest && kpiguard validate        run the first two stages on params.yaml
  kpiguard score --date 2026-01-28 --json      score a day with the champion, print the result as JSON
  kpiguard report --date 2026-01-28            that day's report: reports/daily/2026-01-28.html
  kpiguard COMMAND --help                      a command's options and an example

exit codes: 0 done; 1 ran but produced nothing usable (one line says why); 2 bad input, params, model,
server or disk (one paragraph says what to fix); 70 an internal error (-v shows its traceback); 130 interrupted."""


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("kpiguard")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


class _Version(argparse.Action):
    """``--version``, looking the version up only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"kpiguard {version()}")
        parser.exit()


def _command(sub, name: str, **kwargs) -> argparse.ArgumentParser:
    line, example = COMMANDS[name]
    return sub.add_parser(name, help=line[0].lower() + line[1:].rstrip("."), description=line,
                          epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter,
                          **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kpiguard", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_Version, help="print kpiguard's version and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    common.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. -S windows.length=96 (repeatable)")
    common.add_argument("--json", action="store_true",
                        help="print the full result as JSON instead of the one-line summary")
    common.add_argument("--no-progress", action="store_true",
                        help="no progress bars (they show only when stderr is a terminal anyway)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "ingest", parents=[common])
    p.add_argument("--start", help="first timestamp to read (synthetic: generate from here)")
    p.add_argument("--end", help="end timestamp, exclusive")
    p.set_defaults(func=cmd_ingest)

    p = _command(sub, "validate", parents=[common])
    p.set_defaults(func=cmd_validate)

    p = _command(sub, "windows", parents=[common])
    p.set_defaults(func=cmd_windows)

    p = _command(sub, "train", parents=[common])
    p.add_argument("--detector", default="all", help="a registered name, a,b,c, or all (train.detectors)")
    p.set_defaults(func=cmd_train)

    p = _command(sub, "evaluate", parents=[common])
    p.set_defaults(func=cmd_evaluate)

    p = _command(sub, "register", parents=[common])
    p.set_defaults(func=cmd_register)

    p = _command(sub, "promote", parents=[common])
    p.add_argument("--model", default="kpiguard", help="registered model name (default: kpiguard)")
    p.add_argument("--version", required=True, help="version number")
    p.set_defaults(func=cmd_promote)

    p = _command(sub, "rollback", parents=[common])
    p.add_argument("--model", default="kpiguard", help="registered model name (default: kpiguard)")
    p.set_defaults(func=cmd_rollback)

    p = _command(sub, "score", parents=[common])
    p.add_argument("--input", help="source spec (default: score.input)")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--date", help="YYYY-MM-DD: score that UTC day")
    when.add_argument("--start", help="first day of a range (with --end, exclusive)")
    p.add_argument("--end", help="end of the range, exclusive")
    p.add_argument("--output", help="local directory or s3:// prefix (default: score.output)")
    p.add_argument("--model-uri", help="default: score.model_uri (models:/kpiguard@champion)")
    p.set_defaults(func=cmd_score)

    p = _command(sub, "report", parents=[common])
    p.add_argument("--date", required=True, help="YYYY-MM-DD: the scored UTC day to report")
    p.add_argument("--output", help="the scores dataset it was written to (default: score.output)")
    p.set_defaults(func=cmd_report)

    p = _command(sub, "alert", parents=[common])
    p.add_argument("--date", required=True, help="YYYY-MM-DD: the scored UTC day whose incidents to send")
    p.add_argument("--output", help="the scores dataset it was written to (default: score.output)")
    p.set_defaults(func=cmd_alert)

    p = _command(sub, "review", parents=[common])
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    who = argparse.ArgumentParser(add_help=False)
    who.add_argument("--reviewer", help="who gives it (default: $KPIGUARD_REVIEWER, else the login name)")
    who.add_argument("--note", help="a few words kept with it")
    a = actions.add_parser("list", parents=[common], help="the day's incidents and their verdicts")
    a.add_argument("--date", required=True, help="YYYY-MM-DD: the scored UTC day")
    a.add_argument("--output", help="the scores dataset it was written to (default: score.output)")
    a = actions.add_parser("verdict", parents=[common, who], help="confirm or dismiss an incident")
    a.add_argument("--date", required=True, help="YYYY-MM-DD: the incident's day (its report)")
    a.add_argument("--incident", required=True, help="the incident id, as the report and `review list` show it")
    a.add_argument("--verdict", required=True, choices=["confirmed", "false_alarm"])
    a.add_argument("--kpi", help="only this KPI of the incident (default: all its KPIs)")
    a.add_argument("--start", help="the anomaly's own start, where it began before the alarm (ISO, UTC unless it "
                   "says otherwise; default: the incident's span)")
    a.add_argument("--end", help="the anomaly's own end (ISO, inclusive; with --start)")
    a.add_argument("--output", help="the scores dataset it was written to (default: score.output)")
    a = actions.add_parser("miss", parents=[common, who], help="report an anomaly no incident caught")
    a.add_argument("--kpi", required=True)
    a.add_argument("--start", required=True, help="ISO time, UTC unless it says otherwise")
    a.add_argument("--end", required=True, help="ISO time (inclusive)")
    a = actions.add_parser("done", parents=[common, who],
                           help="mark a day reviewed: what nobody flagged on it is normal")
    a.add_argument("--date", required=True, help="YYYY-MM-DD")
    a = actions.add_parser("mutes", parents=[common],
                           help="the mute rules repeated dismissals suggest (each as a ready command) and those confirmed")
    a.add_argument("--all", action="store_true", help="list lifted rules too")
    a = actions.add_parser("mute", parents=[common, who],
                           help="confirm a mute rule: matching incidents are reported apart and not alerted")
    a.add_argument("--kpi", required=True)
    a.add_argument("--direction", required=True, help="up, down or any: the observed value at the peak against the "
                   "expected one")
    a.add_argument("--from", dest="from_time", required=True, metavar="HH:MM",
                   help="the window's start, time of day in UTC")
    a.add_argument("--to", dest="to_time", required=True, metavar="HH:MM",
                   help="its end (inclusive; before --from: the window wraps past midnight)")
    a.add_argument("--max-severity", required=True, help="mute only KPI incidents at most this many times their threshold")
    a.add_argument("--incidents", help="ID,ID: the dismissed incidents the rule is made of (a suggestion's)")
    a = actions.add_parser("unmute", parents=[common, who], help="lift a mute rule (it stays on record, disabled)")
    a.add_argument("--rule", required=True, help="the rule id, as `review mutes` lists it")
    a = actions.add_parser("export", parents=[common], help="write the label set (paths.labels; DVC stage labels)")
    a.add_argument("--out", help="directory (default: paths.labels)")
    p.set_defaults(func=cmd_review)

    p = _command(sub, "serve", parents=[common])
    p.add_argument("--host", help="default: reviews.host (127.0.0.1)")
    p.add_argument("--port", type=int, help="default: reviews.port")
    p.set_defaults(func=cmd_serve)

    p = _command(sub, "bench", parents=[common])
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
    p.add_argument("--label-free", action="store_true",
                   help="remove the train and validation labels after the windows step: the label-free path "
                        "(alarm budget, default detector), scored on the test labels")
    p.set_defaults(func=cmd_bench)

    # `kpiguard speed ...` goes to speed's own parser (main); this entry lists it in `kpiguard --help`.
    p = _command(sub, "speed", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_speed)
    return parser


def main(argv: list[str] | None = None) -> int:
    rest = sys.argv[1:] if argv is None else list(argv)
    if rest[:1] == ["speed"]:
        # speed has its own parser; argparse's REMAINDER would not hand it options like --points.
        from pipeline.tools import speed

        return speed.main(rest[1:])
    args = build_parser().parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if not args.verbose:
        # Libraries' INFO chatter (GX's temp dirs, MLflow's table migrations) is not what a stage did; the
        # handler filters it whatever levels the libraries set on their own loggers. -v shows everything.
        for handler in logging.getLogger().handlers:
            handler.addFilter(_ours_or_warning)
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # MLflow logs through a handler of its own
    from pipeline.errors import KpiguardError

    try:
        result = args.func(args)
    except KpiguardError as exc:
        print(f"kpiguard {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # the machine, not kpiguard: a full disk, a permission, a vanished file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"kpiguard {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"kpiguard {args.command}: interrupted; outputs are written whole or not at all, so a rerun "
              "starts clean", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug in kpiguard: one paragraph for the user, the traceback with -v
        if args.verbose:
            import traceback

            traceback.print_exc(file=sys.stderr)
        print(f"kpiguard {args.command}: internal error (a bug in kpiguard, not in your input): "
              f"{type(exc).__name__}: {exc}; rerun with -v for the traceback and report it", file=sys.stderr)
        return EXIT_INTERNAL
    if result is None:  # speed prints its own table
        return 0
    if args.json:
        print(json.dumps(result.data, indent=2, default=str))
    elif result.summary:
        print(result.summary)
    why = nothing_usable(args.command, result.data)
    if why:  # after the result, which says what each detector or partition did
        print(f"kpiguard {args.command}: nothing usable: {why}", file=sys.stderr)
        return EXIT_NOTHING_USABLE
    return 0


if __name__ == "__main__":
    sys.exit(main())
