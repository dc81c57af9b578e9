"""csv: sources in both layouts (``data.csv.layout``) and the zone of naive timestamps (``data.csv.timezone``)."""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest
import yaml

from models.frame import KPI_ID, LABEL, TIMESTAMP, VALUE
from pipeline import cli
from pipeline.data import sources
from pipeline.data.contract import DTYPES, to_utc
from pipeline.errors import DataError, ParamsError
from pipeline.params import CsvColumns, DataParams, Params, load_params, parse_params
from tests.conftest import REPO, small_params_dict

PARAMS = Params()
UTC = "UTC"
BERLIN = "Europe/Berlin"


def params_with(**csv) -> Params:
    return PARAMS.model_copy(update={"data": DataParams(csv=CsvColumns(**csv))})


def read(path, **csv) -> pd.DataFrame:
    return sources.read_source(f"csv:{path}", params_with(**csv))


def utc(*stamps: str) -> list[pd.Timestamp]:
    return [pd.Timestamp(s, tz="UTC") for s in stamps]


def assert_canonical(frame: pd.DataFrame, labelled: bool = False) -> None:
    expected = [KPI_ID, TIMESTAMP, VALUE, *([LABEL] if labelled else [])]
    assert list(frame.columns) == expected
    for col in expected:
        assert frame[col].dtype == DTYPES[col], (col, frame[col].dtype)


def by_kpi(frame: pd.DataFrame) -> dict[str, list[tuple[pd.Timestamp, float]]]:
    return {k: list(zip(g[TIMESTAMP], g[VALUE])) for k, g in frame.groupby(KPI_ID, observed=True)}


# Grafana's panel inspector, "Download CSV" of "Series joined by time": every header quoted (quotes
# doubled), CRLF line ends, empty cells where a series has no sample, the time formatted in the
# dashboard's zone, a blank line at the end.
GRAFANA = (
    '"Time","cpu{instance=""web-1:9100"", mode=""user""}","p99 latency","errors"\r\n'
    "2026-01-01 00:00:00,0.25,120,0\r\n"
    "2026-01-01 00:05:00,0.5,,1\r\n"
    "2026-01-01 00:10:00,,130,\r\n"
    "2026-01-01 00:15:00,0.75,140,2\r\n"
    "\r\n"
)
CPU = 'cpu{instance="web-1:9100", mode="user"}'


# ---------------------------------------------------------------------------------------------
# long


def test_long_with_a_metric_column_and_no_label_column_is_unlabelled(tmp_path):
    (tmp_path / "export.csv").write_text(
        "timestamp,metric,value\n"
        "2026-01-01 00:00:00,cpu,1.5\n"
        "2026-01-01 00:00:00,mem,10\n"
        "2026-01-01 00:05:00,cpu,2.5\n"
        "2026-01-01 00:05:00,mem,11\n")
    frame = read(tmp_path / "export.csv", kpi_id="metric")
    assert_canonical(frame, labelled=False)
    assert by_kpi(frame) == {"cpu": [(utc("2026-01-01 00:00")[0], 1.5), (utc("2026-01-01 00:05")[0], 2.5)],
                             "mem": [(utc("2026-01-01 00:00")[0], 10.0), (utc("2026-01-01 00:05")[0], 11.0)]}


def test_long_label_null_ignores_a_label_column(tmp_path):
    (tmp_path / "a.csv").write_text("metric,timestamp,value,label\ncpu,2026-01-01 00:00:00,1,1\n")
    assert_canonical(read(tmp_path / "a.csv", kpi_id="metric", label=None), labelled=False)
    assert read(tmp_path / "a.csv", kpi_id="metric")[LABEL].tolist() == [1]


def test_long_default_layout_is_long():
    assert CsvColumns().layout == "long" and CsvColumns().timezone == "UTC"
    assert load_params(REPO / "params.yaml").data.csv == CsvColumns()


# ---------------------------------------------------------------------------------------------
# wide


def test_wide_grafana_export(tmp_path):
    (tmp_path / "grafana.csv").write_bytes(GRAFANA.encode())
    frame = read(tmp_path / "grafana.csv", layout="wide", timestamp="Time")
    assert_canonical(frame, labelled=False)
    t = utc("2026-01-01 00:00", "2026-01-01 00:05", "2026-01-01 00:10", "2026-01-01 00:15")
    assert by_kpi(frame) == {
        CPU: [(t[0], 0.25), (t[1], 0.5), (t[3], 0.75)],            # its empty cell is no point
        "errors": [(t[0], 0.0), (t[1], 1.0), (t[3], 2.0)],
        "p99 latency": [(t[0], 120.0), (t[2], 130.0), (t[3], 140.0)],
    }


