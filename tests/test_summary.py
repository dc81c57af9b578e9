"""pipeline/summary.py: the one line each stage prints, from the result it writes to its report."""
from __future__ import annotations

from pipeline import summary


def test_ingest_line_per_split():
    manifest = {"train": {"spec": "synthetic:", "rows": 32221, "kpis": 4, "labelled": True,
                          "start": "2026-01-01 00:00:00+00:00", "end": "2026-01-28 23:55:00+00:00"}}
    assert summary.ingest(manifest, "data/raw") == \
        "ingest: 32,221 rows, 4 KPIs, 2026-01-01 00:00 – 2026-01-28 23:55 from synthetic: → data/raw"
    manifest["test"] = {**manifest["train"], "spec": "csv:t.csv", "rows": 10, "kpis": 1}
    assert summary.ingest(manifest, "out") == (
        "ingest: train: 32,221 rows, 4 KPIs, 2026-01-01 00:00 – 2026-01-28 23:55 from synthetic:; "
        "test: 10 rows, 1 KPIs, 2026-01-01 00:00 – 2026-01-28 23:55 from csv:t.csv → out")


def test_validate_line_counts_kpis_and_quarantined_rows():
    result = {"train": {"rows_in": 32256, "rows_valid": 32250, "rows_quarantined": 6, "kpis_valid": 3,
                        "kpis_quarantined": ["tiny"], "expectations": []}}
    assert summary.validate(result, "data/validated", "reports/validation") == (
        "validate: 32,256 rows, 6 quarantined, 3/4 KPIs ok → data/validated "
        "(report: reports/validation/data_docs/index.html)")


def test_windows_line():
    result = {"length": 48, "stride": 1, "splits": {
        "train": {"rows": 19352, "kpis": 4, "windows": 19164}, "val": {"rows": 6452, "kpis": 4, "windows": 6264},
        "test": {"rows": 6452, "kpis": 4, "windows": 6264}}}
    assert summary.windows(result, "data/windows") == \
        "windows: 4 KPIs, train 19,352 / val 6,452 / test 6,452 points, 19,164 train windows of 48 → data/windows"


def test_train_lines_ok_and_skipped():
    ok = {"detector": "lstm_forecaster", "status": "ok", "train_seconds": 15.234, "epochs": 20, "device": "cpu",
          "threads": 2}
    assert summary.train(ok, "models/artifacts") == \
        "train lstm_forecaster: ok in 15.2 s, 20 epochs, cpu, 2 threads → models/artifacts/lstm_forecaster"
    skipped = {"detector": "cnn_classifier", "status": "skipped", "reason": "no labels"}
    assert summary.train(skipped, "models/artifacts") == "train cnn_classifier: skipped (no labels)"


def test_evaluate_line_names_the_validation_best():
    report = {"champion_metric": "aiops_f1", "best_on_val": "a", "detectors": {
        "a": {"status": "ok", "champion_metric": {"value": 0.8123}, "test": {"aiops_f1": 0.7}},
        "b": {"status": "failed", "reason": "x"},
        "random": {"status": "ok", "champion_metric": {"value": 0.1}}}}
    assert summary.evaluate(report, "reports/evaluation") == (
        "evaluate: 1/2 detectors scored; best on validation a (aiops_f1 0.812 val, 0.700 test) "
        "→ reports/evaluation/leaderboard.md")
    report["best_on_val"] = None
    assert summary.evaluate(report, "r").startswith("evaluate: 1/2 detectors scored; no detector has a aiops_f1")


def test_register_line_gives_the_champion_decision():
    report = {"serving": {"model": "kpiguard", "version": "3", "detector": "a", "decision": "champion",
                          "reason": "beats v2 by more than 0.0"},
              "detectors": {"a": {"status": "ok", "decision": "champion"}, "b": {"status": "ok", "decision": "unchanged"},
                            "c": {"status": "skipped"}}}
    assert summary.register(report, "reports/register") == (
        "register: kpiguard v3 (a): champion, beats v2 by more than 0.0; detectors: 1 champion, 1 skipped, "
        "1 unchanged → reports/register/summary.json")


def test_score_line_sums_partitions():
    result = {"model": {"model": "kpiguard", "version": "3", "uri": "models:/kpiguard@champion"}, "partitions": [
        {"path": "data/scores/date=2026-01-27", "rows": 1152, "anomalies": 3, "quarantined": 0},
        {"path": "data/scores/date=2026-01-28", "rows": 1152, "anomalies": 2, "quarantined": 1}]}
    assert summary.score(result) == \
        "score: 2,304 rows, 5 anomalies, 1 quarantined with kpiguard v3 → 2 partitions under data/scores"
    result["partitions"] = result["partitions"][:1]
    assert summary.score(result).endswith("with kpiguard v3 → data/scores/date=2026-01-27")
    result["spans"] = 2  # what score.run adds: the anomaly spans it wrote
    assert summary.score(result).startswith("score: 1,152 rows, 3 anomalies in 2 spans, 0 quarantined")
    result["incidents"] = 1  # and the incidents they make
    assert summary.score(result).startswith("score: 1,152 rows, 3 anomalies in 2 spans (1 incident), 0 quarantined")
    result["incidents"] = 0
    assert summary.score(result).startswith("score: 1,152 rows, 3 anomalies in 2 spans (0 incidents), 0 quarantined")


