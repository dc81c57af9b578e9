"""Source specs and readers: small files in tmp_path, the real NAB / AIOps data, and bad inputs."""
from __future__ import annotations

import functools
import gzip
import http.server
import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from models.frame import KPI_ID, LABEL, TIMESTAMP, VALUE
from pipeline.data import sources, synthetic
from pipeline.data.contract import DTYPES, DataError
from pipeline.io import storage
from pipeline.io.storage import StorageError
from pipeline.params import CsvColumns, DataParams, Params

try:
    from tests.servers import closed_port, env_vars
except ImportError:  # tests/ on sys.path (pytest's rootdir insertion), not a package
    from servers import closed_port, env_vars

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
NAB_DIR = SHARED / "nab"
AIOPS_FILE = SHARED / "aiops2018" / "phase2_train.csv.gz"
needs_shared = pytest.mark.skipif(not SHARED.exists(), reason="../shared/datasets absent: real-data tests need it")

PARAMS = Params()


def params_with(**csv) -> Params:
    return PARAMS.model_copy(update={"data": DataParams(csv=CsvColumns(**csv))})


def kpi_csv(kpi: str = "a", n: int = 5, label: bool = True, start: str = "2026-01-01") -> pd.DataFrame:
    df = pd.DataFrame({
        "kpi_id": kpi,
        "timestamp": pd.date_range(start, periods=n, freq="5min").strftime("%Y-%m-%d %H:%M:%S"),
        "value": np.arange(n, dtype=float) + 0.5,
    })
    if label:
        df["label"] = [0] * (n - 1) + [1]
    return df


def assert_canonical(frame: pd.DataFrame, labelled: bool = True) -> None:
    expected = [KPI_ID, TIMESTAMP, VALUE, *([LABEL] if labelled else [])]
    assert list(frame.columns) == expected
    for col in expected:
        assert frame[col].dtype == DTYPES[col], (col, frame[col].dtype)
    assert isinstance(frame.index, pd.RangeIndex)
    order = frame.sort_values([KPI_ID, TIMESTAMP], kind="stable").index
    assert (order == frame.index).all(), "not sorted by kpi_id, timestamp"


# ---------------------------------------------------------------------------------------------
# spec strings


@pytest.mark.parametrize("spec,expected", [
    ("synthetic:", ("synthetic", "")),
    ("nab:../shared/datasets/nab", ("nab", "../shared/datasets/nab")),
    ("aiops:/data/a.csv.gz", ("aiops", "/data/a.csv.gz")),
    ("csv:s3://bucket/prefix", ("csv", "s3://bucket/prefix")),
    ("csv:https://example.org/a.csv", ("csv", "https://example.org/a.csv")),
])
def test_parse_spec(spec, expected):
    assert sources.parse_spec(spec) == expected


@pytest.mark.parametrize("spec,needle", [
    ("parquet:/x", "unknown scheme 'parquet'"),
    ("nope", "scheme:ARG"),
    ("csv:", "needs a path"),
    ("synthetic:foo", "takes no argument"),
])
def test_parse_spec_errors(spec, needle):
    with pytest.raises(DataError) as err:
        sources.parse_spec(spec)
    assert err.value.rule == "source_spec"
    assert needle in str(err.value)
    assert spec in str(err.value)


def test_unknown_scheme_in_read_source_lists_known():
    with pytest.raises(DataError, match="known: synthetic:, nab:, aiops:, csv:"):
        sources.read_source("kafka:topic", PARAMS)


# ---------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_source_and_range():
    full = sources.read_source("synthetic:", PARAMS)
    assert_canonical(full)
    assert full[KPI_ID].nunique() == PARAMS.synthetic.n_kpis
    day = sources.read_source("synthetic:", PARAMS, start="2026-01-03", end="2026-01-04")
    assert day[TIMESTAMP].min() >= pd.Timestamp("2026-01-03", tz="UTC")
    assert day[TIMESTAMP].max() < pd.Timestamp("2026-01-04", tz="UTC")
    expected = full[(full[TIMESTAMP] >= pd.Timestamp("2026-01-03", tz="UTC"))
                    & (full[TIMESTAMP] < pd.Timestamp("2026-01-04", tz="UTC"))].reset_index(drop=True)
    pd.testing.assert_frame_equal(day, expected)
    pd.testing.assert_frame_equal(full, synthetic.generate(PARAMS.synthetic), check_dtype=False)


