"""`kpiguard bench` end to end on a tiny synthetic source: the results.json schema, per-run status."""
from __future__ import annotations

import json

from pipeline.cli import main
from pipeline.tools.bench import SUMMARY_METRICS
from tests.conftest import REPO


def test_bench_writes_results_in_the_schema(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["bench", "--params", str(REPO / "params.yaml"), "--train", "synthetic:",
            "--detectors", "robust_zscore,cnn_classifier", "--out", str(out), "--no-progress",
            "-S", "synthetic.n_kpis=2", "-S", "synthetic.end=2026-01-08", "-S", "synthetic.anomalies_per_week=21",
            "-S", "train.max_epochs=2", "-S", "detectors.cnn_classifier.max_train_windows=512",
            "-S", "evaluate.min_events=1"]  # a few validation events: the metric still picks (the default is absent)
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"summary", "runs", "command", "hardware"}
    assert results["command"].startswith("kpiguard bench") and "--train synthetic:" in results["command"]
    assert set(results["summary"]) == {"robust_zscore", "cnn_classifier", "random"}
    for name, row in results["summary"].items():
        assert row["status"] == "ok", row
        assert set(SUMMARY_METRICS) | {"train_s", "score_points_per_s", "peak_rss_mb"} <= set(row)
        assert row["nab_standard"] is None  # not a NAB source
    assert 0 <= results["summary"]["robust_zscore"]["auc_roc"] <= 1
    assert results["summary"]["cnn_classifier"]["score_points_per_s"] > 0
    runs = [r for r in results["runs"] if r["detector"] == "robust_zscore"]
    assert {r["kpi_id"] for r in runs} == {"synthetic/kpi_000", "synthetic/kpi_001"}
    assert all(r["status"] == "ok" and "point_f1" in r["metrics"] for r in runs)
    assert "| random |" in (out / "results.md").read_text()
    # the champion as the evaluate stage picks it (validation folds), its gap to test, and the line under the table
    row = results["summary"]["robust_zscore"]
    assert row["test_champion"] == row["aiops_f1"] and row["champion_metric"]["folds"] == 3
    assert row["val_champion"] == row["champion_metric"]["value"]
    assert row["val_test_gap"] == row["aiops_f1"] - row["val_champion"]
    assert results["best_on_val"] in ("robust_zscore", "cnn_classifier")
    assert results["transfer"]["champion"] == results["best_on_val"]
    md = (out / "results.md").read_text()
    assert ("| detector | aiops_f1 | val aiops_f1 (mean of 3 folds) | 90% interval | val fold std | val → test gap | "
            "rpa_f1 |") in md
    assert f"**{results['best_on_val']}**" in md.split("| random |")[1]


def test_a_failing_detector_does_not_stop_the_run(tmp_path):
    """vae_lstm needs l_win * l_seq points of history; with 4096-point windows it cannot fit."""
    out = tmp_path / "bench"
    argv = ["bench", "--params", str(REPO / "params.yaml"), "--train", "synthetic:",
            "--detectors", "vae_lstm,robust_zscore", "--out", str(out), "--no-progress",
            "-S", "synthetic.n_kpis=1", "-S", "synthetic.end=2026-01-08",
            "-S", "detectors.vae_lstm.l_win=4096"]
    assert main(argv) == 0
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary["vae_lstm"]["status"] == "failed" and summary["vae_lstm"]["reason"]
    assert summary["robust_zscore"]["status"] == "ok"


