"""`kpiguard report --date D`: the day's report from its scored partition, as the DAG's report step builds it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline import cli
from pipeline.batch import daily, score
from tests.conftest import REPO

DAY = "2026-03-01"
MODEL = {"uri": "models:/kpiguard@champion", "model": "kpiguard", "version": "3", "detector": "diff_z",
         "metrics": {"aiops_f1": 0.5}}
ALARM = {"alarm_fraction": 0.09, "budget_fraction": 0.0069, "ratio": 13.0, "factor": 10, "mismatch": True}


def write_day(output: Path, flagged: dict[str, list[int]], meta_extra: dict | None = None) -> None:
    """One scored day of three 5-minute KPIs in the scores dataset, as `kpiguard score` writes it."""
    parts = []
    for kpi in ("cpu", "mem", "disk"):
        flags = np.zeros(288, dtype=bool)
        flags[flagged.get(kpi, [])] = True
        parts.append(pd.DataFrame({
            "kpi_id": kpi, "timestamp": pd.date_range(DAY, periods=288, freq="5min", tz="UTC"),
            "value": np.arange(288.0), "raw_score": 0.0, "score": np.where(flags, 6.0, 0.5), "threshold": 3.0,
            "is_anomaly": flags}))
    # the dataset's own columns (columns it has beyond these, e.g. the expected band, are NaN: unknown)
    rows = pd.concat(parts, ignore_index=True).reindex(columns=score.SCORES_SCHEMA.names)
    held = pd.DataFrame({"kpi_id": pd.Series(dtype=str), "timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
                         "value": pd.Series(dtype=float), "rule": pd.Series(dtype=str),
                         "reason": pd.Series(dtype=str)})
    start, end = score.day_range(DAY)
    score.write_days(str(output), start, end, rows, held, {"model": MODEL, "input": "synthetic:"})
    if meta_extra:  # what the scorer's checks of the day add to its _meta.json
        meta = output / f"date={DAY}" / "_meta.json"
        meta.write_text(json.dumps({**json.loads(meta.read_text()), **meta_extra}))


def run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["report", "--params", str(REPO / "params.yaml"), *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_report_builds_the_days_page_and_json_from_its_partition(capsys, tmp_path):
    # cpu 10:00-10:10 and mem 10:20 are one incident; cpu 15:00 another
    write_day(tmp_path / "scores", {"cpu": [120, 121, 122, 180], "mem": [124]}, {"alarm_check": ALARM})
    reports = tmp_path / "reports"
    code, out, err = run(capsys, "--date", DAY, "--output", str(tmp_path / "scores"), "-S", f"score.reports={reports}")
    assert code == 0, err
    html, js = reports / f"{DAY}.html", reports / f"{DAY}.json"
    assert out == (f"report {DAY}: 2 incidents, 2 of 3 KPIs flagged (3 anomaly spans) → {html} (json: {js}); "
                   "alarm rate 13× the budget: likely a model/data mismatch\n")
    written = json.loads(js.read_text())
    assert [i["kpis"] for i in written["incidents"]] == [["cpu", "mem"], ["cpu"]]
    assert written["champion"] == MODEL and written["alarm_check"] == ALARM
    assert {i["detector"] for i in written["incidents"]} == {"diff_z"}
    assert "Alarm rate 13× the budget" in html.read_text()

    code, out, err = run(capsys, "--date", DAY, "--output", str(tmp_path / "scores"), "-S", f"score.reports={reports}",
                         "-S", "score.incident_gap=5min", "--json")
    assert code == 0, err
    printed = json.loads(out)
    assert printed == {**json.loads(js.read_text()), "html": str(html), "json": str(js)}
    assert printed["incident_count"] == 3 and printed["incident_gap"] == "5min"  # 10 min between cpu and mem


def test_report_is_exactly_the_dags_report_step(capsys, tmp_path):
    from pipeline.params import load_params

    write_day(tmp_path / "scores", {"mem": [3, 4]})
    params = load_params(REPO / "params.yaml", [f"score.output={tmp_path / 'scores'}",
                                                 f"score.reports={tmp_path / 'dag'}"])
    step = daily.report(params, DAY)  # no staging directory: the model is the partition's
    dag_json = json.loads((tmp_path / "dag" / f"{DAY}.json").read_text())
    assert step["incident_count"] == 1 and step["html"] == str(tmp_path / "dag" / f"{DAY}.html")
    code, out, err = run(capsys, "--date", DAY, "-S", f"score.output={tmp_path / 'scores'}",
                         "-S", f"score.reports={tmp_path / 'cli'}")
    assert code == 0, err
    assert json.loads((tmp_path / "cli" / f"{DAY}.json").read_text()) == dag_json
    assert (tmp_path / "cli" / f"{DAY}.html").read_text() == (tmp_path / "dag" / f"{DAY}.html").read_text()


def test_a_day_that_was_not_scored_is_one_clear_error(capsys, tmp_path):
    code, out, err = run(capsys, "--date", DAY, "--output", str(tmp_path / "scores"))
    assert code == 2 and out == "" and "Traceback" not in err
    assert str(tmp_path / "scores" / f"date={DAY}" / "scores.parquet") in err
    assert "partition_exists" in err and f"run `kpiguard score --date {DAY}` first" in err

    code, _, err = run(capsys, "--date", "2026-02-30", "--output", str(tmp_path / "scores"))
    assert code == 2 and "kpiguard report --date" in err and "date_format" in err and "Traceback" not in err
