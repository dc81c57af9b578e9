"""The ``prometheus:`` source (pipeline/data/sources.py::read_prometheus) against a real Prometheus.

Prometheus holds a known history, backfilled with ``promtool tsdb create-blocks-from openmetrics``: two
KPIs at one minute for 20,000 minutes (more than the 11,000 points Prometheus gives per series and
query, so the reader must split the range), KPI ``a`` with a 20-minute scrape gap, KPI ``b`` with a NaN
sample. What comes out must be what went in, step for step, with Prometheus's own rule for a step just
after a sample (its 5-minute lookback reads that sample) and nothing for the rest of a gap.
"""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.batch import daily
from pipeline.data import sources
from pipeline.errors import DataError
from pipeline.io import storage
from pipeline.params import Params, StorageParams, parse_params
from tests.conftest import REPO
from tests.servers import LOOPBACK, closed_port, free_port, openmetrics, prometheus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

MINUTES = 20_000
START = pd.Timestamp("2026-06-01", tz="UTC")
GAP = range(1000, 1020)  # KPI a has no sample in these minutes
NAN_AT = 5000            # KPI b's sample here is NaN
LOOKBACK = 5             # Prometheus's default lookback delta, in one-minute steps


def history() -> pd.DataFrame:
    stamps = pd.date_range(START, periods=MINUTES, freq="1min", tz="UTC")
    rng = np.random.default_rng(0)
    a = pd.DataFrame({"kpi_id": "a", "timestamp": stamps, "value": np.round(rng.normal(50, 5, MINUTES), 3)})
    b = pd.DataFrame({"kpi_id": "b", "timestamp": stamps, "value": np.round(rng.normal(7, 1, MINUTES), 3)})
    a = a.drop(index=list(GAP))
    b.loc[NAN_AT, "value"] = np.nan
    return pd.concat([a, b], ignore_index=True)


@pytest.fixture(scope="module")
def prom(tmp_path_factory):
    with prometheus(tmp_path_factory.mktemp("prometheus"), openmetrics(history())) as url:
        yield url


def params(**prometheus_settings) -> Params:
    raw = Params().model_dump(by_alias=True)
    raw["data"]["prometheus"].update({"step": "1m", "kpi_labels": ["name"], **prometheus_settings})
    raw["storage"].update({"max_attempts": 1, "connect_timeout_s": 2, "read_timeout_s": 10})
    p = parse_params(raw)
    storage.configure(p.storage)
    return p


@pytest.fixture(autouse=True)
def _default_bounds():
    yield
    storage.configure(StorageParams())


def read(url: str, query: str = "kpi", p: Params | None = None, end=None) -> pd.DataFrame:
    return sources.read_source(f"prometheus:{url}?query={query}", p or params(), START,
                               end or START + pd.Timedelta(minutes=MINUTES))


def test_the_known_series_come_out_step_for_step_across_query_chunks(prom):
    out = read(prom)
    assert list(out.columns) == ["kpi_id", "timestamp", "value"]  # no labels: the label-free path
    assert sorted(out["kpi_id"].unique()) == ["a", "b"]
    assert not out.duplicated(["kpi_id", "timestamp"]).any()  # chunk boundaries are not read twice

    given = history().dropna(subset=["value"]).set_index(["kpi_id", "timestamp"])["value"]
    got = out.set_index(["kpi_id", "timestamp"])["value"]
    # every sample that went in comes out, at its timestamp, with its value
    pd.testing.assert_series_equal(got.reindex(given.index), given, check_names=False)

    b = out[out["kpi_id"] == "b"]
    assert len(b) == MINUTES - 1 and START + pd.Timedelta(minutes=NAN_AT) not in set(b["timestamp"])  # NaN: no row
    a = out[out["kpi_id"] == "a"].set_index("timestamp")["value"]
    before_gap = history().set_index(["kpi_id", "timestamp"]).loc[("a", START + pd.Timedelta(minutes=GAP[0] - 1)), "value"]
    filled = [START + pd.Timedelta(minutes=m) for m in GAP[:LOOKBACK]]
    missing = [START + pd.Timedelta(minutes=m) for m in GAP[LOOKBACK:]]
    assert (a.loc[filled] == before_gap).all()        # Prometheus's lookback: the last sample, up to 5 minutes
    assert not set(missing) & set(a.index)            # the rest of the gap stays missing
    assert len(a) == MINUTES - len(missing)


def test_the_regular_grid_sees_the_gap_as_missing(prom):
    from pipeline.data import prep

    out = read(prom)
    gridded, stats = prep.regularise(out[out["kpi_id"] == "a"])
    gap = gridded[gridded["timestamp"].isin([START + pd.Timedelta(minutes=m) for m in GAP[LOOKBACK:]])]
    assert len(gap) == len(GAP) - LOOKBACK and gap[prep.MISSING].all()  # interpolated, and marked missing
    assert stats["missing"] == len(GAP) - LOOKBACK and stats["interval_s"] == 60


