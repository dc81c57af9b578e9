"""One path abstraction for local files, ``s3://bucket/prefix`` and read-only ``http(s)://`` URLs.

- S3 goes through boto3. The endpoint comes from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` when
  set (MinIO, SeaweedFS, ...), credentials and region from the usual AWS environment variables.
  Requests use bounded retries and timeouts, so an unreachable endpoint fails in seconds.
- HTTP(S) uses the standard library with bounded retries and timeouts; it can read single files only.

Every failure is a :class:`StorageError` (a :class:`~pipeline.data.contract.DataError`) that names the
path, the rule that failed and, for S3, the endpoint: one paragraph a person can act on.
"""
from __future__ import annotations

import functools
import io
import os
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit, urlunsplit
import zlib
from pathlib import Path
from typing import Iterable

import pandas as pd

from pipeline.errors import DataError
from pipeline.io import outputs
from pipeline.params import StorageParams

HTTP_BACKOFF_S = 0.5
READ_CHUNK = 1 << 20

# The ``storage:`` section of params.yaml; loading params applies it (configure). Until then: its defaults.
_settings = StorageParams()


def configure(settings: StorageParams) -> None:
    """Use these timeouts, attempts and size caps for every remote read from now on."""
    global _settings
    if settings != _settings:
        _settings = settings
        _s3_client.cache_clear()


def settings() -> StorageParams:
    return _settings


def max_read_bytes() -> int:
    return int(_settings.max_read_mb * 1024 * 1024)


def _too_big(path: str, size: int | str, what: str = "the file") -> StorageError:
    return StorageError(path, "max_read_bytes", f"{what} is {size} bytes, more than storage.max_read_mb = "
                        f"{_settings.max_read_mb:g} MiB ({max_read_bytes()} bytes); raise it in params.yaml "
                        "if this input is expected")


def _attempts_text() -> str:
    s = _settings
    return (f"{s.max_attempts} attempt(s) of at most {s.connect_timeout_s:g}s to connect and "
            f"{s.read_timeout_s:g}s to read each (params storage.*)")

TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet")


class StorageError(DataError):
    """A path could not be read, listed or written. ``rule`` says which expectation failed."""

    def __init__(self, path: str, rule: str, detail: str, endpoint: str | None = None):
        self.path, self.endpoint = str(path), endpoint
        if endpoint:
            detail = f"{detail} (endpoint {endpoint})"
        super().__init__(str(path), rule, detail)


# ---------------------------------------------------------------------------------------------
# Path kinds


def is_s3(path: str | Path) -> bool:
    return str(path).startswith("s3://")


def is_http(path: str | Path) -> bool:
    return str(path).startswith(("http://", "https://"))


def is_remote(path: str | Path) -> bool:
    return is_s3(path) or is_http(path)


