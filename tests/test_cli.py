"""The kpiguard CLI on bad input: one clear paragraph on stderr and exit code 2, never a traceback."""
from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, small_params_dict


def write_params(tmp_path, **data) -> str:
    raw = small_params_dict()
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    raw["data"] = {**raw["data"], **data}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def kpiguard(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("content,needles", [
    ("time,val\n1,2\n", ["column 'kpi_id'", "required_columns", "kpis.csv", "found ['time', 'val']"]),
    ("kpi_id,timestamp,value\na,2026-01-01,abc\n", ["column 'value'", "numeric_values", "abc"]),
    ("", ["kpis.csv", "non_empty_file"]),
])
def test_bad_csv_is_one_clear_error(tmp_path, content, needles):
    (tmp_path / "kpis.csv").write_text(content)
    result = kpiguard("ingest", "--params", write_params(tmp_path, train=f"csv:{tmp_path / 'kpis.csv'}"))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr


def test_missing_file_names_it(tmp_path):
    result = kpiguard("ingest", "--params", write_params(tmp_path, train=f"csv:{tmp_path / 'nope.csv'}"))
    assert result.returncode == 2 and "nope.csv" in result.stderr and "file_exists" in result.stderr


def test_bad_params_key_is_named(tmp_path):
    raw = small_params_dict(windows={"lenght": 3})
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    result = kpiguard("windows", "--params", str(tmp_path / "p.yaml"))
    assert result.returncode == 2 and "windows.lenght" in result.stderr and "Traceback" not in result.stderr


def test_ingest_validate_windows_with_quarantine(tmp_path):
    """NaN and a too-short KPI in a CSV end up in quarantine; the rest flows through."""
    ts = pd.date_range("2026-01-01", periods=400, freq="5min", tz="UTC")
    good = pd.DataFrame({"kpi_id": "cpu", "timestamp": ts, "value": range(400), "label": 0})
    short = good.head(20).assign(kpi_id="tiny")
    frame = pd.concat([good, short], ignore_index=True)
    frame.loc[5, "value"] = float("nan")
    frame.to_csv(tmp_path / "kpis.csv", index=False)
    params = write_params(tmp_path, train=f"csv:{tmp_path / 'kpis.csv'}")
    for stage in ("ingest", "validate", "windows"):
        result = kpiguard(stage, "--params", params)
        assert result.returncode == 0, result.stderr
    quarantine = pd.read_parquet(tmp_path / "data/quarantine/train.parquet")
    assert sorted(quarantine["reason"].unique()) == ["n_points = 20; must be >= 200", "value is null or NaN"]
    summary = json.loads((tmp_path / "data/windows/summary.json").read_text())
    assert summary["splits"]["train"]["kpis"] == 1
    assert sum(s["rows"] for s in summary["splits"].values()) == 400  # the NaN row is interpolated, marked missing


HEAVY = ("torch", "great_expectations", "mlflow", "airflow", "sklearn", "scipy", "matplotlib")


@pytest.mark.parametrize("argv", [
    ["--help"],
    ["train", "--help"],
    ["score", "--help"],
    ["speed", "--help"],
    ["ingest", "-S", "windows.length=1"],                      # a params error
    ["train", "-S", "detectors.lstm_forecaster.hidden_size=0"],  # a detector's own rule
    ["train", "--detector", "nope"],                           # a bad argument
    ["score"],                                                 # argparse: --date or --start is required
    ["report"],                                                # argparse: --date is required
])
def test_help_and_usage_errors_import_nothing_heavy(argv):
    """They answer before any work starts, so they must not pay for torch, GX, MLflow or Airflow."""
    code = ("import json, sys\n"
            "from pipeline.cli import main\n"
            "try:\n"
            f"    main({argv!r})\n"
            "except SystemExit:\n"
            "    pass\n"
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_a_stage_prints_one_summary_line_or_its_full_result_as_json(tmp_path):
    ts = pd.date_range("2026-01-01", periods=300, freq="5min", tz="UTC")
    pd.DataFrame({"kpi_id": "cpu", "timestamp": ts, "value": range(300), "label": 0}).to_csv(tmp_path / "k.csv", index=False)
    params = write_params(tmp_path, train=f"csv:{tmp_path / 'k.csv'}")
    human = kpiguard("ingest", "--params", params)
    assert human.returncode == 0, human.stderr
    assert human.stdout == (f"ingest: 300 rows, 1 KPIs, 2026-01-01 00:00 – 2026-01-02 00:55 from csv:{tmp_path / 'k.csv'} "
                            f"→ {tmp_path / 'data/raw'}\n")
    machine = kpiguard("ingest", "--params", params, "--json")
    assert machine.returncode == 0, machine.stderr
    assert json.loads(machine.stdout) == json.loads((tmp_path / "data/raw/manifest.json").read_text())


def test_speed_takes_its_own_options(capsys):
    """`kpiguard speed --points ...` reaches speed's parser (argparse's REMAINDER dropped the options)."""
    from pipeline.cli import main

    assert main(["speed", "--points", "2000", "--detectors", "diff_z", "--kpis", "2", "--train-points", "400"]) == 0
    table = capsys.readouterr().out
    assert "| diff_z |" in table and "points/s" in table


def _commands() -> list[str]:
    from pipeline.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    return list(sub.choices)


@pytest.mark.parametrize("argv", [["--version"], ["--help"], *([c, "--help"] for c in _commands())])
def test_version_and_every_help_answer_quickly_without_torch(argv):
    """`kpiguard --version` and each command's --help: plain text with a description and an example, in a
    fresh interpreter that never imports torch. The time is reported and bounded loosely (speed is a
    benchmark's business, not a test's; README: well under 0.5 s on an idle machine)."""
    import time

    code = ("import sys\n"
            "from pipeline.cli import main\n"
            "try:\n"
            f"    main({argv!r})\n"
            "except SystemExit:\n"
            "    pass\n"
            "print('TORCH', 'torch' in sys.modules)\n")
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.strip().splitlines()[-1] == "TORCH False"
    print(f"kpiguard {' '.join(argv)}: {seconds:.2f} s")
    assert seconds < 5.0  # loosely: an interpreter start plus argparse, even on a busy 2-core machine
    assert "``" not in out and ":func:" not in out  # plain text, no RST markup
    if argv == ["--version"]:
        from importlib.metadata import version

        assert out.splitlines()[0] == f"kpiguard {version('kpiguard')}"
    elif argv == ["--help"]:
        assert all(f"    {c} " in out for c in _commands())  # every command listed with its line
    else:
        usage, _, rest = out.partition("\n\n")
        description = rest.splitlines()[0]
        assert description.endswith(".") and len(description) > 20, description
        example = out.split("example:\n", 1)[1].splitlines()[0].strip()
        assert example.startswith(f"kpiguard {argv[0]}"), example


@pytest.mark.parametrize("command,data,why", [
    ("evaluate", {"detectors": {"a": {"status": "failed", "reason": "ValueError: x"}, "b": {"status": "skipped"},
                                "random": {"status": "ok"}}}, "0 of 2 detectors scored (a: failed: ValueError: x; b: skipped)"),
    ("register", {"detectors": {"a": {"status": "failed", "reason": "boom"}}}, "0 of 1 detectors tracked (a: failed: boom)"),
    ("score", {"partitions": [{"rows": 0}, {"rows": 0}]}, "0 rows scored in 2 partition(s): every row was quarantined"),
    ("bench", {"summary": {"a": {"status": "failed"}, "random": {"status": "ok"}}}, "0 of 1 detectors benchmarked (a: failed)"),
])
def test_a_command_that_produced_nothing_usable_says_why(command, data, why):
    from pipeline.cli import nothing_usable

    assert nothing_usable(command, data) == why
    usable = {"evaluate": {"detectors": {"a": {"status": "ok"}, "b": {"status": "failed"}}},
              "register": {"detectors": {"a": {"status": "ok", "decision": "unchanged"}}},
              "score": {"partitions": [{"rows": 0}, {"rows": 5}]},
              "bench": {"summary": {"a": {"status": "ok"}}}}[command]
    assert nothing_usable(command, usable) is None


def test_evaluate_with_no_trained_detector_exits_1_with_one_line(tmp_path):
    """The real stage: windows built, but no detector trained: evaluate scores 0 of 2 and says so."""
    params = write_params(tmp_path)
    raw = yaml.safe_load(open(params))
    raw["train"]["detectors"] = ["robust_zscore", "diff_z"]
    open(params, "w").write(yaml.safe_dump(raw))
    for stage in ("ingest", "validate", "windows"):
        assert kpiguard(stage, "--params", params).returncode == 0
    result = kpiguard("evaluate", "--params", params)
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("kpiguard evaluate: nothing usable: 0 of 2 detectors scored (robust_zscore: missing")
    assert "Traceback" not in result.stderr
    assert result.stdout.startswith("evaluate: 0/2 detectors scored")
