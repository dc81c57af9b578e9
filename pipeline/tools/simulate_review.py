"""The simulated-review benchmark: how fast do reviewers' verdicts lift the served model to a labelled one?

A labelled corpus plays a team's KPIs with every label hidden from training; the labels are the truth a
simulated reviewer answers from, and the truth the served model is scored against::

    python -m pipeline.tools.simulate_review --train aiops:../shared/datasets/aiops2018/phase2_train.csv.gz \\
        --out /tmp/review-aiops --rounds 4 --round-length 7D --history 30D \\
        --detectors ensemble,stacked_gbdt,diff_z,seasonal_residual -S evaluate.default_detector=ensemble

**The timeline.** Each KPI's last ``--final-fraction`` of its time span is the *final block*, scored by
every round's served model and never reviewed. The KPIs are moved in time by whole ``--shift-unit``s
(weekday and time of day are kept) so that their final blocks start together, at one midnight ``F``;
round ``k`` (1..R) is the ``--round-length`` span ending ``(R - k) * length`` before ``F``, and the
history the first model learns from is the ``--history`` before round 1. A KPI with less than
``--min-history`` of history is left out (and listed).

**Each round** ``r = 0..R`` is the product's own path, run by :func:`pipeline.tools.bench.run`:

1. train on everything before round ``r + 1`` (history and reviewed rounds), labels hidden, with the
   review store's label set merged by the ingest stage (:func:`pipeline.stages.ingest.with_reviewed_labels`,
   the same code as ``dvc repro``): too few reviewed events and the label-free default serves; enough and
   the supervised and label-tuned rows compete under the noise-aware champion rule;
2. the champion, with its validation threshold, scores round ``r + 1`` and the final block (``aiops_f1``, the
   published rule, and event recall and precision, against the hidden labels);
3. the simulated reviewer opens round ``r + 1``'s incidents (:func:`pipeline.batch.incidents.incidents`, as the
   daily report shows them) in a :class:`pipeline.review.store.ReviewStore` and, per incident KPI, confirms it
   when the hidden labels hold an anomaly in its span and dismisses it otherwise; each labelled segment no
   incident covers is reported as a miss with probability ``--miss-probability``; every day of the round is
   marked reviewed; the label set is exported (:func:`pipeline.review.service.export`) for the next round.

**The ceiling**: ``stacked_gbdt`` trained on all of history and rounds with every label, scored on the same
final block. Each final-block figure has its bootstrap interval over the block's labelled segments, and its
share of the ceiling the interval of the paired draws' ratio (:func:`add_intervals`); every scored row's own
final-block figure is recorded beside the served one, as an **oracle** view (test labels) of what the
champion rule could have picked. ``out/results.json`` holds every round; ``out/results.md`` the table;
``--rescore`` recomputes both from a finished run's saved scores.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from models.frame import KPI_ID, LABEL, MISSING, TIMESTAMP, VALUE
from pipeline.io.outputs import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

CEILING = "stacked_gbdt"
REPORTED_METRICS = ("aiops_f1", "nab_standard", "rpa_f1", "event_recall", "point_f1")  # thresholded: alarms are served
REVIEWER = "simulated-reviewer"
CONFIRMS = {True: "the anomaly's extent", False: "the alarms' span"}  # what a confirmation's label covers


def timeline(truth: pd.DataFrame, rounds: int, length: pd.Timedelta, history: pd.Timedelta | None,
             final_fraction: float, shift_unit: pd.Timedelta, min_history: pd.Timedelta) -> dict:
    """Per KPI, its shift (whole ``shift_unit``\\ s) and the shared instants: ``final`` (F), ``rounds``
    (R + 1 boundaries, the last one F), ``start`` (history start, None: all). KPIs with less than
    ``min_history`` before round 1 are ``dropped``."""
    span = truth.groupby(KPI_ID, observed=True)[TIMESTAMP].agg(["min", "max"])
    final_at = span["min"] + (span["max"] - span["min"]) * (1.0 - final_fraction)
    final = final_at.iloc[0].ceil("D")
    shifts = ((final - final_at) / shift_unit).round().astype(int) * shift_unit
    first_round = final - rounds * length
    start = None if history is None else first_round - history
    have = (first_round - (span["min"] + shifts)).clip(lower=pd.Timedelta(0))
    if history is not None:
        have = have.clip(upper=history)
    keep = have >= min_history
    return {"final": final, "rounds": [first_round + k * length for k in range(rounds + 1)], "start": start,
            "shifts": {str(k): v for k, v in shifts[keep].items()},
            "dropped": {str(k): f"{h} of history before round 1, fewer than --min-history {min_history}"
                        for k, h in have[~keep].items()}}


def shifted(truth: pd.DataFrame, plan: dict) -> pd.DataFrame:
    kpis = truth[KPI_ID].astype(str)
    keep = kpis.isin(plan["shifts"]).to_numpy()
    out = truth.loc[keep, [KPI_ID, TIMESTAMP, VALUE, LABEL]].copy()
    out[KPI_ID] = out[KPI_ID].astype(str)
    out[TIMESTAMP] = out[TIMESTAMP] + out[KPI_ID].map(plan["shifts"])
    if plan["start"] is not None:
        out = out[out[TIMESTAMP] >= plan["start"]]
    out[LABEL] = out[LABEL].astype("int8")
    return out.sort_values([KPI_ID, TIMESTAMP], kind="stable").reset_index(drop=True)


def duration(option: str, text: str) -> pd.Timedelta:
    """``text`` as a positive duration, or a ValueError naming ``option``."""
    try:
        value = pd.Timedelta(text)
    except (ValueError, TypeError):
        raise ValueError(f"{option} {text!r} is not a duration such as 7D, 12h or 30min") from None
    if value <= pd.Timedelta(0):
        raise ValueError(f"{option} {text!r} must be positive")
    return value


def write_source(frame: pd.DataFrame, path: Path, labels: bool) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    (frame if labels else frame.drop(columns=LABEL)).to_parquet(path, index=False)
    return f"csv:{path}"


def served_alarms(params, name: str, full: pd.DataFrame, raw_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, object]:
    """(calibrated scores, alarms, threshold) of every row, as the evaluate stage sets them for ``name``."""
    from pipeline.eval.protocol import evaluate_scores
    from pipeline.eval.thresholds import Threshold

    result, calibrated = evaluate_scores(name, full, raw_scores, params, folds=1)
    threshold = Threshold.from_dict(result["threshold"])
    return calibrated, threshold.apply(calibrated, full[KPI_ID].to_numpy()), threshold


def block_metrics(part: pd.DataFrame, alarms: np.ndarray, delay: int, metric: str = "aiops_f1") -> dict:
    """A block's figures against the hidden labels: ``metric`` (the headline, by its published rule; NAB's
    with no probation, since the block follows the history the model learnt from), ``aiops_f1``, event
    recall and precision, the labelled segments and the alarm rate."""
    from pipeline.eval import metrics
    from pipeline.eval.selection import kpi_points_per_day
    from pipeline.eval.thresholds import alarms_per_kpi_day

    args = (part[LABEL].to_numpy(), alarms, part[MISSING].to_numpy(), part[KPI_ID].to_numpy())
    headline = metrics.METRICS[metric].compute(*args, delay=delay, probation=0)
    return {"metric": headline, "aiops_f1": metrics.aiops_f1(*args, delay=delay),
            "event_recall": metrics.event_recall(*args),
            "event_precision": metrics.event_precision(*args), "segments": int(_segments(part).shape[0]),
            "alarms_per_kpi_day": alarms_per_kpi_day(alarms, args[2], args[3], kpi_points_per_day(part))}


def block_draws(part: pd.DataFrame, alarms: np.ndarray, metric: str, ev) -> np.ndarray | None:
    """The headline's bootstrap draws over the block's labelled segments (``evaluate.bootstrap_draws`` and
    ``bootstrap_seed``, as every champion figure's: the same seed for every model, so two models' draws on
    one block are paired); None for a metric without a segment decomposition (``nab_standard``)."""
    from pipeline.eval import bootstrap as B
    from pipeline.eval.selection import segment_f1_draws

    if metric not in B.BOOTSTRAP_METRICS:
        return None
    return segment_f1_draws(part[LABEL].to_numpy(), alarms, part[MISSING].to_numpy(dtype=bool),
                            part[KPI_ID].to_numpy(), metric, ev)


def add_intervals(block: dict, draws: np.ndarray | None, ceiling_draws: np.ndarray | None, level: float) -> dict:
    """``block`` with the ``level`` interval of its headline (``interval``) and of its share of the ceiling
    (``share_interval``: the paired draws' ratio), where there are draws."""
    from pipeline.eval import bootstrap as B

    if draws is None:
        return block
    block["interval"] = B.interval(draws, level)
    if ceiling_draws is not None and len(ceiling_draws) == len(draws):
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(ceiling_draws > 0, draws / ceiling_draws, np.nan)
        block["share_interval"] = B.interval(ratio, level)
    return block


def detector_finals(params, full: pd.DataFrame, names, round_dir: Path, rows: np.ndarray, delay: int,
                    metric: str) -> dict:
    """Every scored detector's headline figure on ``rows`` (the final block) with its own validation threshold:
    test labels score it, so it is an **oracle** view of what the champion rule could have picked, never an
    input to it."""
    out = {}
    for name in names:
        path = round_dir / "work" / "scores" / f"{name}.npy"
        if not path.exists():
            continue
        _, alarms, _ = served_alarms(params, name, full, np.load(path))
        out[name] = block_metrics(full[rows], alarms[rows], delay, metric)["metric"]
    return out


def review_round(store, part: pd.DataFrame, scores: np.ndarray, alarms: np.ndarray, threshold, gap,
                 miss_probability: float, rng: np.random.Generator, days: list[str], extent: bool = False) -> dict:
    """The simulated reviewer on one round's rows (``part``: the round's rows of the windows frame, with the
    hidden labels): a verdict on each incident KPI, misses reported with ``miss_probability``, days marked.

    ``extent``: a confirmation carries the anomaly's own extent, as a reviewer reading the chart marks
    where it began: the first labelled segment the incident's span overlaps; any further segment it
    overlaps (a long incident can hold several anomalies) is marked as an anomaly range of its own
    (``extents_marked``), so the normal stretch between two anomalies is not labelled 1. Without it the
    label is the alarms' span, which starts where the served detector noticed, and so flatters that
    detector."""
    from pipeline.batch.incidents import incidents
    from pipeline.data.review_labels import CONFIRMED, FALSE_ALARM

    observed = ~part[MISSING].to_numpy()
    kpi_ids = part[KPI_ID].astype(str).to_numpy()
    scored = pd.DataFrame({KPI_ID: kpi_ids, TIMESTAMP: part[TIMESTAMP].to_numpy(), VALUE: part[VALUE].to_numpy(),
                           "score": scores, "is_anomaly": alarms & observed,
                           "threshold": [threshold.value_for(k) for k in kpi_ids]})[observed]
    found = incidents(scored, gap)
    truth = part[observed & (part[LABEL].to_numpy() == 1)]
    ones = {str(k): _ns(g[TIMESTAMP]) for k, g in truth.groupby(KPI_ID, observed=True)}
    segments = _segments(part)
    by_kpi = {str(k): g for k, g in segments.groupby("kpi_id")}
    counts = {CONFIRMED: 0, FALSE_ALARM: 0, "incidents": len(found), "misses_reported": 0, "misses_unreported": 0,
              "extents_marked": 0}
    covered: dict[str, list[tuple]] = {}
    for incident in found:
        for k in incident["per_kpi"]:
            start, end = pd.Timestamp(k["start"]), pd.Timestamp(k["end"])
            hits = ones.get(k["kpi_id"], np.array([], dtype=np.int64))
            real = bool(((hits >= start.value) & (hits <= end.value)).any())
            verdict = CONFIRMED if real else FALSE_ALARM
            span, more = {}, []
            if real and extent:
                own = by_kpi.get(k["kpi_id"], segments.iloc[:0])
                own = own[(own["start"] <= end) & (own["end"] >= start)].sort_values("start")
                if len(own):
                    span = {"start": own["start"].iloc[0], "end": own["end"].iloc[0]}
                    more = list(own.iloc[1:].itertuples(index=False))
            store.add_verdict(incident, verdict, REVIEWER, kpi=k["kpi_id"], **span)
            for seg in more:
                store.add_miss(seg.kpi_id, seg.start, seg.end, REVIEWER, note="a further anomaly in a confirmed incident")
            counts[verdict] += 1
            counts["extents_marked"] += len(more)
            covered.setdefault(k["kpi_id"], []).append((start, end))
    for seg in segments.itertuples(index=False):
        if any(s <= seg.end and seg.start <= e for s, e in covered.get(seg.kpi_id, [])):
            continue
        if rng.random() < miss_probability:
            store.add_miss(seg.kpi_id, seg.start, seg.end, REVIEWER)
            counts["misses_reported"] += 1
        else:
            counts["misses_unreported"] += 1
    for day in days:
        store.mark_reviewed(day, REVIEWER)
    return counts


def simulate(base, train_spec: str, out: Path, detectors: list[str], rounds: int = 4, length: str = "7D",
             history: str | None = "30D", final_fraction: float = 0.3, shift_unit: str = "7D",
             min_history: str | None = None, miss_probability: float = 0.5, seed: int = 0,
             extent: bool = False, metric: str = "aiops_f1", command: str = "") -> dict:
    from pipeline.data.prep import load_splits
    from pipeline.data.sources import read_source
    from pipeline.params import parse_params
    from pipeline.review import service
    from pipeline.tools import bench

    started = time.perf_counter()
    if metric not in REPORTED_METRICS:
        raise ValueError(f"--metric {metric}: the simulation reports a thresholded metric: {', '.join(REPORTED_METRICS)}")
    length_td = duration("--round-length", length)
    spans = {"--history": None if history in (None, "all") else duration("--history", history),
             "--shift-unit": duration("--shift-unit", shift_unit),
             "--min-history": duration("--min-history", min_history) if min_history else length_td}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raw = base.as_dict()
    raw["reviews"] = {**raw["reviews"], "store": f"sqlite:///{(out / 'reviews.db').resolve()}", "apply": True}
    base = parse_params(raw, source="simulate_review")
    (out / "reviews.db").unlink(missing_ok=True)  # a rerun starts from no verdict: idempotent
    truth = read_source(train_spec, base)
    if LABEL not in truth.columns:
        raise ValueError(f"{train_spec}: no labels, so nothing to answer from; the simulation needs a labelled source")
    plan = timeline(truth, rounds, length_td, spans["--history"], final_fraction, spans["--shift-unit"],
                    spans["--min-history"])
    if not plan["shifts"]:
        raise ValueError(f"{train_spec}: no KPI has {spans['--min-history']} of history before round 1 "
                         f"({rounds} rounds of {length} before each KPI's final {final_fraction:.0%}); use fewer or "
                         "shorter rounds, or a smaller --min-history")
    data = shifted(truth, plan)
    bounds, final = plan["rounds"], plan["final"]
    log.info("simulate_review: %d KPIs (%d left out), rounds from %s, final block from %s",
             len(plan["shifts"]), len(plan["dropped"]), bounds[0], final)
    final_rows = data[data[TIMESTAMP] >= final]
    rng = np.random.default_rng(seed)
    setup = {"command": command, "train": train_spec, "detectors": detectors, "metric": metric,
             "miss_probability": miss_probability,
             "extent": extent, "seed": seed}
    ev = base.evaluate

    ceiling_dir = out / "ceiling"
    sources = (write_source(data[data[TIMESTAMP] < final], out / "sources" / "ceiling-train.parquet", True),
               write_source(final_rows, out / "sources" / "final.parquet", True))
    ceiling = bench.run(base, *sources, [CEILING], ceiling_dir, protocol="split", progress=False)
    ceiling_row = ceiling["summary"][CEILING]
    ceiling_final = ceiling_draws = None
    if ceiling_row.get("status") == "ok":
        params = bench.bench_params(base, *sources, ceiling_dir, "split")
        ceiling_full = load_splits(Path(params.paths.windows))
        _, alarms, _ = served_alarms(params, CEILING, ceiling_full,
                                     np.load(ceiling_dir / "work" / "scores" / f"{CEILING}.npy"))
        test = (ceiling_full["split"] == "test").to_numpy()
        ceiling_final = block_metrics(ceiling_full[test], alarms[test], ev.delay, metric)
        ceiling_draws = block_draws(ceiling_full[test], alarms[test], metric, ev)
        add_intervals(ceiling_final, ceiling_draws, None, ev.bootstrap_level)

    rows = []
    for r in range(rounds + 1):
        round_dir, served_from = out / f"round-{r}", bounds[r]
        sources = (write_source(data[data[TIMESTAMP] < served_from], out / "sources" / f"round-{r}-train.parquet", False),
                   write_source(data[data[TIMESTAMP] >= served_from], out / "sources" / f"round-{r}-test.parquet", True))
        params = bench.bench_params(base, *sources, round_dir, "split")
        spans = service.export(base, params.paths.labels)  # where this round's ingest stage reads the label set
        report = bench.run(base, *sources, detectors, round_dir, protocol="split", progress=False)
        manifest = json.loads((Path(params.paths.raw) / "manifest.json").read_text())
        reviews = manifest["train"].get("reviews", {})
        champion = report["selection"]["champion"]
        row = {"round": r, "served_from": str(served_from), "champion": champion,
               "label_free": report["selection"]["label_free"], "reason": report["selection"].get("reason"),
               "labels": {k: reviews.get(k) for k in ("applied", "reason", "digest", "events", "rows",
                                                      "anomalous_rows", "unreviewed_rows")},
               "label_spans": spans.get("by_origin", {}), "val_events": report["events"]["val"],
               "detectors": {n: {"status": s.get("status"), "val": s.get("val_champion"),
                                 "val_low": s.get("val_champion_low"), "val_high": s.get("val_champion_high")}
                             for n, s in report["summary"].items()}}
        if champion is None:
            row["error"] = "no champion"
            rows.append(row)
            break
        full = load_splits(Path(params.paths.windows))
        scores, alarms, threshold = served_alarms(params, champion, full, np.load(round_dir / "work" / "scores" / f"{champion}.npy"))
        test = (full["split"] == "test").to_numpy()
        stamps = full[TIMESTAMP]
        in_final = test & (stamps >= final).to_numpy()
        row["final"] = add_intervals(block_metrics(full[in_final], alarms[in_final], ev.delay, metric),
                                     block_draws(full[in_final], alarms[in_final], metric, ev), ceiling_draws,
                                     ev.bootstrap_level)
        row["final_by_detector_oracle"] = detector_finals(params, full, report["summary"], round_dir, in_final,
                                                          ev.delay, metric)
        if r < rounds:
            nxt = test & (stamps < bounds[r + 1]).to_numpy()
            row["next_round"] = block_metrics(full[nxt], alarms[nxt], ev.delay, metric)
            days = [str(d.date()) for d in pd.date_range(bounds[r], bounds[r + 1] - pd.Timedelta(1, "ns"), freq="D")]
            with service.open_store(base) as store:
                row["review"] = review_round(store, full[nxt].reset_index(drop=True), scores[nxt], alarms[nxt],
                                             threshold, base.score.incident_gap, miss_probability, rng, days,
                                             extent)
        rows.append(row)
        log.info("round %d: %s served, final %s %s", r, champion, metric, row["final"]["metric"])
        _write(out, plan, rows, ceiling_row, ceiling_final, started, setup)
    return _write(out, plan, rows, ceiling_row, ceiling_final, started, setup)


def rescore(base, out: Path) -> dict:
    """Recompute, from a finished simulation's saved sources and scores in ``out``, what a later version of
    this tool records: every row's final-block figure (:func:`detector_finals`) and the intervals of the
    served model's and the ceiling's (:func:`add_intervals`); ``base``: the params it ran with."""
    from pipeline.data.prep import load_splits
    from pipeline.tools import bench

    out = Path(out)
    if not (out / "results.json").is_file():
        raise ValueError(f"{out}: no finished simulation to rescore (no results.json)")
    report = json.loads((out / "results.json").read_text())
    final, metric, ev = pd.Timestamp(report["final_from"]), report.get("metric", "aiops_f1"), base.evaluate

    def final_block(round_dir: Path, train: str, test: str) -> tuple:
        params = bench.bench_params(base, f"csv:{out / 'sources' / train}", f"csv:{out / 'sources' / test}",
                                    round_dir, "split")
        full = load_splits(Path(params.paths.windows))
        return params, full, ((full["split"] == "test") & (full[TIMESTAMP] >= final)).to_numpy()

    ceiling_draws = None
    if report["ceiling"].get("final") is not None:
        params, full, rows = final_block(out / "ceiling", "ceiling-train.parquet", "final.parquet")
        _, alarms, _ = served_alarms(params, CEILING, full, np.load(out / "ceiling" / "work" / "scores" / f"{CEILING}.npy"))
        report["ceiling"]["final"] = block_metrics(full[rows], alarms[rows], ev.delay, metric)
        ceiling_draws = block_draws(full[rows], alarms[rows], metric, ev)
        add_intervals(report["ceiling"]["final"], ceiling_draws, None, ev.bootstrap_level)
    for row in report["rounds"]:
        r, champion = row["round"], row["champion"]
        round_dir = out / f"round-{r}"
        params, full, rows = final_block(round_dir, f"round-{r}-train.parquet", f"round-{r}-test.parquet")
        row["final_by_detector_oracle"] = detector_finals(params, full, row["detectors"], round_dir, rows,
                                                          ev.delay, metric)
        if champion is not None:
            _, alarms, _ = served_alarms(params, champion, full, np.load(round_dir / "work" / "scores" / f"{champion}.npy"))
            row["final"] = add_intervals(block_metrics(full[rows], alarms[rows], ev.delay, metric),
                                         block_draws(full[rows], alarms[rows], metric, ev), ceiling_draws,
                                         ev.bootstrap_level)
    write_json_atomic(out / "results.json", report)
    write_text_atomic(out / "results.md", markdown(report))
    return report


def _write(out: Path, plan: dict, rows: list, ceiling_row: dict, ceiling_final: dict | None, started: float,
           setup: dict) -> dict:
    from pipeline.tools.bench import hardware

    report = {**setup,
              "kpis": sorted(plan["shifts"]), "dropped": plan["dropped"], "final_from": str(plan["final"]),
              "rounds_from": [str(b) for b in plan["rounds"]], "history_from": str(plan["start"]),
              "ceiling": {"detector": CEILING, "status": ceiling_row.get("status"), "reason": ceiling_row.get("reason"),
                          "final": ceiling_final},
              "rounds": rows, "hardware": hardware(), "wall_s": round(time.perf_counter() - started, 1)}
    write_json_atomic(out / "results.json", report)
    write_text_atomic(out / "results.md", markdown(report))
    return report


def markdown(report: dict) -> str:
    metric = report.get("metric", "aiops_f1")  # results written before --metric existed: aiops_f1

    def headline(block: dict) -> float | None:
        return block.get("metric", block.get(metric))

    ceiling = headline(report["ceiling"].get("final") or {})
    lines = [f"Command: `{report['command']}`", "",
             f"{len(report['kpis'])} KPIs ({len(report['dropped'])} left out: too little history); final block from "
             f"{report['final_from']}; misses reported with probability {report['miss_probability']}; "
             f"confirmations label {CONFIRMS[report['extent']]}; "
             f"{report['hardware']}; wall time {report['wall_s']} s.", "",
             f"Ceiling: `{CEILING}` with every label, final block `{metric}` {_f(ceiling)}"
             f"{_bounds((report['ceiling'].get('final') or {}).get('interval'))}.", "",
             "Intervals: 90% bootstrap over the final block's labelled segments, paired with the ceiling's for "
             "the share (where the metric has a segment decomposition).", "",
             "| after reviews | served | path | reviewed events (train) | verdicts so far (confirmed / dismissed) "
             f"| misses reported so far | next round `{metric}` | final block `{metric}` | share of ceiling "
             "| final event recall / precision | best row on the final block (oracle) |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    confirmed = dismissed = reported = marked = 0
    for row in report["rounds"]:
        fin, nxt = row.get("final") or {}, row.get("next_round") or {}
        # a share of a ceiling at or below 0 (NAB: 0 is the detector that never alarms) means nothing
        share = None if ceiling is None or ceiling <= 0 or headline(fin) is None else headline(fin) / ceiling
        events = row["labels"].get("events")
        lines.append(f"| {row['round']} | {row['champion']} | {'label-free' if row['label_free'] else 'labelled'} "
                     f"| {events if events is not None else 0} | {confirmed} / {dismissed} | {reported} "
                     f"| {_f(headline(nxt))} | {_f(headline(fin))}{_bounds(fin.get('interval'))} "
                     f"| {_f(share, '.1%')}{_bounds(fin.get('share_interval') if share is not None else None, '.0%')} "
                     f"| {_f(fin.get('event_recall'))} / {_f(fin.get('event_precision'))} | {_best(row)} |")
        review = row.get("review") or {}
        confirmed += review.get("confirmed", 0)
        dismissed += review.get("false_alarm", 0)
        reported += review.get("misses_reported", 0)
        marked += review.get("extents_marked", 0)
    lines += ["", f"Verdicts given in all: {confirmed} confirmed, {dismissed} dismissed; {reported} misses reported"
              + (f"; {marked} further anomalies marked inside confirmed incidents." if marked else ".")]
    return "\n".join(lines) + "\n"


def _bounds(bounds, fmt: str = ".3f") -> str:
    return "" if not bounds else f" [{format(bounds[0], fmt)}, {format(bounds[1], fmt)}]"


def _best(row: dict) -> str:
    rows = {n: v for n, v in (row.get("final_by_detector_oracle") or {}).items() if v is not None and n != "random"}
    if not rows:
        return "–"
    name = max(rows, key=rows.get)
    return f"{name} {rows[name]:.3f}"


def _segments(part: pd.DataFrame) -> pd.DataFrame:
    """Labelled segments on the grid (published rule: a missing point ends one): kpi_id, start, end."""
    from pipeline.eval.metrics import events

    lab = (part[LABEL].to_numpy() == 1) & ~part[MISSING].to_numpy()
    starts, stops = events(lab, part[KPI_ID].to_numpy())
    stamps, ids = part[TIMESTAMP].to_numpy(), part[KPI_ID].astype(str).to_numpy()
    return pd.DataFrame({"kpi_id": ids[starts], "start": pd.to_datetime(stamps[starts], utc=True),
                         "end": pd.to_datetime(stamps[stops - 1], utc=True)})


def _ns(stamps: pd.Series) -> np.ndarray:
    return pd.to_datetime(stamps, utc=True).dt.as_unit("ns").astype("int64").to_numpy()


def _f(v, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def main(argv: list[str] | None = None) -> int:
    from pipeline.errors import KpiguardError
    from pipeline.params import load_params

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", help="a labelled source spec (aiops:FILE, nab:DIR, csv:PATH)")
    ap.add_argument("--rescore", action="store_true",
                    help="only recompute the finished simulation in --out from its saved scores: every row's "
                         "final-block figure (oracle) and the intervals")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--detectors", default="sequence_novelty,stacked_gbdt,diff_z,seasonal_residual",
                    help="the rows that compete each round (evaluate.default_detector among them)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--round-length", default="7D")
    ap.add_argument("--history", default="30D", help="history before round 1 ('all': everything)")
    ap.add_argument("--final-fraction", type=float, default=0.3)
    ap.add_argument("--shift-unit", default="7D", help="KPIs move in time by whole units (7D keeps the weekday)")
    ap.add_argument("--min-history", default=None, help="KPIs with less history are left out (default: a round)")
    ap.add_argument("--miss-probability", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--extent", action=argparse.BooleanOptionalAction, default=False,
                    help="a confirmation marks the anomaly's own extent (default: the alarms' span, as the issue specifies)")
    ap.add_argument("--metric", default="aiops_f1",
                    help="the headline figure of each block, by its published rule (NAB: nab_standard)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("-S", dest="overrides", action="append", default=[], help="section.key=value, as the CLI's")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        base = load_params(args.params, args.overrides)
        if args.rescore:
            print(markdown(rescore(base, args.out)))
            return 0
        if not args.train:
            raise ValueError("--train is required (a labelled source spec)")
        report = simulate(base, args.train, args.out, [d.strip() for d in args.detectors.split(",") if d.strip()],
                          args.rounds, args.round_length, args.history, args.final_fraction, args.shift_unit,
                          args.min_history, args.miss_probability, args.seed, args.extent, args.metric,
                          command="python -m pipeline.tools.simulate_review " + " ".join(argv or sys.argv[1:]))
    except (KpiguardError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