def test_report_line_says_incidents_kpis_flagged_and_where_and_what_the_scorer_found_wrong():
    result = {"day": "2026-01-28", "kpis_scored": 4, "incident_count": 1, "anomalies": 44, "anomalous_kpis": 4,
              "html": "reports/daily/2026-01-28.html", "json": "reports/daily/2026-01-28.json"}
    assert summary.report(result) == ("report 2026-01-28: 1 incident, 4 of 4 KPIs flagged (44 anomaly spans) → "
                                      "reports/daily/2026-01-28.html (json: reports/daily/2026-01-28.json)")
    result.update(alarm_check={"ratio": 7.25, "mismatch": True}, training_range={"outside": True, "days_outside": 3})
    assert summary.report(result).endswith("(json: reports/daily/2026-01-28.json); alarm rate 7.2× the budget: likely "
                                           "a model/data mismatch; the day is outside the model's training range")
    result.update(alarm_check={"ratio": 1.0, "mismatch": False}, training_range={"outside": False})
    assert summary.report(result).endswith("(json: reports/daily/2026-01-28.json)")


def test_score_line_names_rows_off_the_trained_grid_and_kpis_whose_interval_changed():
    changed = {"kpi_id": "cpu", "trained_interval_s": 300.0, "observed_interval_s": 60.0, "rows_quarantined": 1152}
    result = {"model": {"model": "kpiguard", "version": "3"}, "partitions": [
        {"path": "s/date=2026-01-27", "rows": 1152, "anomalies": 3, "quarantined": 1153, "off_grid_snapped": 2,
         "quarantined_by_rule": {"on_trained_grid": 1152, "expect_column_values_to_not_be_null": 1},
         "interval_changed": [changed]},
        {"path": "s/date=2026-01-28", "rows": 1152, "anomalies": 0, "quarantined": 1152, "off_grid_snapped": 0,
         "quarantined_by_rule": {"on_trained_grid": 1152}, "interval_changed": [changed]}]}
    assert summary.score(result) == (
        "score: 2,304 rows, 3 anomalies, 2,305 quarantined with kpiguard v3 → 2 partitions under s; "
        "2,304 of the quarantined not on their KPI's trained grid (on_trained_grid); "
        "interval changed: cpu (trained 300 s, arrives 60 s); 2 rows off the grid scored at its nearest point")


def test_score_warns_of_days_outside_the_training_range_alarm_mismatches_and_untrained_kpis():
    rng = {"start": "2026-01-01T00:00:00+00:00", "end": "2026-01-20T00:00:00+00:00"}
    def day(date, days_outside, fraction, ratio, untrained=()):
        return {"date": date, "path": f"s/date={date}", "rows": 100, "anomalies": int(100 * fraction), "quarantined": 0,
                "training_range": {**rng, "outside": days_outside > 7, "days_outside": days_outside},
                "alarm_check": {"alarm_fraction": fraction, "budget_fraction": 0.0069, "ratio": ratio, "factor": 10,
                                "mismatch": ratio > 10}, "untrained_kpis": list(untrained)}
    result = {"model": {"model": "kpiguard", "version": "3"},
              "partitions": [day("2026-01-26", 6.0, 0.01, 1.4), day("2026-01-28", 8.0, 0.5, 72.0, ["new"]),
                             day("2026-01-29", 9.0, 0.25, 36.0)]}
    assert summary.score(result).splitlines()[1:] == [
        "score: warning: 2 days (2026-01-28 – 2026-01-29) are up to 9 days (2026-01-29) outside the model's training "
        "range (2026-01-01 – 2026-01-20): its scores may mean little",
        "score: warning: 2 days (2026-01-28 – 2026-01-29) flagged up to 50.0% of their points (2026-01-28), 72x the "
        "0.69% evaluate.alarm_budget stands for: the model and this data may not match",
        "score: warning: 1 KPI(s) without training statistics scored (score.allow_untrained_kpis): new"]
    result["partitions"] = result["partitions"][:1]
    assert "\n" not in summary.score(result)  # an ordinary day: the one line


def test_bench_line():
    report = {"summary": {"a": {"status": "ok", "aiops_f1": 0.5}, "b": {"status": "ok", "aiops_f1": 0.6},
                          "c": {"status": "failed"}, "random": {"status": "ok", "aiops_f1": 0.9}},
              "data": {"kpis": 4}, "protocol": "split", "wall_s": 12.5}
    assert summary.bench(report, "out") == \
        "bench: 2/3 detectors ok on 4 KPIs (split) in 12.5 s; best test aiops_f1: b 0.600 → out/results.md"