def test_wide_selected_columns_gz_and_parquet(tmp_path):
    (tmp_path / "g.csv.gz").write_bytes(gzip.compress(GRAFANA.encode()))
    frame = read(tmp_path / "g.csv.gz", layout="wide", timestamp="Time", columns=["errors"])
    assert frame[KPI_ID].unique().tolist() == ["errors"] and frame[VALUE].tolist() == [0.0, 1.0, 2.0]
    wide = pd.DataFrame({"ts": pd.date_range("2026-01-01", periods=3, freq="5min"), "a": [1.0, np.nan, 3.0],
                         "b": [4.0, 5.0, 6.0]})
    wide.to_parquet(tmp_path / "w.parquet", index=False)
    frame = read(tmp_path / "w.parquet", layout="wide", timestamp="ts")
    assert frame.groupby(KPI_ID, observed=True).size().to_dict() == {"a": 2, "b": 3}


def test_wide_nan_text_is_no_point_and_inf_is_kept_for_validation(tmp_path):
    """Empty cells and null markers are no point; inf is a value, quarantined by validate as in long files."""
    (tmp_path / "w.csv").write_text("Time,a,b\n2026-01-01 00:00:00,1,NaN\n2026-01-01 00:05:00,inf,\n")
    frame = read(tmp_path / "w.csv", layout="wide", timestamp="Time")
    assert frame[KPI_ID].tolist() == ["a", "a"] and np.isinf(frame[VALUE].iloc[1])


