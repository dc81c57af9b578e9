"""pipeline.io.storage and csv: sources against a real S3 server (SeaweedFS ``weed mini`` on loopback)."""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd
import pytest

from models.frame import KPI_ID, LABEL, TIMESTAMP, VALUE
from pipeline.data import sources
from pipeline.data.contract import DTYPES
from pipeline.io import storage
from pipeline.io.storage import StorageError
from pipeline.params import Params
from tests.servers import closed_port, env_vars

pytestmark = pytest.mark.integration

PARAMS = Params()
BUCKET = "kpis"


def kpi_csv(kpi: str, n: int = 30) -> bytes:
    return pd.DataFrame({
        "kpi_id": kpi,
        "timestamp": pd.date_range("2026-01-01", periods=n, freq="1min").strftime("%Y-%m-%d %H:%M:%S"),
        "value": np.linspace(0, 1, n),
        "label": [0] * (n - 1) + [1],
    }).to_csv(index=False).encode()


@pytest.fixture()
def s3(s3_server):
    """Environment pointing at the test server, an existing bucket and a client."""
    endpoint, env = s3_server
    with env_vars(env):
        client = storage.s3_client()
        existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
        if BUCKET not in existing:
            client.create_bucket(Bucket=BUCKET)
        yield endpoint, client


def test_read_csv_prefix_from_s3(s3):
    _, client = s3
    client.put_object(Bucket=BUCKET, Key="raw/2026-01-01/b.csv", Body=kpi_csv("b"))
    client.put_object(Bucket=BUCKET, Key="raw/2026-01-01/nested/a.csv.gz", Body=gzip.compress(kpi_csv("a")))
    client.put_object(Bucket=BUCKET, Key="raw/2026-01-01/_SUCCESS", Body=b"")
    client.put_object(Bucket=BUCKET, Key="raw/2026-01-01x/other.csv", Body=kpi_csv("z"))  # not under prefix
    assert storage.list_files(f"s3://{BUCKET}/raw/2026-01-01") == [
        f"s3://{BUCKET}/raw/2026-01-01/b.csv", f"s3://{BUCKET}/raw/2026-01-01/nested/a.csv.gz"]
    frame = sources.read_source(f"csv:s3://{BUCKET}/raw/2026-01-01", PARAMS)
    assert list(frame.columns) == [KPI_ID, TIMESTAMP, VALUE, LABEL]
    for col in frame.columns:
        assert frame[col].dtype == DTYPES[col], col
    assert frame.groupby(KPI_ID, observed=True).size().to_dict() == {"a": 30, "b": 30}
    assert frame[LABEL].sum() == 2
    assert frame[TIMESTAMP].iloc[0] == pd.Timestamp("2026-01-01", tz="UTC")
    # one object, addressed directly
    single = sources.read_source(f"csv:s3://{BUCKET}/raw/2026-01-01/b.csv", PARAMS)
    assert single[KPI_ID].unique().tolist() == ["b"]


def test_write_parquet_roundtrip(s3):
    frame = sources.read_source("synthetic:", PARAMS, start="2026-01-01", end="2026-01-03")
    path = f"s3://{BUCKET}/out/frame.parquet"
    storage.write_parquet(frame, path)
    assert storage.exists(path)
    back = storage.read_table(path)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert sources.read_source(f"csv:{path}", PARAMS).equals(frame)
    storage.write_bytes(f"s3://{BUCKET}/out/blob.bin", b"\x00abc")
    assert storage.read_bytes(f"s3://{BUCKET}/out/blob.bin") == b"\x00abc"


def test_missing_object_prefix_and_bucket(s3):
    endpoint, _ = s3
    with pytest.raises(StorageError) as err:
        storage.read_bytes(f"s3://{BUCKET}/nope.csv")
    assert err.value.rule == "file_exists" and f"s3://{BUCKET}/nope.csv" in str(err.value)
    assert endpoint in str(err.value)
    with pytest.raises(StorageError) as err:
        sources.read_source(f"csv:s3://{BUCKET}/no/such/prefix", PARAMS)
    assert err.value.rule == "file_exists"
    with pytest.raises(StorageError) as err:
        storage.read_bytes("s3://no-such-bucket-kpi/x.csv")
    assert err.value.rule == "bucket_exists"


def test_empty_object(s3):
    _, client = s3
    client.put_object(Bucket=BUCKET, Key="empty/a.csv", Body=b"")
    with pytest.raises(StorageError) as err:
        sources.read_source(f"csv:s3://{BUCKET}/empty/a.csv", PARAMS)
    assert err.value.rule == "non_empty_file" and f"s3://{BUCKET}/empty/a.csv" in str(err.value)


def test_wrong_credentials(s3_server):
    _, env = s3_server
    with env_vars({**env, "AWS_SECRET_ACCESS_KEY": "wrong-secret"}):
        with pytest.raises(StorageError) as err:
            storage.list_files(f"s3://{BUCKET}/raw")
    assert err.value.rule == "s3_credentials" and "AWS_SECRET_ACCESS_KEY" in str(err.value)