def split_s3(path: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    rest = str(path)[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(path, "s3_path", "an S3 path must look like s3://bucket/prefix")
    return bucket, key


def join(base: str | Path, *parts: str) -> str:
    """Join path parts for any path kind (``/`` for URLs, ``os.path.join`` locally)."""
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def name_of(path: str | Path) -> str:
    """The last path component (file name) of any path kind."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def strip_suffix(name: str, suffixes: Iterable[str] = TABLE_SUFFIXES) -> str:
    """``"a.csv.gz"`` -> ``"a"``: removes the longest matching suffix."""
    for suffix in sorted(suffixes, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# ---------------------------------------------------------------------------------------------
# S3


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_client():
    """A boto3 S3 client for the current environment (cached per endpoint and credentials)."""
    env = os.environ
    return _s3_client(s3_endpoint(), env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY"),
                      env.get("AWS_SESSION_TOKEN"),
                      env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1", _settings)


@functools.lru_cache(maxsize=8)
def _s3_client(endpoint, key_id, secret, token, region, bounds: StorageParams):
    import boto3
    from botocore.config import Config

    # total_max_attempts counts every attempt, the first included (botocore's max_attempts counts retries)
    config = Config(retries={"total_max_attempts": bounds.max_attempts, "mode": "standard"},
                    connect_timeout=bounds.connect_timeout_s, read_timeout=bounds.read_timeout_s,
                    # a custom endpoint (SeaweedFS, MinIO, an IP address) rarely serves virtual hosts
                    s3={"addressing_style": "path"} if endpoint else None)
    session = boto3.session.Session(aws_access_key_id=key_id, aws_secret_access_key=secret,
                                    aws_session_token=token, region_name=region)
    client = session.client("s3", endpoint_url=endpoint, config=config)
    client.meta.events.register("before-send.s3.PutObject", _no_expect_for_empty_body)
    return client


def _no_expect_for_empty_body(request, **_):
    """Send an empty PUT without ``Expect: 100-continue``.

    botocore adds the header to every PutObject. With a 0-byte body, Go servers (SeaweedFS) answer
    without an interim 100, and the next request on that kept-alive connection then stalls for a
    whole read timeout. Nothing needs to wait for a "continue" when there is no body.
    """
    if str(request.headers.get("Content-Length", "")) == "0":
        request.headers.pop("Expect", None)


def _s3_error(path: str, exc: Exception, action: str) -> StorageError:
    """Translate a botocore exception into a StorageError naming path, endpoint and what failed."""
    from botocore import exceptions as bx

    endpoint = s3_endpoint() or "AWS default"
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        msg = err.get("Message") or code
        if code in ("NoSuchKey", "404", "NotFound"):
            return StorageError(path, "file_exists", f"no such object ({action})", endpoint)
        if code == "NoSuchBucket":
            return StorageError(path, "bucket_exists", f"the bucket does not exist ({action})", endpoint)
        if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
            return StorageError(path, "s3_credentials",
                                f"access denied while trying to {action}: {msg}; check "
                                "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY", endpoint)
        return StorageError(path, "s3_request", f"{action} failed: {code} {msg}", endpoint)
    if isinstance(exc, bx.NoCredentialsError):
        return StorageError(path, "s3_credentials",
                            f"cannot {action}: no AWS credentials; set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY", endpoint)
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError,
                        bx.ConnectionClosedError, bx.ConnectionError)):
        return StorageError(path, "s3_reachable",
                            f"cannot {action}: the S3 endpoint did not answer in "
                            f"{_attempts_text()} ({type(exc).__name__}: {exc}); check that the "
                            "server is running and AWS_ENDPOINT_URL points at it", endpoint)
    return StorageError(path, "s3_request", f"{action} failed: {type(exc).__name__}: {exc}", endpoint)


def _s3_call(path: str, action: str, fn, *args, **kwargs):
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(*args, **kwargs)
    except (BotoCoreError, ClientError) as exc:
        raise _s3_error(path, exc, action) from exc


def _s3_read(path: str) -> bytes:
    bucket, key = split_s3(path)
    client = s3_client()
    obj = _s3_call(path, "read the object", client.get_object, Bucket=bucket, Key=key)
    size = obj.get("ContentLength")
    if size is not None and size > max_read_bytes():
        obj["Body"].close()
        raise _too_big(path, size, "the object")
    data = _s3_call(path, "read the object body", obj["Body"].read, max_read_bytes() + 1)
    if len(data) > max_read_bytes():
        raise _too_big(path, f"over {max_read_bytes()}", "the object")
    return data


def _s3_keys(path: str) -> list[str]:
    """All object keys equal to or below the prefix of ``path`` (recursive)."""
    bucket, key = split_s3(path)
    client = s3_client()
    prefix = key.rstrip("/")
    keys: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    pages = paginator.paginate(Bucket=bucket, Prefix=prefix)

    def collect():
        for page in pages:
            keys.extend(o["Key"] for o in page.get("Contents", []))

    _s3_call(path, "list objects", collect)
    # "a/b" must not match "a/bc": keep the exact key and keys under "a/b/"
    return [k for k in keys if not prefix or k == prefix or k.startswith(prefix + "/")]


# ---------------------------------------------------------------------------------------------
# HTTP


def _http_read(url: str, headers: dict[str, str] | None = None, shown: str | None = None) -> bytes:
    """GET ``url`` within the bounds of ``storage:``; ``headers`` are sent (an Authorization header is never
    shown), ``shown`` is how errors name the request (default: the URL). A 4xx is not retried and its
    error names the status and the start of the server's answer (an API's own error text)."""
    last: Exception | None = None
    shown = shown or url
    cap = max_read_bytes()
    request = urllib.request.Request(url, headers=headers or {})
    for attempt in range(_settings.max_attempts):
        if attempt:
            time.sleep(HTTP_BACKOFF_S * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(request, timeout=_http_timeout()) as resp:  # noqa: S310
                length = resp.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > cap:
                    raise _too_big(shown, int(length), "the response")
                chunks, size = [], 0
                while chunk := resp.read(min(READ_CHUNK, cap + 1 - size)):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > cap:
                        raise _too_big(shown, f"over {cap}", "the response")
                return b"".join(chunks)
        except urllib.error.HTTPError as exc:
            answer = _error_body(exc)
            if exc.code == 404 and not answer:
                raise StorageError(shown, "file_exists", "HTTP 404: no such file") from exc
            if exc.code < 500 and exc.code != 429:
                raise StorageError(shown, "http_request", f"HTTP {exc.code} {exc.reason}{answer}") from exc
            last = exc
            last.reason = f"HTTP {exc.code} {exc.reason}{answer}"
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
            last = exc
    reason = getattr(last, "reason", last)
    raise StorageError(shown, "http_reachable",
                       f"no answer in {_attempts_text()}: {reason}; check the URL and that the server is up") from last


def _error_body(exc: urllib.error.HTTPError) -> str:
    """``: <the start of the answer>`` of an HTTP error, or "" (a plain 404 page is not worth quoting)."""
    try:
        text = exc.read(2000).decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f": {text[:500]}" if text and not text.lstrip().startswith("<") else ""


def shown_url(url: str) -> str:
    """``url`` without user, password, query or fragment: where secrets of a URL usually sit."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def http_get(url: str, headers: dict[str, str] | None = None, shown: str | None = None) -> bytes:
    """The body of a GET of ``url`` (an HTTP API), bounded as every remote read; see :func:`_http_read`."""
    return _http_read(url, headers, shown)


def _http_timeout() -> float:
    """urllib has one timeout for connecting and for each read: the larger of the two bounds."""
    return max(_settings.connect_timeout_s, _settings.read_timeout_s)


# ---------------------------------------------------------------------------------------------
# Public API


def read_bytes(path: str | Path) -> bytes:
    """The whole content of a file. Missing -> rule ``file_exists``; empty -> ``non_empty_file``."""
    path = str(path)
    if is_s3(path):
        data = _s3_read(path)
    elif is_http(path):
        data = _http_read(path)
    else:
        p = Path(path)
        if not p.is_file():
            what = "is a directory, not a file" if p.is_dir() else "no such file"
            raise StorageError(path, "file_exists", what)
        data = p.read_bytes()
    if not data:
        raise StorageError(path, "non_empty_file", "the file is empty (0 bytes)")
    return data


def exists(path: str | Path) -> bool:
    """True when ``path`` is an existing file, directory or (S3) a non-empty prefix."""
    path = str(path)
    if is_s3(path):
        return bool(_s3_keys(path))
    if is_http(path):
        req = urllib.request.Request(path, method="HEAD")
        try:
            with urllib.request.urlopen(req, timeout=_http_timeout()):  # noqa: S310
                return True
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise StorageError(path, "http_request", f"HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise StorageError(path, "http_reachable", f"no answer: {getattr(exc, 'reason', exc)}") from exc
    return Path(path).exists()


def list_files(path: str | Path, suffixes: Iterable[str] = TABLE_SUFFIXES) -> list[str]:
    """Sorted files under ``path`` (recursive) whose names end with one of ``suffixes``.

    A file path returns itself (whatever its suffix). A missing path, or a directory/prefix without
    a matching file, raises :class:`StorageError` (rule ``file_exists``). HTTP cannot be listed, so
    an ``http(s)://`` path must name a file.
    """
    path = str(path)
    suffixes = tuple(s.lower() for s in suffixes)
    wanted = " or ".join(f"*{s}" for s in suffixes)
    if is_http(path):
        if not path.lower().endswith(suffixes):
            raise StorageError(path, "listable_path",
                               f"an http(s) URL cannot be listed; name a single {wanted} file")
        return [path]
    if is_s3(path):
        bucket, key = split_s3(path)
        keys = _s3_keys(path)
        if key and key.rstrip("/") in keys:
            return [f"s3://{bucket}/{key.rstrip('/')}"]
        found = sorted(f"s3://{bucket}/{k}" for k in keys if k.lower().endswith(suffixes))
        if not found:
            detail = (f"no {wanted} object under this prefix ({len(keys)} other object(s))"
                      if keys else "no object under this prefix")
            raise StorageError(path, "file_exists", detail, s3_endpoint() or "AWS default")
        return found
    p = Path(path)
    if p.is_file():
        return [path]
    if not p.is_dir():
        raise StorageError(path, "file_exists", "no such file or directory")
    found = sorted(str(f) for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(suffixes))
    if not found:
        raise StorageError(path, "file_exists", f"the directory holds no {wanted} file")
    return found


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new one, never a partial file.

    Local: a temporary file in the same directory, fsync, then ``os.replace``. S3: one PUT, which
    is atomic. HTTP is read-only.
    """
    path = str(path)
    if is_http(path):
        raise StorageError(path, "writable_path", "http(s) paths are read-only")
    if is_s3(path):
        bucket, key = split_s3(path)
        if not key or key.endswith("/"):
            raise StorageError(path, "s3_path", "an S3 object path needs a key after the bucket")
        _s3_call(path, "write the object", s3_client().put_object, Bucket=bucket, Key=key, Body=data)
        return
    outputs.write_file_atomic(path, data)  # locked per file; a rerun removes a killed writer's temp file


def check_output_dir(path: str | Path) -> None:
    """Refuse, before any work, an output directory that cannot be one: a file at the path or above it,
    an http(s) URL, or a local place this process may not write. S3 prefixes are checked on write."""
    path = str(path)
    if is_http(path):
        raise StorageError(path, "writable_path", "http(s) paths are read-only; give a directory or s3:// prefix")
    if is_s3(path):
        return
    target = Path(path)
    for place in (target, *target.parents):
        if place.exists():
            if not place.is_dir():
                what = "is a file" if place == target else f"sits below the file {place}"
                raise StorageError(path, "output_is_directory", f"the output must be a directory, but it {what}")
            if not os.access(place, os.W_OK | os.X_OK):
                raise StorageError(path, "output_writable", f"{place} is not writable by this user")
            return


def s3_objects(prefix: str) -> list[str]:
    """Every object at or below an ``s3://`` prefix, as ``s3://`` paths (sorted)."""
    bucket, _ = split_s3(prefix)
    return sorted(f"s3://{bucket}/{k}" for k in _s3_keys(prefix))


def s3_delete(paths: Iterable[str]) -> None:
    """Delete ``s3://`` objects (batches of 1000, one bucket per call); missing ones are no error."""
    paths = list(paths)
    if not paths:
        return
    bucket = split_s3(paths[0])[0]
    client = s3_client()
    for start in range(0, len(paths), 1000):
        batch = [{"Key": split_s3(p)[1]} for p in paths[start:start + 1000]]
        _s3_call(paths[0], "delete objects", client.delete_objects, Bucket=bucket,
                 Delete={"Objects": batch, "Quiet": True})


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    """Write ``df`` as Parquet (no index), atomically, to a local or S3 path."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    write_bytes(path, buf.getvalue())


def read_table(path: str | Path, string_columns: Iterable[str] = ()) -> pd.DataFrame:
    """Read a CSV (``.csv``, ``.csv.gz``) or Parquet file by its suffix into a DataFrame.

    CSV goes through pyarrow's multithreaded reader (types inferred, timestamps parsed);
    ``string_columns`` are read as text whatever they look like (ids). A CSV that pyarrow cannot
    type (e.g. a numeric column with a stray word deep in the file) is re-read as text, so that
    :func:`pipeline.data.contract.to_canonical` can name the column and the offending values.
    A file without data rows raises rule ``non_empty_file``.
    """
    path = str(path)
    name = name_of(path).lower()
    data = read_bytes(path)
    if name.endswith(".parquet"):
        df = _read_parquet(path, data)
    elif name.endswith((".csv", ".csv.gz")):
        if name.endswith(".gz"):
            data = gunzip(path, data)
            if not data.strip():
                raise StorageError(path, "non_empty_file", "the file is empty once decompressed")
        df = _read_csv(path, data, tuple(string_columns))
    else:
        raise StorageError(path, "table_format",
                           f"unknown file type; expected one of {', '.join(TABLE_SUFFIXES)}")
    if len(df) == 0:
        raise StorageError(path, "non_empty_file", f"no data rows (columns: {list(df.columns)})")
    return df


def gunzip(path: str, data: bytes) -> bytes:
    """Decompress gzip (every member) with at most ``storage.max_read_mb`` of output (no zip bomb)."""
    cap, out, size = max_read_bytes(), [], 0
    rest = data
    try:
        while rest:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = d.decompress(rest, cap + 1 - size)
            size += len(chunk)
            out.append(chunk)
            if size > cap or d.unconsumed_tail:
                raise _too_big(path, f"over {cap}", "the decompressed file")
            if not d.eof:
                raise StorageError(path, "readable_file", "not valid gzip: the compressed data is truncated")
            rest = d.unused_data
            if rest and not rest.startswith(b"\x1f\x8b"):
                break  # trailing bytes that start no member (zero padding of some writers): ignored
    except zlib.error as exc:
        raise StorageError(path, "readable_file", f"not valid gzip: {exc}") from exc
    return b"".join(out)


def _read_parquet(path: str, data: bytes) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(pa.BufferReader(data)).to_pandas()
    except (pa.ArrowException, OSError) as exc:
        raise StorageError(path, "readable_file", f"not a readable Parquet file: {exc}") from exc


def _read_csv(path: str, data: bytes, string_columns: tuple[str, ...]) -> pd.DataFrame:
    import pyarrow as pa
    from pyarrow import csv as pacsv

    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in string_columns},
                                   strings_can_be_null=False)
    try:
        table = pacsv.read_csv(pa.BufferReader(data), convert_options=convert)
        return table.to_pandas()
    except UnicodeDecodeError as exc:
        raise StorageError(path, "utf8_text", f"not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           "save the CSV as UTF-8") from exc
    except pa.ArrowInvalid as exc:
        if "conversion error" not in str(exc).lower():
            raise StorageError(path, "readable_file", f"not a readable CSV file: {exc}") from exc
    # pyarrow inferred a type from the first block that a later value breaks: read everything as
    # text and let the contract say which column and values are wrong.
    try:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise StorageError(path, "utf8_text", f"not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           "save the CSV as UTF-8") from exc
    except (ValueError, pd.errors.ParserError) as exc:
        raise StorageError(path, "readable_file", f"not a readable CSV file: {exc}") from exc