def test_rescore_reproduces_a_run_and_combines_runs(tmp_path):
    """--scores-from recomputes the summary from saved scores: the same settings give the same figures;
    another calibration changes only what it should; two runs on the same data make one table."""
    common = ["--params", str(REPO / "params.yaml"), "--train", "synthetic:", "--no-progress",
              "-S", "synthetic.n_kpis=2", "-S", "synthetic.end=2026-01-08", "-S", "synthetic.anomalies_per_week=21"]
    assert main(["bench", *common, "--detectors", "robust_zscore", "--out", str(tmp_path / "a")]) == 0
    assert main(["bench", *common, "--detectors", "diff_z", "--out", str(tmp_path / "b")]) == 0
    first = json.loads((tmp_path / "a" / "results.json").read_text())["summary"]

    again = ["bench", "--params", str(REPO / "params.yaml"), "--scores-from", str(tmp_path / "a"),
             "--scores-from", str(tmp_path / "b"), "-S", "synthetic.n_kpis=2", "-S", "synthetic.end=2026-01-08",
             "-S", "synthetic.anomalies_per_week=21"]
    assert main([*again, "--out", str(tmp_path / "same")]) == 0
    same = json.loads((tmp_path / "same" / "results.json").read_text())
    assert set(same["summary"]) == {"robust_zscore", "diff_z", "random"}
    assert same["summary"]["robust_zscore"] == first["robust_zscore"]
    assert [r["dir"] for r in same["rescored_from"]] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert "diff_z" in (tmp_path / "same" / "results.md").read_text()

    assert main([*again, "--out", str(tmp_path / "raw"), "-S", "evaluate.calibration.method=none"]) == 0
    raw = json.loads((tmp_path / "raw" / "results.json").read_text())["summary"]["robust_zscore"]
    # Calibration "none" is exactly the run's uncalibrated ("_raw") row.
    assert (raw["aiops_f1"], raw["aiops_f1_oracle"]) == (first["robust_zscore"]["aiops_f1_raw"],
                                                         first["robust_zscore"]["aiops_f1_oracle_raw"])


def test_label_free_bench_removes_train_and_validation_labels_and_scores_on_test(tmp_path):
    """--label-free: the evaluate stage's label-free path (budget thresholds, the default detector as champion,
    supervised detectors skipped), measured against the test labels, which are kept."""
    out = tmp_path / "bench"
    argv = ["bench", "--params", str(REPO / "params.yaml"), "--train", "synthetic:", "--label-free",
            "--detectors", "robust_zscore,sequence_novelty,cnn_classifier", "--out", str(out), "--no-progress",
            "-S", "synthetic.n_kpis=2", "-S", "synthetic.end=2026-01-08", "-S", "synthetic.anomalies_per_week=21"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    summary = results["summary"]
    assert results["label_free"] and results["events"]["val"] == 0 and results["events"]["test"] > 0
    assert summary["cnn_classifier"]["status"] == "skipped"
    assert results["best_on_val"] == "sequence_novelty" and results["selection"]["label_free"]
    for name in ("robust_zscore", "sequence_novelty", "random"):
        row = summary[name]
        assert row["status"] == "ok" and row["threshold_method"] == "budget"
        assert row["val_champion"] is None and row["aiops_f1"] is not None  # no validation figure; test is scored
        assert row["val_alarms_per_kpi_day"] > 0
    assert results["transfer"]["champion"] == "sequence_novelty"
    md = (out / "results.md").read_text()
    assert "(train and validation labels removed: --label-free)" in md
    assert "Champion: **sequence_novelty**. No metric picks the champion" in md


def test_label_free_rescore_of_a_labelled_run_is_the_label_free_run(tmp_path):
    """--scores-from ... --label-free: an unsupervised detector never saw a label in training, so its saved
    scores rescored without train/validation labels give the label-free run's figures; a supervised one
    (trained on the labels) is skipped, as the label-free run skips it."""
    common = ["--params", str(REPO / "params.yaml"), "--no-progress", "-S", "synthetic.n_kpis=2",
              "-S", "synthetic.end=2026-01-08", "-S", "synthetic.anomalies_per_week=21"]
    detectors = ["--detectors", "robust_zscore,cnn_classifier", "-S", "evaluate.default_detector=robust_zscore"]
    assert main(["bench", *common, *detectors, "--train", "synthetic:", "--label-free", "--out", str(tmp_path / "free")]) == 0
    assert main(["bench", *common, *detectors, "--train", "synthetic:", "--out", str(tmp_path / "lab")]) == 0
    assert main(["bench", *common, "-S", "evaluate.default_detector=robust_zscore", "--scores-from",
                 str(tmp_path / "lab"), "--label-free", "--out", str(tmp_path / "re")]) == 0
    free = json.loads((tmp_path / "free" / "results.json").read_text())
    again = json.loads((tmp_path / "re" / "results.json").read_text())
    assert again["label_free"] and again["summary"]["cnn_classifier"]["status"] == "skipped"
    for key in ("aiops_f1", "point_f1", "auc_pr", "val_alarms_per_kpi_day", "test_alarms_per_kpi_day",
                "threshold_method"):
        assert again["summary"]["robust_zscore"][key] == free["summary"]["robust_zscore"][key], key
    assert again["best_on_val"] == free["best_on_val"] == "robust_zscore"