def test_unreachable_endpoint():
    endpoint = f"http://127.0.0.1:{closed_port()}"
    path = f"s3://{BUCKET}/raw/a.csv"
    with env_vars({"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                   "AWS_DEFAULT_REGION": "us-east-1"}):
        # (read_source over an unreachable endpoint: tests/test_sources.py::test_unreachable_s3)
        for action in (lambda: storage.read_bytes(path), lambda: storage.write_bytes(path, b"x")):
            with pytest.raises(StorageError) as err:
                action()
            msg = str(err.value)
            assert err.value.rule == "s3_reachable"
            assert path in msg and endpoint in msg
            assert f"in {storage.settings().max_attempts} attempt(s) of at most" in msg


# -- the S3 partition writer, killed at every step (issue #13.7) --------------------------------
def _partition(tag: str) -> pd.DataFrame:
    return pd.DataFrame({"kpi_id": ["a", "b"], "tag": [tag, tag]})


def _scores(tag: str) -> pd.DataFrame:
    """Two rows of the scores dataset's schema; the writer's ``tag`` is their kpi_id."""
    return pd.DataFrame({"kpi_id": [tag, tag], "timestamp": pd.to_datetime(["2026-01-05 00:00", "2026-01-05 00:05"], utc=True),
                         "value": 1.0, "expected": 1.0, "expected_low": 0.5, "expected_high": 1.5,
                         "raw_score": 0.5, "score": 2.0, "threshold": 3.0, "is_anomaly": False})


def test_s3_partition_writer_killed_at_every_step(s3):
    """Each file of a day is one PUT, the quarantine first and ``_meta.json`` last: at every step of a
    killed write, a reader of either dataset finds the old day or the new one whole, never both and never
    nothing, and a ``_meta.json`` never describes files that are not there yet. The rerun leaves one data
    file per partition and removes what the earlier layout left (``run=`` prefixes, the pointer, a
    quarantine file among the scores), which a dataset reader would otherwise list."""
    from pipeline.batch import score
    from tests.test_outputs import _killed_at

    output, date = f"s3://{BUCKET}/scores-fault", "2026-01-05"
    day, target = pd.Timestamp(date, tz="UTC"), f"s3://{BUCKET}/scores-fault/date={date}"
    held_target = f"s3://{BUCKET}/scores-fault_quarantine/date={date}"

    def write(tag):
        return score.write_partition(output, day, _scores(tag), _partition(tag), {"tag": tag})

    def patch(dying):
        storage._s3_client.cache_clear()  # no connection shared with the parent process
        storage.write_bytes = dying(storage.write_bytes)
        storage.s3_delete = dying(storage.s3_delete)

    def seen() -> dict[str, set[str]]:
        return {"scores": set(score.read_partition(output, date)["kpi_id"]),
                "quarantine": set(storage.read_table(score.partition_file(output, date, score.QUARANTINED))["tag"]),
                "meta": {score.read_meta(output, date)["tag"]}}

    # the layout before issue 24: every write under run=<id>/, a pointer, the quarantine beside the scores
    storage.write_parquet(_scores("layout"), f"{target}/run=20260101T000000000000Z-0000abcd/scores.parquet")
    storage.write_parquet(_partition("layout"), f"{target}/run=20260101T000000000000Z-0000abcd/quarantine.parquet")
    storage.write_bytes(f"{target}/_partition.json", b'{"run": "run=20260101T000000000000Z-0000abcd"}')
    storage.write_parquet(_partition("flat"), f"{target}/quarantine.parquet")
    write("old")
    assert storage.s3_objects(target) == [f"{target}/_meta.json", f"{target}/scores.parquet"]
    assert storage.s3_objects(held_target) == [f"{held_target}/quarantine.parquet"]
    k = 0
    while True:
        k += 1
        assert k < 12, "the writer never finished"
        write("old")
        code = _killed_at(k, patch, lambda: write("new"))
        now = seen()
        assert all(len(tags) == 1 and tags <= {"old", "new"} for tags in now.values()), (k, now)  # whole files
        if now["meta"] == {"new"}:  # _meta.json last: what it describes is in place
            assert now["scores"] == now["quarantine"] == {"new"}, (k, now)
        if now["scores"] == {"new"}:
            assert now["quarantine"] == {"new"}, (k, now)
        write("rerun")
        assert seen() == {"scores": {"rerun"}, "quarantine": {"rerun"}, "meta": {"rerun"}}
        assert storage.s3_objects(target) == [f"{target}/_meta.json", f"{target}/scores.parquet"]
        assert storage.s3_objects(held_target) == [f"{held_target}/quarantine.parquet"]
        if code == 0:
            break
    assert k > 3


def test_the_scores_dataset_reads_whole_from_s3(s3):
    """On S3 as locally: the scores dataset is one Hive-partitioned table (pandas through s3fs, pyarrow's
    own S3 filesystem), its quarantine another."""
    import pyarrow.dataset as ds
    import pyarrow.fs

    from pipeline.batch import score

    endpoint, _ = s3
    output = f"s3://{BUCKET}/scores-whole"
    for date in ("2026-01-05", "2026-01-06"):
        score.write_partition(output, pd.Timestamp(date, tz="UTC"), _scores(date), _partition(date), {"date": date})
    options = {"client_kwargs": {"endpoint_url": endpoint}}
    whole = pd.read_parquet(output, storage_options=options)
    assert list(whole.columns) == [*score.SCORES_SCHEMA.names, "date"]
    assert sorted(whole["kpi_id"]) == ["2026-01-05"] * 2 + ["2026-01-06"] * 2
    assert (whole["kpi_id"] == whole["date"].astype(str)).all()  # each row in its own day's partition
    fs = pyarrow.fs.S3FileSystem(endpoint_override=endpoint, scheme="http")
    table = ds.dataset(f"{BUCKET}/scores-whole", filesystem=fs, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 4 and table.schema.names == [*score.SCORES_SCHEMA.names, "date"]
    held = pd.read_parquet(f"{output}_quarantine", storage_options=options)
    assert list(held.columns) == ["kpi_id", "tag", "date"] and len(held) == 4
