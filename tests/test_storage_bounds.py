"""Remote reads are bounded, and their error messages say exactly what was tried (#13.10a, b)."""
from __future__ import annotations

import gzip
import http.server
import socket
import threading
import time

import pytest

from pipeline import runtime
from pipeline.io import storage
from pipeline.params import StorageParams, parse_params
from tests.conftest import small_params_dict
from tests.servers import env_vars

TINY = StorageParams(connect_timeout_s=0.5, read_timeout_s=0.5, max_attempts=2, max_read_mb=1)


@pytest.fixture
def bounds():
    """Small timeouts and a 1 MiB cap for the test; the defaults again afterwards."""
    storage.configure(TINY)
    yield TINY
    storage.configure(StorageParams())


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers; yields (url, accepted connections)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.2)
    accepted, held, stop = [], [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            accepted.append(time.monotonic())
            held.append(conn)  # kept open, never read from or written to

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", accepted
    stop.set()
    thread.join(2)
    for conn in held:
        conn.close()
    sock.close()


def test_params_apply_to_storage():
    raw = small_params_dict(storage={"connect_timeout_s": 1, "read_timeout_s": 2, "max_attempts": 4,
                                     "max_read_mb": 8})
    try:
        params = parse_params(raw)
        assert storage.settings() == StorageParams()  # parsing is a schema: it changes nothing in the process
        runtime.apply(params)  # what every entry point does with its params
        assert storage.settings() == StorageParams(connect_timeout_s=1, read_timeout_s=2, max_attempts=4,
                                                   max_read_mb=8)
        assert storage.s3_client().meta.config.retries["total_max_attempts"] == 4
    finally:
        storage.configure(StorageParams())


def test_s3_endpoint_that_never_answers_is_bounded_and_the_message_exact(bounds, silent_server):
    url, accepted = silent_server
    path = "s3://bucket/kpis/a.csv"
    with env_vars({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                   "AWS_DEFAULT_REGION": "us-east-1"}):
        started = time.monotonic()
        with pytest.raises(storage.StorageError) as err:
            storage.read_bytes(path)
        elapsed = time.monotonic() - started
    assert err.value.rule == "s3_reachable"
    assert len(accepted) == bounds.max_attempts  # as many requests as the message says, no more
    assert "in 2 attempt(s) of at most 0.5s to connect and 0.5s to read each" in str(err.value)
    assert path in str(err.value) and url in str(err.value)
    # 2 x 0.5 s of waiting plus botocore's back-off (at most 1 s before the second attempt)
    assert elapsed < 5, elapsed


def test_http_endpoint_that_never_answers_is_bounded(bounds, silent_server, monkeypatch):
    url, accepted = silent_server
    monkeypatch.setattr(storage, "HTTP_BACKOFF_S", 0.01)
    started = time.monotonic()
    with pytest.raises(storage.StorageError) as err:
        storage.read_bytes(f"{url}/a.csv")
    assert err.value.rule == "http_reachable" and "in 2 attempt(s)" in str(err.value)
    assert len(accepted) == 2 and time.monotonic() - started < 4


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""
    send_length = True

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        if self.send_length:
            self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("send_length", [True, False], ids=["content-length", "chunked-unknown-length"])
def test_http_body_over_the_cap_is_refused(bounds, http_server, send_length, monkeypatch):
    monkeypatch.setattr(_Handler, "body", b"x" * (2 * 1024 * 1024))
    monkeypatch.setattr(_Handler, "send_length", send_length)
    with pytest.raises(storage.StorageError) as err:
        storage.read_bytes(f"{http_server}/big.csv")
    assert err.value.rule == "max_read_bytes" and "storage.max_read_mb" in str(err.value)
    monkeypatch.setattr(_Handler, "body", b"kpi_id,timestamp,value\na,2026-01-01,1\n")
    assert storage.read_bytes(f"{http_server}/small.csv").startswith(b"kpi_id")


def test_gzip_bomb_is_refused_and_multi_member_gzip_still_reads(bounds, tmp_path):
    bomb = tmp_path / "bomb.csv.gz"
    bomb.write_bytes(gzip.compress(b"kpi_id,timestamp,value\n" + b"0" * (3 * 1024 * 1024)))
    assert bomb.stat().st_size < 10_000
    with pytest.raises(storage.StorageError) as err:
        storage.read_table(str(bomb))
    assert err.value.rule == "max_read_bytes" and str(bomb) in str(err.value)

    two = tmp_path / "two.csv.gz"
    two.write_bytes(gzip.compress(b"kpi_id,timestamp,value\na,2026-01-01,1\n") + gzip.compress(b"a,2026-01-02,2\n"))
    assert len(storage.read_table(str(two))) == 2
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(gzip.compress(b"kpi_id,timestamp,value\na,2026-01-01,1\n")[:-12])
    with pytest.raises(storage.StorageError, match="readable_file"):
        storage.read_table(str(broken))


@pytest.mark.integration
def test_s3_object_over_the_cap_is_refused(bounds, s3_server):
    import boto3

    endpoint, env = s3_server
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"])
    client.create_bucket(Bucket="bounds")
    client.put_object(Bucket="bounds", Key="big.csv", Body=b"x" * (2 * 1024 * 1024))
    with env_vars(env):
        with pytest.raises(storage.StorageError) as err:
            storage.read_bytes("s3://bounds/big.csv")
    assert err.value.rule == "max_read_bytes" and "s3://bounds/big.csv" in str(err.value)