def test_kpi_ids_without_kpi_labels_are_the_series_as_prometheus_writes_them(prom):
    out = read(prom, p=params(kpi_labels=None), end=START + pd.Timedelta("1h"))
    assert sorted(out["kpi_id"].unique()) == ['kpi{name="a"}', 'kpi{name="b"}']
    assert sources.prometheus_kpi_id({"__name__": "up", "job": 'a"b', "instance": "h\n1"}, None) == \
        'up{instance="h\\n1",job="a\\"b"}'
    assert sources.prometheus_kpi_id({"job": "api", "instance": "h1"}, ["job", "instance"]) == "api/h1"


def test_labels_that_do_not_tell_series_apart_are_an_error(prom):
    with pytest.raises(DataError) as err:
        read(prom, p=params(kpi_labels=["job"]), end=START + pd.Timedelta("1h"))
    assert err.value.rule == "unique_kpi_ids" and 'kpi{name="a"}' in str(err.value) and "kpi_labels" in str(err.value)


def test_a_bad_query_names_the_url_the_query_and_prometheus_s_error(prom):
    with pytest.raises(DataError) as err:
        read(prom, query="kpi{", end=START + pd.Timedelta("1h"))
    text = str(err.value)
    assert err.value.rule == "http_request" and "HTTP 400" in text and "Prometheus says bad_data" in text
    assert prom in text and "'kpi{'" in text


def test_a_query_without_series_is_a_clear_error(prom):
    with pytest.raises(DataError) as err:
        read(prom, query='kpi{name="nope"}', end=START + pd.Timedelta("1h"))
    assert err.value.rule == "prometheus_no_series" and "no series" in str(err.value)
    assert 'kpi{name="nope"}' in str(err.value)


def test_an_unreachable_prometheus_is_a_clear_error():
    url = f"http://{LOOPBACK}:{closed_port()}"
    with pytest.raises(DataError) as err:
        read(url, end=START + pd.Timedelta("1h"))
    assert err.value.rule == "http_reachable" and url in str(err.value) and "'kpi'" in str(err.value)


def test_the_answer_is_bounded_by_storage_max_read_mb(prom):
    p = params()
    raw = p.model_dump(by_alias=True)
    raw["storage"]["max_read_mb"] = 0.01
    p = parse_params(raw)
    storage.configure(p.storage)
    with pytest.raises(DataError) as err:
        read(prom, p=p)
    assert err.value.rule == "max_read_bytes"


def test_the_auth_header_comes_from_the_environment(monkeypatch):
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(dict(self.headers))
            body = json.dumps({"status": "success", "data": {"resultType": "matrix", "result": [
                {"metric": {"name": "a"}, "values": [[START.timestamp(), "1.5"], [START.timestamp() + 60, "+Inf"]]}]}})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://{LOOPBACK}:{server.server_port}"
    try:
        p = params(auth_header_env="KPIGUARD_TEST_PROM_AUTH")
        with pytest.raises(DataError) as err:  # named but not set: nothing is sent
            read(url, p=p, end=START + pd.Timedelta("2min"))
        assert err.value.rule == "prometheus_auth" and not seen
        monkeypatch.setenv("KPIGUARD_TEST_PROM_AUTH", "Bearer s3cret")
        out = read(url, p=p, end=START + pd.Timedelta("2min"))
        assert seen[-1]["Authorization"] == "Bearer s3cret"
        assert list(out["value"]) == [1.5, np.inf]  # +Inf is kept: validation quarantines it with its rule
    finally:
        server.shutdown()


def test_an_allowed_score_input_may_be_a_prometheus_spec(prom):
    spec = f"prometheus:{prom}?query=kpi"
    raw = Params().model_dump(by_alias=True)
    raw["score"]["allowed_inputs"] = [spec]
    assert daily.check_input(parse_params(raw), spec) == spec
    with pytest.raises(DataError) as err:
        daily.check_input(parse_params(raw), spec + "&x")
    assert err.value.rule == "allowed_input"


def kpiguard(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_kpiguard_ingest_reads_prometheus_and_a_bad_query_exits_2(prom, tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    window = ["-S", f"data.prometheus.start={START.isoformat()}", "-S",
              f"data.prometheus.end={(START + pd.Timedelta(minutes=MINUTES)).isoformat()}",
              "-S", "data.prometheus.kpi_labels=[name]"]
    ok = kpiguard(tmp_path, "ingest", "-S", f"data.train=prometheus:{prom}?query=kpi", *window)
    assert ok.returncode == 0, ok.stderr[-3000:]
    raw = pd.read_parquet(tmp_path / "data/raw/train.parquet")
    assert sorted(raw["kpi_id"].unique()) == ["a", "b"] and len(raw) == 2 * MINUTES - 1 - (len(GAP) - LOOKBACK)

    bad = kpiguard(tmp_path, "ingest", "-S", f"data.train=prometheus:{prom}?query=rate(kpi[5m]", *window)
    assert bad.returncode == 2 and "Traceback" not in bad.stdout + bad.stderr
    assert "Prometheus says bad_data" in bad.stderr and "rate(kpi[5m]" in bad.stderr