def test_wide_directory_same_columns_are_one_kpi_or_prefixed_by_file(tmp_path):
    day = "Time,cpu,mem\n{d} 00:00:00,1,2\n{d} 00:05:00,3,4\n"
    (tmp_path / "2026-01-02.csv").write_text(day.format(d="2026-01-02"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "2026-01-01.csv").write_text(day.format(d="2026-01-01"))
    daily = read(tmp_path, layout="wide", timestamp="Time")
    assert daily.groupby(KPI_ID, observed=True).size().to_dict() == {"cpu": 4, "mem": 4}
    assert daily[daily[KPI_ID] == "cpu"][TIMESTAMP].tolist() == utc(
        "2026-01-01 00:00", "2026-01-01 00:05", "2026-01-02 00:00", "2026-01-02 00:05")
    hosts = read(tmp_path, layout="wide", timestamp="Time", stem_prefix=True)
    assert sorted(hosts[KPI_ID].unique()) == ["2026-01-01/cpu", "2026-01-01/mem", "2026-01-02/cpu", "2026-01-02/mem"]


@pytest.mark.parametrize("content,csv,rule,column,needle", [
    ("Time,a,b\n2026-01-01 00:00:00,1,2\n2026-01-01 00:05:00,3,oops\n", {}, "numeric_values", "b", "oops"),
    ("Time,a,a\n2026-01-01 00:00:00,1,2\n", {}, "unique_kpi_ids", "a", "repeats ['a']"),
    ("Time,a,label\n2026-01-01 00:00:00,1,0\n", {}, "wide_unlabelled", "label", "data.csv.columns"),
    ("time,a\n2026-01-01 00:00:00,1\n", {}, "required_columns", "Time", "data.csv.timestamp"),
    ("Time,a\n2026-01-01 00:00:00,1\n", {"columns": ["a", "z"]}, "required_columns", "z", "data.csv.columns"),
    ("Time\n2026-01-01 00:00:00\n", {}, "required_columns", "Time", "no KPI column"),
])
def test_wide_errors_name_file_column_and_rule(tmp_path, content, csv, rule, column, needle):
    (tmp_path / "w.csv").write_text(content)
    with pytest.raises(DataError) as err:
        read(tmp_path / "w.csv", layout="wide", timestamp="Time", **csv)
    assert (err.value.rule, err.value.column) == (rule, column)
    assert str(tmp_path / "w.csv") in str(err.value) and needle in str(err.value)


def test_wide_label_column_can_be_listed_as_a_kpi(tmp_path):
    (tmp_path / "w.csv").write_text("Time,a,label\n2026-01-01 00:00:00,1,0\n")
    frame = read(tmp_path / "w.csv", layout="wide", timestamp="Time", columns=["a", "label"])
    assert sorted(frame[KPI_ID]) == ["a", "label"]


# ---------------------------------------------------------------------------------------------
# timezone


def test_naive_berlin_times_land_at_utc_instants_across_both_dst_changes(tmp_path):
    local = ["2026-01-15 12:00:00", "2026-07-15 12:00:00",
             # spring forward on 2026-03-29: 02:00-02:59 do not exist; 01:55 and 03:00 are 5 min apart
             "2026-03-29 01:55:00", "2026-03-29 03:00:00",
             # fall back on 2026-10-25: 02:00-02:59 happen twice, first in summer time (+02), then winter (+01)
             "2026-10-25 02:00:00", "2026-10-25 02:30:00", "2026-10-25 02:00:00", "2026-10-25 02:30:00",
             "2026-10-25 03:00:00"]
    expected = utc("2026-01-15 11:00", "2026-07-15 10:00", "2026-03-29 00:55", "2026-03-29 01:00",
                   "2026-10-25 00:00", "2026-10-25 00:30", "2026-10-25 01:00", "2026-10-25 01:30",
                   "2026-10-25 02:00")
    # long, two KPIs interleaved: each KPI's own rows tell the repeated hour apart
    long = pd.DataFrame({"kpi_id": np.repeat(["a", "b"], len(local)), "timestamp": local * 2,
                         "value": np.arange(2 * len(local), dtype=float)})
    long.iloc[np.argsort(np.tile(np.arange(len(local)), 2), kind="stable")].to_csv(tmp_path / "long.csv", index=False)
    frame = read(tmp_path / "long.csv", timezone=BERLIN)
    for kpi in ("a", "b"):
        assert frame[frame[KPI_ID] == kpi][TIMESTAMP].tolist() == sorted(expected)
    (tmp_path / "wide.csv").write_text("Time,x\n" + "".join(f"{t},{i}\n" for i, t in enumerate(local)))
    wide = read(tmp_path / "wide.csv", layout="wide", timestamp="Time", timezone=BERLIN)
    assert dict(zip(wide[VALUE], wide[TIMESTAMP])) == dict(zip(np.arange(len(local), dtype=float), expected))


def test_offsets_and_epochs_are_unchanged_by_the_timezone(tmp_path):
    (tmp_path / "a.csv").write_text(
        "kpi_id,timestamp,value\n"
        "off,2026-01-01T01:00:00+01:00,1\n"
        "off,2026-07-01T00:00:00Z,2\n"
        "mix,2026-01-01T09:00:00-05:00,3\n"
        "mix,2026-01-01 15:00:00,4\n")                       # naive beside an offset: Berlin
    (tmp_path / "epoch.csv").write_text("kpi_id,timestamp,value\nep,1767225600,5\n")
    frame = read(tmp_path, timezone=BERLIN, label=None)
    assert by_kpi(frame) == {
        "off": [(utc("2026-01-01 00:00")[0], 1.0), (utc("2026-07-01 00:00")[0], 2.0)],
        "mix": [(utc("2026-01-01 14:00")[0], 3.0), (utc("2026-01-01 14:00")[0], 4.0)],
        "ep": [(utc("2026-01-01 00:00")[0], 5.0)],
    }
    assert read(tmp_path / "a.csv")[TIMESTAMP].tolist() == read(tmp_path / "a.csv", timezone=UTC)[TIMESTAMP].tolist()


def test_timezone_default_utc_keeps_naive_times(tmp_path):
    (tmp_path / "w.csv").write_bytes(GRAFANA.encode())
    frame = read(tmp_path / "w.csv", layout="wide", timestamp="Time")
    berlin = read(tmp_path / "w.csv", layout="wide", timestamp="Time", timezone=BERLIN)
    assert (frame[TIMESTAMP] - berlin[TIMESTAMP] == pd.Timedelta("1h")).all()


@pytest.mark.parametrize("times,needle", [
    (["2026-03-29 01:55:00", "2026-03-29 02:30:00"], "do not exist in Europe/Berlin"),
    (["2026-10-25 01:30:00", "2026-10-25 02:30:00", "2026-10-25 03:30:00"], "shows twice"),
])
def test_dst_gap_or_unresolvable_repeat_is_a_timezone_error(tmp_path, times, needle):
    (tmp_path / "w.csv").write_text("Time,x\n" + "".join(f"{t},1\n" for t in times))
    with pytest.raises(DataError) as err:
        read(tmp_path / "w.csv", layout="wide", timestamp="Time", timezone=BERLIN)
    assert (err.value.rule, err.value.column) == ("timezone", "Time")
    assert needle in str(err.value) and "w.csv" in str(err.value) and "2026-" in str(err.value)


def test_long_timezone_error_names_the_kpi_and_the_file_column(tmp_path):
    (tmp_path / "a.csv").write_text("metric,ts,value\ncpu,2026-10-25 02:30:00,1\n")
    with pytest.raises(DataError) as err:
        read(tmp_path / "a.csv", kpi_id="metric", timestamp="ts", timezone=BERLIN)
    assert (err.value.rule, err.value.column) == ("timezone", "ts") and "KPI 'cpu'" in str(err.value)


def test_to_utc_keeps_the_callers_index():
    col = pd.Series(["2026-01-01 01:00:00", "2026-01-01T00:00:00Z"], index=[7, 3])
    out = to_utc(col, "x", BERLIN)
    assert out.index.tolist() == [7, 3] and out.tolist() == utc("2026-01-01 00:00", "2026-01-01 00:00")


# ---------------------------------------------------------------------------------------------
# params


@pytest.mark.parametrize("csv,needle", [
    ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
    ({"timezone": "../etc/passwd"}, "unknown time zone"),
    ({"layout": "tall"}, "data.csv.layout"),
    ({"columns": ["a"]}, "apply to layout: wide"),
    ({"stem_prefix": True}, "apply to layout: wide"),
    ({"layout": "wide", "columns": []}, "lists the KPI columns"),
    ({"layout": "wide", "columns": ["timestamp", "a"]}, "must not list the timestamp column"),
])
def test_bad_csv_params_are_params_errors_at_load(csv, needle):
    with pytest.raises(ParamsError, match="data.csv") as err:
        parse_params(small_params_dict(data={"csv": {**PARAMS.data.csv.model_dump(), **csv}}))
    assert needle in str(err.value)


def test_unknown_zone_on_the_command_line_is_exit_2(tmp_path, capsys):
    code = cli.main(["ingest", "--params", str(REPO / "params.yaml"), "-S", "data.csv.timezone=Europe/Berlín"])
    err = capsys.readouterr().err
    assert code == 2 and "data.csv.timezone" in err and "Europe/Berlín" in err and "Traceback" not in err


def test_cli_ingest_and_validate_of_a_wide_berlin_export(tmp_path, capsys):
    """A wide local-time export through `kpiguard ingest` and `validate`: UTC instants, inf quarantined."""
    stamps = pd.date_range("2026-03-28 12:00", "2026-03-29 12:00", freq="5min", tz=BERLIN)
    wide = pd.DataFrame({"Time": stamps.strftime("%Y-%m-%d %H:%M:%S"), "a": np.sin(np.arange(len(stamps))),
                         "b": np.arange(len(stamps), dtype=float)})
    wide.loc[10, "a"] = np.nan
    wide.loc[20, "b"] = np.inf
    wide.to_csv(tmp_path / "grafana.csv", index=False)
    raw = small_params_dict(data={"train": f"csv:{tmp_path / 'grafana.csv'}",
                                  "csv": {**PARAMS.data.csv.model_dump(), "layout": "wide", "timestamp": "Time",
                                          "timezone": BERLIN}},
                            validate={"min_points_per_kpi": 50}, windows={"length": 8})
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    for stage in ("ingest", "validate"):
        assert cli.main([stage, "--params", str(tmp_path / "params.yaml")]) == 0, capsys.readouterr().err
    ingested = pd.read_parquet(tmp_path / "data/raw/train.parquet")
    a = ingested[ingested[KPI_ID] == "a"]
    assert len(a) == len(stamps) - 1 and a[TIMESTAMP].tolist() == stamps.delete(10).tz_convert("UTC").tolist()
    quarantine = pd.read_parquet(tmp_path / "data/quarantine/train.parquet")
    assert quarantine[[KPI_ID, VALUE]].astype(str).values.tolist() == [["b", "inf"]]
    assert len(pd.read_parquet(tmp_path / "data/validated/train.parquet")) == len(ingested) - 1


# ---------------------------------------------------------------------------------------------
# S3, as tests/test_storage_s3.py reads long files there


@pytest.mark.integration
def test_wide_prefix_from_s3(s3_server):
    from pipeline.io import storage
    from tests.servers import env_vars

    _, env = s3_server
    with env_vars(env):
        client = storage.s3_client()
        if "kpis-wide" not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket="kpis-wide")
        client.put_object(Bucket="kpis-wide", Key="grafana/2026-01-01.csv", Body=GRAFANA.encode())
        client.put_object(Bucket="kpis-wide", Key="grafana/2026-01-02.csv.gz",
                          Body=gzip.compress(GRAFANA.replace("2026-01-01", "2026-01-02").encode()))
        frame = read("s3://kpis-wide/grafana", layout="wide", timestamp="Time", timezone=BERLIN)
    assert_canonical(frame)
    assert frame.groupby(KPI_ID, observed=True).size().to_dict() == {CPU: 6, "errors": 6, "p99 latency": 6}
    assert frame[TIMESTAMP].min() == pd.Timestamp("2025-12-31 23:00", tz="UTC")
