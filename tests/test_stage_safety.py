"""Names that become paths, and stages that fail: previous outputs are never lost (issue #13)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline import cli
from pipeline.errors import OutputError
from pipeline.params import parse_params
from pipeline.stages import evaluate, ingest, train, validate, windows
from tests.conftest import small_params_dict

LONG_ID = "k" * 5000
ALIKE = ["a/b", "a_b", "a b"]


def _csv(path: Path) -> None:
    """Four labelled KPIs whose ids break naive file names, with anomalies in the test split."""
    n = 600
    ts = pd.date_range("2026-01-01", periods=n, freq="5min", tz="UTC")
    rng = np.random.default_rng(0)
    frames = []
    for kpi in [LONG_ID, *ALIKE]:
        value = np.sin(np.arange(n) / 12.0) + rng.normal(0, 0.05, n)
        label = np.zeros(n, dtype=int)
        for i in (400, 520, 560):  # one in validation, two in test
            value[i] += 6
            label[i] = 1
        frames.append(pd.DataFrame({"kpi_id": kpi, "timestamp": ts, "value": value, "label": label}))
    pd.concat(frames).to_csv(path, index=False)


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    """ingest -> validate -> windows -> train robust_zscore on the awkward ids; returns (root, params path)."""
    root = tmp_path_factory.mktemp("stages")
    _csv(root / "kpis.csv")
    raw = small_params_dict(data={"train": f"csv:{root / 'kpis.csv'}"}, evaluate={"plot_kpis": 10},
                            validate={"min_points_per_kpi": 100})
    raw["paths"] = {k: str(root / v) for k, v in raw["paths"].items()}
    raw["train"]["detectors"] = ["robust_zscore"]
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    p = parse_params(raw)
    ingest.run(p, Path(p.paths.raw))
    validate.run(p, Path(p.paths.raw), Path(p.paths.validated), Path(p.paths.quarantine),
                 Path(p.paths.validation_report))
    windows.run(p, Path(p.paths.validated), Path(p.paths.windows))
    train.run(p, "robust_zscore", progress=False)
    return root, p


def _snapshot(*dirs: Path) -> dict:
    return {str(f): f.read_bytes() for d in dirs for f in sorted(Path(d).rglob("*")) if f.is_file()}


@pytest.mark.parametrize("value", ["robust_zscore,", "../victim", "", "robust_zscore,nope"])
def test_train_rejects_a_bad_detector_name_before_any_work(pipeline_dir, value, capsys):
    root, p = pipeline_dir
    victim = root / "victim"
    victim.mkdir(exist_ok=True)
    (victim / "keep.txt").write_text("precious")
    before = _snapshot(Path(p.paths.artifacts), victim, Path(p.paths.train_reports))
    code = cli.main(["train", "--params", str(root / "params.yaml"), "--detector", value, "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "known_detector" in err and "Traceback" not in err
    assert _snapshot(Path(p.paths.artifacts), victim, Path(p.paths.train_reports)) == before
    assert (Path(p.paths.artifacts) / "robust_zscore" / "config.json").exists()


def test_train_run_refuses_an_unregistered_name(pipeline_dir):
    root, p = pipeline_dir
    with pytest.raises(KeyError, match="unknown detector"):
        train.run(p, "../victim", progress=False)
    assert not (Path(p.paths.artifacts).parent / "victim").exists()  # where <artifacts>/../victim would be


def test_evaluate_plots_any_kpi_id_and_keeps_outputs_in_step(pipeline_dir, monkeypatch):
    root, p = pipeline_dir
    report = evaluate.run(p)
    assert report["detectors"]["robust_zscore"]["status"] == "ok"
    plots = sorted((Path(p.paths.plots) / "scores").iterdir())
    assert len(plots) == 4  # one file per KPI: the long id fits, a/b, a_b and "a b" do not collide
    assert all(len(f.name) < 100 for f in plots)
    # DVC's metrics: one small file per detector, its leaderboard figures and its training time
    res = report["detectors"]["robust_zscore"]
    low, high = res["champion_metric"]["interval"]  # the figure's bootstrap interval and the events it rests on
    assert json.loads((Path(p.paths.metrics) / "robust_zscore.json").read_text()) == {
        "val_aiops_f1": res["champion_metric"]["value"], "val_aiops_f1_low": low, "val_aiops_f1_high": high,
        "val_events": report["events"]["val"], "test_aiops_f1": res["test"]["aiops_f1"],
        "alarm_rate": res["test"]["alarm_rate"],
        "train_seconds": json.loads((Path(p.paths.train_reports) / "robust_zscore.json").read_text())["train_seconds"]}
    assert sorted(f.name for f in Path(p.paths.metrics).iterdir()) == ["random.json", "robust_zscore.json"]

    # a failure while writing plots leaves the evaluation, the metrics and the plots as they were
    before = _snapshot(Path(p.paths.evaluation), Path(p.paths.metrics), Path(p.paths.plots))

    def broken(*a, **kw):
        raise OSError(36, "File name too long")

    monkeypatch.setattr(evaluate, "plot_scores", broken)
    with pytest.raises(OutputError, match="File name too long") as err:  # one clear error, not a traceback
        evaluate.run(p)
    assert err.value.rule == "output_writable" and "unchanged" in str(err.value)
    assert _snapshot(Path(p.paths.evaluation), Path(p.paths.metrics), Path(p.paths.plots)) == before
    assert [f.name for f in Path(p.paths.evaluation).parent.iterdir() if f.name.startswith(".")] == []


@pytest.mark.parametrize("argv,bad", [(["--date", "2026-13-45"], "2026-13-45"),
                                      (["--start", "garbage", "--end", "2026-01-02"], "garbage"),
                                      (["--start", "2026-01-01", "--end", "2026-02-30"], "2026-02-30")])
def test_score_bad_dates_are_one_clear_error(tmp_path, capsys, argv, bad):
    code = cli.main(["score", *argv, "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "date_format" in err and "YYYY-MM-DD" in err and bad in err
    assert not (tmp_path / "out").exists()


def test_daily_input_conf_is_restricted_to_configured_sources(tmp_path):
    """#13.10d: a DAG run's `input` conf may only name score.input or what score.allowed_inputs allows."""
    from pipeline.batch import daily
    from pipeline.data import sources
    from pipeline.data.contract import DataError

    raw = small_params_dict()
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    raw["score"].update({"staging": str(tmp_path / "staging"), "allowed_inputs": [f"csv:{tmp_path}/landing/"]})
    p = parse_params(raw)
    day = "2026-01-05"
    start, end = pd.Timestamp(day, tz="UTC"), pd.Timestamp("2026-01-06", tz="UTC")
    rows = sources.read_source("synthetic:", p, start - pd.Timedelta(p.score.context), end)
    (tmp_path / "landing").mkdir()
    rows.to_csv(tmp_path / "landing" / "kpis.csv", index=False)
    rows.to_csv(tmp_path / "secret.csv", index=False)  # readable, valid, and outside every allowed prefix

    for spec in (f"csv:{tmp_path}/secret.csv", f"csv:{tmp_path}/landing/../secret.csv",
                 f"csv:{tmp_path}/landing/%2e%2e/secret.csv", "csv:/etc/passwd", "csv:http://example.invalid/x.csv",
                 # a server may read `..;` as `..`, and a normalising one U+2025 (two-dot leader) as `..` (#25)
                 f"csv:{tmp_path}/landing/..;/secret.csv", f"csv:{tmp_path}/landing/\u2025/secret.csv",
                 f"csv:{tmp_path}/landing/.%2e/secret.csv", f"csv:{tmp_path}/landing/a\\..\\..\\secret.csv"):
        with pytest.raises(DataError) as err:
            daily.ingest(p, day, spec)
        assert err.value.rule == "allowed_input" and "score.allowed_inputs" in str(err.value)
        assert not daily.staging(p, day).exists()  # refused before anything was read or written

    assert daily.ingest(p, day, f"csv:{tmp_path}/landing/kpis.csv")["rows"] == len(rows)
    assert daily.ingest(p, day, "synthetic:")["input"] == "synthetic:"  # score.input itself
    assert daily.ingest(p, day)["input"] == "synthetic:"


def test_a_failed_training_keeps_the_previous_model_files(pipeline_dir, monkeypatch):
    """#13.8 (train): the failure is recorded (evaluate skips the detector) without deleting the last model."""
    import json

    root, p = pipeline_dir
    model_dir = Path(p.paths.artifacts) / "robust_zscore"
    train.run(p, "robust_zscore", progress=False)
    before = {f.name: f.read_bytes() for f in model_dir.iterdir() if f.name != "status.json"}

    def broken(*a, **kw):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(train, "fit_detector", broken)
    with pytest.raises(RuntimeError):
        train.run(p, "robust_zscore", progress=False)
    assert json.loads((model_dir / "status.json").read_text())["status"] == "failed"
    assert {f.name: f.read_bytes() for f in model_dir.iterdir() if f.name != "status.json"} == before
    assert evaluate.run(p)["detectors"]["robust_zscore"]["status"] == "failed"  # not used while failed
    monkeypatch.undo()
    train.run(p, "robust_zscore", progress=False)  # a later success replaces the record
    assert json.loads((model_dir / "status.json").read_text())["status"] == "ok"