# ---------------------------------------------------------------------------------------------
# csv:


def test_csv_single_file(tmp_path):
    path = tmp_path / "kpis.csv"
    pd.concat([kpi_csv("b"), kpi_csv("a")]).to_csv(path, index=False)
    frame = sources.read_source(f"csv:{path}", PARAMS)
    assert_canonical(frame)
    assert frame[KPI_ID].tolist() == ["a"] * 5 + ["b"] * 5
    assert frame[TIMESTAMP].iloc[0] == pd.Timestamp("2026-01-01", tz="UTC")
    assert frame[VALUE].tolist()[:5] == [0.5, 1.5, 2.5, 3.5, 4.5]
    assert frame[LABEL].tolist()[:5] == [0, 0, 0, 0, 1]


def test_csv_gz_and_parquet(tmp_path):
    df = kpi_csv("a", n=20)
    gz = tmp_path / "a.csv.gz"
    gz.write_bytes(gzip.compress(df.to_csv(index=False).encode()))
    pq = tmp_path / "a.parquet"
    df.assign(timestamp=pd.to_datetime(df["timestamp"], utc=True)).to_parquet(pq, index=False)
    from_gz = sources.read_source(f"csv:{gz}", PARAMS)
    from_pq = sources.read_source(f"csv:{pq}", PARAMS)
    assert_canonical(from_gz)
    assert len(from_gz) == 20
    pd.testing.assert_frame_equal(from_gz, from_pq)


def test_csv_directory_recursive_mixed_formats(tmp_path):
    (tmp_path / "sub").mkdir()
    kpi_csv("c", start="2026-01-02").to_csv(tmp_path / "c.csv", index=False)
    (tmp_path / "sub" / "a.csv.gz").write_bytes(gzip.compress(kpi_csv("a").to_csv(index=False).encode()))
    kpi_csv("b").to_parquet(tmp_path / "sub" / "b.parquet", index=False)
    (tmp_path / "README.txt").write_text("not data")
    frame = sources.read_source(f"csv:{tmp_path}", PARAMS)
    assert_canonical(frame)
    assert frame.groupby(KPI_ID, observed=True).size().to_dict() == {"a": 5, "b": 5, "c": 5}


def test_csv_column_mapping(tmp_path):
    df = kpi_csv("a").rename(columns={"kpi_id": "metric", "timestamp": "ts", "value": "v", "label": "is_anomaly"})
    df["extra"] = "ignored"
    df.to_csv(tmp_path / "m.csv", index=False)
    params = params_with(kpi_id="metric", timestamp="ts", value="v", label="is_anomaly")
    frame = sources.read_source(f"csv:{tmp_path / 'm.csv'}", params)
    assert_canonical(frame)
    assert frame[LABEL].sum() == 1


def test_csv_kpi_id_from_file_stem_and_unlabelled(tmp_path):
    kpi_csv("x", label=False).drop(columns="kpi_id").to_csv(tmp_path / "cpu.host1.csv", index=False)
    (tmp_path / "mem.csv.gz").write_bytes(
        gzip.compress(kpi_csv("x", label=False).drop(columns="kpi_id").to_csv(index=False).encode()))
    frame = sources.read_source(f"csv:{tmp_path}", params_with(kpi_id=None))
    assert_canonical(frame, labelled=False)
    assert sorted(frame[KPI_ID].unique()) == ["cpu.host1", "mem"]


def test_csv_label_disabled_by_params(tmp_path):
    kpi_csv("a").to_csv(tmp_path / "a.csv", index=False)
    frame = sources.read_source(f"csv:{tmp_path}", params_with(label=None))
    assert_canonical(frame, labelled=False)


def test_csv_numeric_kpi_ids_stay_text(tmp_path):
    kpi_csv("007").to_csv(tmp_path / "a.csv", index=False)
    frame = sources.read_source(f"csv:{tmp_path}", PARAMS)
    assert frame[KPI_ID].unique().tolist() == ["007"]


