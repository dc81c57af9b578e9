"""The leaderboard: the evaluate stage's report as the table people read (``leaderboard.md``)."""
from __future__ import annotations

from pipeline.eval.selection import champion_rank, figure

LEADERBOARD_COLUMNS = ("aiops_f1", "event_precision", "event_recall", "rpa_f1", "point_f1", "vus_pr", "auc_pr", "auc_roc", "nab_standard",
                       "point_adjusted_f1", "aiops_f1_oracle")  # test metrics


def leaderboard(report: dict) -> str:
    metric, folds = report["champion_metric"], report.get("champion_folds", 1)
    level = (report.get("bootstrap") or {}).get("level", 0.9)
    budget = report.get("alarm_budget")
    tests = [m for m in LEADERBOARD_COLUMNS if m != metric]
    header = ["detector", f"val {metric} (mean of {folds} folds)", f"{level:.0%} interval", "fold min", "fold std",
              f"val {metric} (one split)", f"test {metric}", "val → test gap", *(f"test {m}" for m in tests),
              "val alarms/KPI/day", "test alarms/KPI/day", "status"]
    rows = []
    for name, res in report["detectors"].items():
        if res.get("status") != "ok":
            rows.append(((float("-inf"),) * 2, [name, *["–"] * (len(header) - 2), f"{res.get('status')}: {res.get('reason', '')}"]))
            continue
        champion, test = res["champion_metric"], res.get("test") or {}
        bounds = champion.get("interval")
        alarms = res.get("alarms") or {}
        cells = [_fmt(champion.get("fold_mean")), f"[{_fmt(bounds[0])}, {_fmt(bounds[1])}]" if bounds else "–"]
        cells += [_fmt(champion.get(k)) for k in ("fold_min", "fold_std", "single_split")]
        cells += [_fmt(test.get(metric)), _fmt(champion.get("val_test_gap"), "+.3f"), *(_fmt(test.get(m)) for m in tests)]
        cells += [_rate(alarms.get("val")), _rate(alarms.get("test"))]
        key = champion_rank(champion) if champion["value"] is not None else (float("-inf"),) * 2
        rows.append((key, [name, *cells, "ok"]))
    rows.sort(key=lambda r: r[0], reverse=True)
    best = report["best_on_val"]
    selection = report.get("selection") or {}
    basis = (report["detectors"].get(best) or {}).get("champion_metric", {}).get("basis")
    ranked_by = (f"Ranked by **{metric} on the validation split, the mean over {folds} chronological folds** (each "
                 "fold's threshold fitted on the validation rows before it; the single split, threshold fitted on all of "
                 "validation, where no fold could be scored)." if folds > 1 else
                 f"Ranked by **{metric} on the validation split** (threshold: fitted on validation).")
    events = report.get("events") or {}
    noise = (f"Labelled events: validation {_count(events.get('val'))}, test {_count(events.get('test'))}. The interval "
             f"is the {level:.0%} bootstrap interval of the validation figure over its labelled events (none for a "
             "metric without a segment decomposition)." if events else "")
    alarms = (f"Alarm rates are alarm points per KPI per day under the validation-fitted threshold; the alarm budget "
              f"(evaluate.alarm_budget) is {budget:g}." if budget is not None else "")
    lines = [
        "# Leaderboard\n",
        ranked_by + " The gap is test − validation: a large negative gap is a validation figure that did not",
        "transfer. Test columns are the honest estimate. `point_adjusted_f1` is the legacy, inflated metric;",
        "`*_oracle` picks its threshold on test labels. Both are shown only to compare with published work; compare them",
        "with the `random` row." + (f" {noise}" if noise else "") + (f" {alarms}" if alarms else "") + "\n",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r[1]) + " |" for r in rows),
        (f"\nChampion: **{best}**" + (" (single split: no fold could be scored)"
                                       if basis == "single_split" and not selection.get("label_free") else "")
         + (f". {selection['reason']}" if selection.get("reason") else "") if best else
         f"\n{selection.get('reason') or 'No champion.'}"),
    ]
    if report.get("transfer"):
        lines.append("\n" + transfer_line(report["transfer"], metric))
    return "\n".join(lines) + "\n"


def _rate(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _count(value: int | None) -> str:
    return "–" if value is None else str(value)


def transfer_line(transfer: dict, metric: str) -> str:
    """One sentence under a results table: does the validation choice transfer to test?"""
    champion, best = transfer["champion"], transfer["test_best"]
    if champion is None:
        return f"No validation-chosen champion: no detector has a validation {metric}."
    if best is None:
        return f"Champion: **{champion}**; no detector has a test {metric} to compare it with."
    if transfer["champion_test"] is None:
        return f"Validation-chosen champion: **{champion}**, with no test {metric} to compare with the best on test ({best})."
    if champion == best:
        return f"The validation-chosen champion, **{champion}**, is also the best on test ({metric} {_fmt(transfer['champion_test'])})."
    return (f"Validation-chosen champion: **{champion}** (test {metric} {_fmt(transfer['champion_test'])}); best on test: "
            f"**{best}** ({_fmt(transfer['test_best_value'])}); the validation choice is {transfer['shortfall']:.3f} "
            f"{metric} short of it.")


def _fmt(v, spec: str | None = None) -> str:
    """A figure as :func:`pipeline.eval.selection.figure` prints it, or in ``spec`` (the signed gap)."""
    return figure(v) if spec is None or v is None else format(v, spec)


def headline(report: dict, train_seconds: dict[str, float | None]) -> dict[str, dict]:
    """Each detector's headline figures, the leaderboard's row cut down to what a terminal holds.

    The evaluate stage writes each as ``<paths.metrics>/<detector>.json``, DVC's metrics: DVC prints one
    row per metrics file and one column per key, so per-detector files of the same few keys make
    ``dvc metrics show`` one row per detector, and ``dvc metrics diff`` / ``dvc exp show`` compare runs on
    these figures alone (the per-KPI detail stays in ``metrics.json``, a plain output). Keys:
    ``val_<metric>``: the champion figure the ranking uses, ``val_<metric>_low`` / ``_high``: its bootstrap
    interval, ``val_events``: the labelled validation events it rests on; ``test_<metric>``, ``alarm_rate``
    (share of points): on test, under the validation-fitted threshold; ``train_seconds``. (Alarms per KPI
    per day, against the budget, are in ``metrics.json`` and the leaderboard: a terminal holds no more.) A detector that was not scored has only
    its ``status``. Unknown figures are left out (DVC shows ``-``).
    """
    metric = report["champion_metric"]
    val_events = (report.get("events") or {}).get("val")
    rows = {}
    for name, res in report["detectors"].items():
        if res.get("status") != "ok":
            rows[name] = {"status": str(res.get("status"))}
            continue
        test, champion = res.get("test") or {}, res["champion_metric"]
        bounds = champion.get("interval") or (None, None)
        row = {f"val_{metric}": champion["value"], f"val_{metric}_low": bounds[0], f"val_{metric}_high": bounds[1],
               "val_events": val_events, f"test_{metric}": test.get(metric), "alarm_rate": test.get("alarm_rate"),
               "train_seconds": train_seconds.get(name)}
        rows[name] = {k: v for k, v in row.items() if v is not None}
    return rows
