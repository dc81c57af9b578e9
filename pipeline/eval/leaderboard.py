"""The leaderboard: the evaluate stage's report as the table people read (``leaderboard.md``)."""
from __future__ import annotations

from pipeline.eval.selection import champion_rank, figure

LEADERBOARD_COLUMNS = ("aiops_f1", "rpa_f1", "point_f1", "vus_pr", "auc_pr", "auc_roc", "nab_standard",
                       "point_adjusted_f1", "aiops_f1_oracle")  # test metrics


def leaderboard(report: dict) -> str:
    metric, folds = report["champion_metric"], report.get("champion_folds", 1)
    tests = [m for m in LEADERBOARD_COLUMNS if m != metric]
    header = ["detector", f"val {metric} (mean of {folds} folds)", "fold min", "fold std", f"val {metric} (one split)",
              f"test {metric}", "val → test gap", *(f"test {m}" for m in tests), "status"]
    rows = []
    for name, res in report["detectors"].items():
        if res.get("status") != "ok":
            rows.append(((float("-inf"),) * 2, [name, *["–"] * (len(header) - 2), f"{res.get('status')}: {res.get('reason', '')}"]))
            continue
        champion, test = res["champion_metric"], res.get("test") or {}
        cells = [_fmt(champion.get(k)) for k in ("fold_mean", "fold_min", "fold_std", "single_split")]
        cells += [_fmt(test.get(metric)), _fmt(champion.get("val_test_gap"), "+.3f"), *(_fmt(test.get(m)) for m in tests)]
        key = champion_rank(champion) if champion["value"] is not None else (float("-inf"),) * 2
        rows.append((key, [name, *cells, "ok"]))
    rows.sort(key=lambda r: r[0], reverse=True)
    best = report["best_on_val"]
    basis = (report["detectors"].get(best) or {}).get("champion_metric", {}).get("basis")
    ranked_by = (f"Ranked by **{metric} on the validation split, the mean over {folds} chronological folds** (each "
                 "fold's threshold fitted on the validation rows before it; the single split, threshold fitted on all of "
                 "validation, where no fold could be scored)." if folds > 1 else
                 f"Ranked by **{metric} on the validation split** (threshold: fitted on validation).")
    lines = [
        "# Leaderboard\n",
        ranked_by + " The gap is test − validation: a large negative gap is a validation figure that did not",
        "transfer. Test columns are the honest estimate. `point_adjusted_f1` is the legacy, inflated metric;",
        "`*_oracle` picks its threshold on test labels. Both are shown only to compare with published work; compare them",
        "with the `random` row.\n",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r[1]) + " |" for r in rows),
        f"\nBest on validation: **{best}**" + (" (single split: no fold could be scored)" if basis == "single_split" else ""),
    ]
    if report.get("transfer"):
        lines.append("\n" + transfer_line(report["transfer"], metric))
    return "\n".join(lines) + "\n"


def transfer_line(transfer: dict, metric: str) -> str:
    """One sentence under a results table: does the validation choice transfer to test?"""
    champion, best = transfer["champion"], transfer["test_best"]
    if champion is None:
        return f"No validation-chosen champion: no detector has a validation {metric}."
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
    ``val_<metric>``: the champion figure the ranking uses; ``test_<metric>``, ``alarm_rate``: on test,
    under the validation-fitted threshold; ``train_seconds``. A detector that was not scored has only
    its ``status``. Unknown figures are left out (DVC shows ``-``).
    """
    metric = report["champion_metric"]
    rows = {}
    for name, res in report["detectors"].items():
        if res.get("status") != "ok":
            rows[name] = {"status": str(res.get("status"))}
            continue
        test = res.get("test") or {}
        row = {f"val_{metric}": res["champion_metric"]["value"], f"test_{metric}": test.get(metric),
               "alarm_rate": test.get("alarm_rate"), "train_seconds": train_seconds.get(name)}
        rows[name] = {k: v for k, v in row.items() if v is not None}
    return rows