def test_csv_unix_and_offset_timestamps(tmp_path):
    pd.DataFrame({"kpi_id": "a", "timestamp": [1767225600, 1767225900], "value": [1, 2]}).to_csv(
        tmp_path / "unix.csv", index=False)
    pd.DataFrame({"kpi_id": "b", "timestamp": ["2026-01-01T01:00:00+01:00", "2026-01-01T01:05:00+01:00"],
                  "value": [1, 2]}).to_csv(tmp_path / "offset.csv", index=False)
    frame = sources.read_source(f"csv:{tmp_path}", params_with(label=None))
    assert (frame[TIMESTAMP].iloc[[0, 2]] == pd.Timestamp("2026-01-01", tz="UTC")).all()


def test_csv_bad_rows_are_kept_for_validation(tmp_path):
    """NaN, inf, duplicate timestamps and bad labels reach the validate stage (never dropped here)."""
    (tmp_path / "a.csv").write_text(
        "kpi_id,timestamp,value,label\n"
        "a,2026-01-01 00:00:00,1.0,0\n"
        "a,2026-01-01 00:00:00,2.0,0\n"
        "a,2026-01-01 00:05:00,,0\n"
        "a,2026-01-01 00:10:00,inf,0\n"
        "a,2026-01-01 00:15:00,nan,2\n")
    frame = sources.read_source(f"csv:{tmp_path}", PARAMS)
    assert len(frame) == 5
    assert frame[VALUE].isna().sum() == 2 and np.isinf(frame[VALUE]).sum() == 1
    assert frame.duplicated([KPI_ID, TIMESTAMP]).sum() == 1
    assert set(frame[LABEL]) == {0, 2}


def test_csv_start_end_filter(tmp_path):
    kpi_csv("a", n=12).to_csv(tmp_path / "a.csv", index=False)
    frame = sources.read_source(f"csv:{tmp_path}", PARAMS, start="2026-01-01 00:10", end="2026-01-01 00:30")
    assert frame[TIMESTAMP].dt.strftime("%H:%M").tolist() == ["00:10", "00:15", "00:20", "00:25"]


# ---------------------------------------------------------------------------------------------
# nab: and aiops: on small files


def write_nab(root: Path) -> None:
    for cat, name, start in [("realX", "one", "2014-01-01"), ("artY", "two", "2014-02-01")]:
        (root / "data" / cat).mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"timestamp": pd.date_range(start, periods=10, freq="1h").strftime("%Y-%m-%d %H:%M:%S"),
                      "value": np.arange(10.0)}).to_csv(root / "data" / cat / f"{name}.csv", index=False)
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps({
        "realX/one.csv": [["2014-01-01 02:00:00.000000", "2014-01-01 04:00:00.000000"]],
        "artY/two.csv": [],
    }))


def test_nab_small(tmp_path):
    write_nab(tmp_path)
    frame = sources.read_source(f"nab:{tmp_path}", PARAMS)
    assert_canonical(frame)
    assert frame[KPI_ID].unique().tolist() == ["artY/two", "realX/one"]
    one = frame[frame[KPI_ID] == "realX/one"]
    assert one[LABEL].tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]     # window bounds inclusive
    assert frame[frame[KPI_ID] == "artY/two"][LABEL].eq(0).all()


def test_nab_missing_labels(tmp_path):
    write_nab(tmp_path)
    (tmp_path / "labels" / "combined_windows.json").unlink()
    with pytest.raises(DataError) as err:
        sources.read_source(f"nab:{tmp_path}", PARAMS)
    assert err.value.rule == "file_exists" and "combined_windows.json" in str(err.value)


def test_nab_wrong_columns(tmp_path):
    write_nab(tmp_path)
    bad = tmp_path / "data" / "realX" / "one.csv"
    bad.write_text("time,val\n2014-01-01 00:00:00,1\n")
    with pytest.raises(DataError) as err:
        sources.read_source(f"nab:{tmp_path}", PARAMS)
    msg = str(err.value)
    assert err.value.rule == "required_columns" and err.value.column == TIMESTAMP
    assert str(bad) in msg and "expected ['timestamp', 'value']" in msg and "found ['time', 'val']" in msg


def test_aiops_small(tmp_path):
    df = pd.DataFrame({"timestamp": [1491041340, 1491041280, 1491041280], "value": [2.0, 1.0, 5.0],
                       "label": [1, 0, 0], "KPI ID": ["k1", "k1", "k0"]})
    path = tmp_path / "train.csv.gz"
    path.write_bytes(gzip.compress(df.to_csv(index=False).encode()))
    frame = sources.read_source(f"aiops:{path}", PARAMS)
    assert_canonical(frame)
    assert frame[KPI_ID].tolist() == ["k0", "k1", "k1"]
    assert frame[VALUE].tolist() == [5.0, 1.0, 2.0]
    assert frame[TIMESTAMP].iloc[1] == pd.Timestamp(1491041280, unit="s", tz="UTC")


def test_aiops_wrong_columns(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("timestamp,value,label,kpi\n1,2,0,k\n")
    with pytest.raises(DataError) as err:
        sources.read_source(f"aiops:{path}", PARAMS)
    assert err.value.column == "KPI ID" and str(path) in str(err.value)


# ---------------------------------------------------------------------------------------------
# bad inputs


def test_wrong_columns_names_expected_and_found(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("kpi,time,val\na,2026-01-01,1\n")
    with pytest.raises(DataError) as err:
        sources.read_source(f"csv:{path}", PARAMS)
    msg = str(err.value)
    assert err.value.rule == "required_columns" and err.value.column == KPI_ID
    assert str(path) in msg
    assert "expected ['kpi_id', 'timestamp', 'value']" in msg and "found ['kpi', 'time', 'val']" in msg
    assert "data.csv.kpi_id" in msg


def test_non_numeric_values(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("kpi_id,timestamp,value\na,2026-01-01 00:00,1\na,2026-01-01 00:05,oops\n")
    with pytest.raises(DataError) as err:
        sources.read_source(f"csv:{path}", PARAMS)
    assert err.value.rule == "numeric_values" and err.value.column == VALUE
    assert str(path) in str(err.value) and "oops" in str(err.value)


def test_non_numeric_value_deep_in_a_large_file(tmp_path):
    """pyarrow types a column from its first block; a later bad value still gets a clear error."""
    df = kpi_csv("a", n=200_000, label=False)
    df["value"] = df["value"].astype(object)
    df.loc[199_990, "value"] = "n/a?"
    path = tmp_path / "big.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        sources.read_source(f"csv:{path}", params_with(label=None))
    assert err.value.rule == "numeric_values" and err.value.column == VALUE and "n/a?" in str(err.value)


@pytest.mark.parametrize("stamp", ["yesterday-ish", '"1,5"'])  # "1,5": the year 1, beyond nanoseconds (a fuzz find)
def test_unparseable_timestamps(tmp_path, stamp):
    path = tmp_path / "a.csv"
    path.write_text(f"kpi_id,timestamp,value\na,{stamp},1\n")
    with pytest.raises(DataError) as err:
        sources.read_source(f"csv:{path}", PARAMS)
    assert err.value.rule == "parseable_timestamps" and err.value.column == TIMESTAMP


@pytest.mark.parametrize("content,rule", [(b"", "non_empty_file"), (b"kpi_id,timestamp,value\n", "non_empty_file")])
def test_empty_file(tmp_path, content, rule):
    path = tmp_path / "a.csv"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        sources.read_source(f"csv:{path}", PARAMS)
    assert err.value.rule == rule and str(path) in str(err.value)


def test_empty_gz(tmp_path):
    path = tmp_path / "a.csv.gz"
    path.write_bytes(gzip.compress(b""))
    with pytest.raises(DataError, match="non_empty_file"):
        sources.read_source(f"aiops:{path}", PARAMS)


@pytest.mark.parametrize("scheme", ["csv", "aiops", "nab"])
def test_missing_file_or_dir(tmp_path, scheme):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError) as err:
        sources.read_source(f"{scheme}:{path}", PARAMS)
    assert err.value.rule == "file_exists" and str(path) in str(err.value)


def test_directory_without_data_files(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="holds no"):
        sources.read_source(f"csv:{tmp_path}", PARAMS)


def test_kpi_id_from_stem_must_be_unique(tmp_path):
    (tmp_path / "x").mkdir()
    kpi_csv(label=False).to_csv(tmp_path / "a.csv", index=False)
    kpi_csv(label=False).to_csv(tmp_path / "x" / "a.csv", index=False)
    with pytest.raises(DataError, match="unique_kpi_ids"):
        sources.read_source(f"csv:{tmp_path}", params_with(kpi_id=None))


def test_labels_all_or_none(tmp_path):
    kpi_csv("a").to_csv(tmp_path / "a.csv", index=False)
    kpi_csv("b", label=False).to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(DataError) as err:
        sources.read_source(f"csv:{tmp_path}", PARAMS)
    assert err.value.rule == "consistent_labels" and "b.csv" in str(err.value)


def test_unreachable_http():
    url = f"http://127.0.0.1:{closed_port()}/kpis.csv"
    with pytest.raises(StorageError) as err:
        sources.read_source(f"csv:{url}", PARAMS)
    assert err.value.rule == "http_reachable" and url in str(err.value)


def test_unreachable_s3():
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with env_vars({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                   "AWS_DEFAULT_REGION": "us-east-1"}):
        with pytest.raises(StorageError) as err:
            sources.read_source("csv:s3://kpis/daily/", PARAMS)
    assert err.value.rule == "s3_reachable"
    assert "s3://kpis/daily/" in str(err.value) and endpoint in str(err.value)


@pytest.fixture()
def http_dir(tmp_path):
    """A real HTTP server on loopback serving tmp_path."""
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_http_file(http_dir):
    root, url = http_dir
    kpi_csv("a").to_csv(root / "a.csv", index=False)
    (root / "b.csv.gz").write_bytes(gzip.compress(kpi_csv("b").to_csv(index=False).encode()))
    a = sources.read_source(f"csv:{url}/a.csv", PARAMS)
    b = sources.read_source(f"csv:{url}/b.csv.gz", PARAMS)
    assert_canonical(a)
    assert a[KPI_ID].eq("a").all() and len(a) == 5
    assert b[KPI_ID].eq("b").all() and len(b) == 5
    with pytest.raises(StorageError) as err:
        sources.read_source(f"csv:{url}/missing.csv", PARAMS)
    assert err.value.rule == "file_exists" and f"{url}/missing.csv" in str(err.value)
    with pytest.raises(StorageError, match="listable_path"):
        sources.read_source(f"csv:{url}/", PARAMS)


def test_storage_local_roundtrip(tmp_path):
    frame = sources.read_source("synthetic:", PARAMS, start="2026-01-01", end="2026-01-02")
    target = tmp_path / "out" / "frame.parquet"
    storage.write_parquet(frame, target)
    assert storage.exists(target) and not list(target.parent.glob(".*.tmp"))
    pd.testing.assert_frame_equal(storage.read_table(target), frame, check_dtype=False)
    assert storage.list_files(tmp_path, (".parquet",)) == [str(target)]


# ---------------------------------------------------------------------------------------------
# real data (../shared/datasets)


@pytest.mark.shared_data
@needs_shared
def test_real_nab():
    t0 = time.perf_counter()
    frame = sources.read_source(f"nab:{NAB_DIR}", PARAMS)
    elapsed = time.perf_counter() - t0
    assert_canonical(frame)
    assert frame[KPI_ID].nunique() == 58
    assert 360_000 <= len(frame) <= 370_000
    assert "realKnownCause/nyc_taxi" in set(frame[KPI_ID])
    windows = json.loads((NAB_DIR / "labels" / "combined_windows.json").read_text())
    # labels are 1 exactly inside the windows (inclusive) of each file
    for name in ["realKnownCause/nyc_taxi", "realAWSCloudwatch/ec2_cpu_utilization_24ae8d"]:
        part = frame[frame[KPI_ID] == name]
        inside = np.zeros(len(part), dtype=bool)
        for lo, hi in windows[f"{name}.csv"]:
            inside |= ((part[TIMESTAMP] >= pd.Timestamp(lo, tz="UTC")) & (part[TIMESTAMP] <= pd.Timestamp(hi, tz="UTC"))).to_numpy()
        assert inside.any()
        np.testing.assert_array_equal(part[LABEL].to_numpy(), inside.astype("int8"))
    assert 0.05 < frame[LABEL].mean() < 0.15
    assert elapsed < 20, f"reading NAB took {elapsed:.1f}s"


@pytest.mark.shared_data
@pytest.mark.timeout(180)
@needs_shared
def test_real_aiops():
    frame = sources.read_source(f"aiops:{AIOPS_FILE}", PARAMS)
    assert_canonical(frame)
    assert frame[KPI_ID].nunique() == 29
    assert len(frame) == 3_004_066
    assert frame[LABEL].mean() == pytest.approx(0.0265, abs=0.0005)
    assert frame[VALUE].notna().all()
