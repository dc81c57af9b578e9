"""``kpiguard serve``: the daily reports with a verdict button on each incident, for the reviewers.

A standard-library threading HTTP server (no dependency beyond kpiguard's own), on ``reviews.host``:
``reviews.port`` (127.0.0.1 by default):

- ``GET /``: the days with a report in ``score.reports``, newest first;
- ``GET /day/<YYYY-MM-DD>``: the day's report file as :mod:`pipeline.batch.report` wrote it, with the
  review panel of :mod:`pipeline.review.page`;
- ``GET /api/day/<YYYY-MM-DD>``: :func:`pipeline.review.service.day_review` as JSON;
- ``POST /api/verdict``, ``/api/miss``, ``/api/done``: a JSON object, handed to ``give_verdict``,
  ``report_miss``, ``mark_reviewed``.

A write is refused unless it carries the token of the environment variable ``reviews.token_env`` in
``X-Kpiguard-Token`` (401), and unless it comes from this server's own page (403): the token lives in
the page's sessionStorage, which no other site can read, and a request another site makes a browser
send is told apart by its ``Origin`` (or ``Referer``) and ``Sec-Fetch-Site``, and by its body, which a
form can only send as form data or text (415), never JSON. A server bound to loopback also checks the
``Host`` of every request, so a DNS-rebinding page cannot read the reports either.

Errors are JSON ``{"error": message}``: 400 for a review that cannot be stored as given (the
ReviewError's message), 404 for unknown paths and days. A traceback never leaves the server: an
internal error is logged there and answered 500 with one line.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import hmac
import html
import ipaddress
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO, NamedTuple
from urllib.parse import urlsplit

from pipeline.errors import KpiguardError, ReviewError
from pipeline.params import Params
from pipeline.review import page, service

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Kpiguard-Token"
MAX_BODY_BYTES = 64 * 1024
# A client that stops sending mid-request holds a thread only this long.
READ_TIMEOUT_S = 30
DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
DAY_PAGE = re.compile(r"/day/([^/]+)")
DAY_API = re.compile(r"/api/day/([^/]+)")
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
# Sec-Fetch-Site values a browser sends for this server's own page ("none": typed in or a bookmark).
OWN_FETCH_SITES = ("same-origin", "none")
COMMON_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}
JSON_POLICY = "default-src 'none'; frame-ancestors 'none'"
INDEX_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'"


class Reply(NamedTuple):
    status: int
    body: bytes
    content_type: str
    policy: str = JSON_POLICY  # the Content-Security-Policy


class Refused(Exception):
    """A request answered with ``status`` and ``{"error": message}``."""

    def __init__(self, status: HTTPStatus, message: str):
        super().__init__(message)
        self.status = status


class Write(NamedTuple):
    """A POST endpoint: the JSON fields it needs and may have, and the service call they make."""

    required: tuple[str, ...]
    optional: tuple[str, ...]
    action: Callable[[Params, dict], dict]


WRITES = {
    "/api/verdict": Write(("day", "incident", "verdict", "reviewer"), ("note", "kpi", "start", "end"),
                          lambda p, f: service.give_verdict(p, _body_day(f["day"]), f["incident"], f["verdict"],
                                                            f["reviewer"], note=f.get("note"), kpi=f.get("kpi"),
                                                            start=f.get("start"), end=f.get("end"))),
    "/api/miss": Write(("kpi", "start", "end", "reviewer"), ("note",),
                       lambda p, f: service.report_miss(p, f["kpi"], f["start"], f["end"], f["reviewer"],
                                                        note=f.get("note"))),
    "/api/done": Write(("day", "reviewer"), (),
                       lambda p, f: service.mark_reviewed(p, _body_day(f["day"]), f["reviewer"])),
}


def serve(params: Params, host: str | None = None, port: int | None = None) -> dict:
    """Serve until Ctrl-C (or SIGTERM); return ``{"requests": n, "writes": n, "refused": n, "url": ...}``.

    ``host``/``port`` default to ``reviews.host``/``reviews.port``; port 0 takes a free one (the URL
    printed on start says which). Refuses to start (ReviewError) without a token in ``reviews.token_env``
    or with a review store it cannot open."""
    token = _token(params)
    service.open_store(params).close()  # a bad reviews.store fails now, not at the first verdict
    host = params.reviews.host if host is None else host
    port = params.reviews.port if port is None else port
    httpd = _listen(host, port)
    bound = httpd.server_address[1]
    url = f"http://{_url_host(host)}:{bound}/"
    app = ReviewApp(params, token, _own_hosts(host, bound))
    httpd.app = app
    print(f"kpiguard serve: reviewing the reports of {params.score.reports} at {url} (writes need the token in "
          f"${params.reviews.token_env}; Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        with _sigterm_interrupts():
            httpd.serve_forever()
    except KeyboardInterrupt:
        pass  # the way to stop it; each write is one transaction, so none is left half-stored
    finally:
        httpd.server_close()
    return {**app.counts(), "url": url}


def _token(params: Params) -> str:
    name = params.reviews.token_env
    token = os.environ.get(name, "")
    if not token.strip():
        raise ReviewError("kpiguard serve", "review_token_set",
                          f"${name} (reviews.token_env) is unset or empty, and every verdict the page sends must "
                          f"carry it; set it to a secret and give that to the reviewers, e.g. export {name}="
                          "$(python -c 'import secrets; print(secrets.token_urlsafe(24))')")
    return token


def _listen(host: str, port: int) -> ThreadingHTTPServer:
    server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
    try:
        return server_class((host, port), _Handler)
    except OSError as exc:
        raise ReviewError(f"kpiguard serve on {host}:{port} (reviews.host, reviews.port)", "address_usable",
                          f"{exc.strerror or exc}: give another --port or --host, or stop what listens there") from None


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _own_hosts(host: str, port: int) -> frozenset[str] | None:
    """The ``Host`` values this server answers to, or None (bound to every interface: any name may
    reach it, and the token alone guards the writes)."""
    if host in WILDCARD_HOSTS:
        return None
    names = {_url_host(host)}
    if host == "localhost" or _is_loopback_address(host):
        names |= set(LOOPBACK_NAMES)
    return frozenset(f"{name}:{port}" for name in names)


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a service manager's stop) stops the server as Ctrl-C does; only the main thread may
    set signal handlers, so elsewhere (a test's thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ReviewApp:
    """What each request gets, apart from HTTP itself (:class:`_Handler`)."""

    def __init__(self, params: Params, token: str, own_hosts: frozenset[str] | None):
        self.params, self.own_hosts = params, own_hosts
        self._token = token.encode("utf-8", "surrogatepass")
        self.reports = Path(params.score.reports)
        self._counts: Counter = Counter()
        self._lock = threading.Lock()

    def counts(self) -> dict:
        with self._lock:
            return {key: self._counts[key] for key in ("requests", "writes", "refused")}

    def get(self, path: str, headers: Mapping[str, str]) -> Reply:
        return self._answer(lambda: self._get(urlsplit(path).path, headers))

    def post(self, path: str, headers: Mapping[str, str], body: BinaryIO) -> Reply:
        return self._answer(lambda: self._post(urlsplit(path).path, headers, body))

    def _answer(self, respond: Callable[[], Reply]) -> Reply:
        try:
            reply = respond()
        except Refused as exc:
            reply = _error(exc.status, str(exc))
        except KpiguardError as exc:
            missing_day = exc.rule == "partition_exists"
            reply = _error(HTTPStatus.NOT_FOUND if missing_day else HTTPStatus.BAD_REQUEST, str(exc))
        except Exception:  # a bug: its traceback goes to the server's log, never to the client
            log.exception("kpiguard serve: internal error")
            reply = _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error in kpiguard serve; its log has the details")
        with self._lock:
            self._counts["requests"] += 1
            self._counts["refused"] += reply.status >= 400
        return reply

    # -- reads ----------------------------------------------------------------------------------
    def _get(self, path: str, headers: Mapping[str, str]) -> Reply:
        self._check_host(headers)
        if path == "/":
            return Reply(HTTPStatus.OK, self._index().encode(), "text/html; charset=utf-8", INDEX_POLICY)
        if m := DAY_PAGE.fullmatch(path):
            return self._day_page(_path_day(m[1]))
        if m := DAY_API.fullmatch(path):
            return _json(HTTPStatus.OK, service.day_review(self.params, _path_day(m[1])))
        raise Refused(HTTPStatus.NOT_FOUND, f"no page {path}; the days are listed at /")

    def _index(self) -> str:
        days = self.report_days()
        items = "".join(f'<li><a href="/day/{day}">{day}</a></li>' for day in days)
        listing = f"<ul>{items}</ul>" if days else \
            f"<p>No reports in {html.escape(str(self.reports))} yet: <code>kpiguard report --date YYYY-MM-DD</code>.</p>"
        return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
                "<title>kpiguard reviews</title><style>body { font-family: system-ui, sans-serif; margin: 2em auto; "
                "max-width: 800px; }</style></head><body><h1>kpiguard reviews: the daily reports</h1>"
                f"{listing}</body></html>\n")

    def report_days(self) -> list[str]:
        """The days with a report page, newest first."""
        if not self.reports.is_dir():
            return []
        return sorted((p.stem for p in self.reports.glob("*.html") if _is_day(p.stem)), reverse=True)

    def _day_page(self, day: str) -> Reply:
        report = self.reports / f"{day}.html"
        if not report.is_file():
            raise Refused(HTTPStatus.NOT_FOUND, f"no report for {day} in {self.reports}; the days are listed at /")
        nonce = secrets.token_urlsafe(16)
        body = page.review_page(report.read_text(encoding="utf-8"), day, nonce)
        return Reply(HTTPStatus.OK, body.encode(), "text/html; charset=utf-8", page.content_security_policy(nonce))

    # -- writes ---------------------------------------------------------------------------------
    def _post(self, path: str, headers: Mapping[str, str], body: BinaryIO) -> Reply:
        write = WRITES.get(path)
        if write is None:
            raise Refused(HTTPStatus.NOT_FOUND, f"no endpoint POST {path}")
        self._check_host(headers)
        self._check_same_origin(headers)
        _check_json_type(headers)
        self._check_token(headers)
        fields = _fields(_read_json(headers, body), write)
        result = write.action(self.params, fields)
        with self._lock:
            self._counts["writes"] += 1
        return _json(HTTPStatus.OK, result)

    def _check_host(self, headers: Mapping[str, str]) -> None:
        if self.own_hosts is not None and headers.get("Host") not in self.own_hosts:
            raise Refused(HTTPStatus.FORBIDDEN, f"Host {headers.get('Host')!r} is not this server's "
                          f"({', '.join(sorted(self.own_hosts))})")

    def _own_origins(self, headers: Mapping[str, str]) -> set[str]:
        hosts = self.own_hosts if self.own_hosts is not None else {headers.get("Host", "")}
        return {f"http://{host}" for host in hosts}

    def _check_same_origin(self, headers: Mapping[str, str]) -> None:
        """Refuse what a page of another site makes a browser send (the token is the main guard; this
        one keeps a leaked token from being used by a page the reviewer happens to open)."""
        site = headers.get("Sec-Fetch-Site")
        if site is not None and site not in OWN_FETCH_SITES:
            raise Refused(HTTPStatus.FORBIDDEN, f"a {site} request: writes come from this server's own page")
        own = self._own_origins(headers)
        origin = headers.get("Origin")
        if origin is not None:
            if origin not in own:
                raise Refused(HTTPStatus.FORBIDDEN, f"Origin {origin!r} is not this server's: writes come from "
                              "this server's own page")
            return
        referer = headers.get("Referer")
        if referer is not None and _origin_of(referer) not in own:
            raise Refused(HTTPStatus.FORBIDDEN, "the Referer is not this server's page: writes come from it")

    def _check_token(self, headers: Mapping[str, str]) -> None:
        given = headers.get(TOKEN_HEADER) or ""
        if not given:
            raise Refused(HTTPStatus.UNAUTHORIZED, f"this write needs the review token in the {TOKEN_HEADER} "
                          "header (the page's Token field)")
        if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), self._token):
            raise Refused(HTTPStatus.UNAUTHORIZED, "wrong review token (the page's Token field): ask whoever "
                          f"runs kpiguard serve for the value of ${self.params.reviews.token_env}")


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _check_json_type(headers: Mapping[str, str]) -> None:
    media = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if media != "application/json":
        raise Refused(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"writes are JSON (Content-Type: application/json), "
                      f"not {media or 'an untyped body'}")


def _read_json(headers: Mapping[str, str], body: BinaryIO) -> object:
    if headers.get("Transfer-Encoding"):
        raise Refused(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
    try:
        length = int(headers.get("Content-Length") or "")
    except ValueError:
        raise Refused(HTTPStatus.LENGTH_REQUIRED, "a write needs a Content-Length") from None
    if length < 0 or length > MAX_BODY_BYTES:
        raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is {length} bytes; at most "
                      f"{MAX_BODY_BYTES} are read")
    try:
        return json.loads(body.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(HTTPStatus.BAD_REQUEST, f"the body is not JSON: {exc}") from None


def _fields(data: object, write: Write) -> dict:
    """The write's fields from its JSON object: strings (an optional one may be null), none missing,
    none unknown (a misspelt ``note`` is an error, not a note lost)."""
    if not isinstance(data, dict):
        raise Refused(HTTPStatus.BAD_REQUEST, "the body must be a JSON object")
    unknown = sorted(set(data) - set(write.required) - set(write.optional))
    missing = [name for name in write.required if data.get(name) in (None, "")]
    if unknown or missing:
        raise Refused(HTTPStatus.BAD_REQUEST, "; ".join(
            ([f"missing: {', '.join(missing)}"] if missing else [])
            + ([f"unknown fields: {', '.join(unknown)} (known: {', '.join(write.required + write.optional)})"]
               if unknown else [])))
    wrong = [name for name, value in data.items() if value is not None and not isinstance(value, str)]
    if wrong:
        raise Refused(HTTPStatus.BAD_REQUEST, f"these fields must be strings: {', '.join(sorted(wrong))}")
    return data


def _is_day(text: str) -> bool:
    if not DAY.fullmatch(text):
        return False
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _path_day(text: str) -> str:
    """The day of a URL: a real YYYY-MM-DD, or 404 (nothing else ever reaches a file name)."""
    if not _is_day(text):
        raise Refused(HTTPStatus.NOT_FOUND, f"no day {text!r}: days are YYYY-MM-DD, listed at /")
    return text


def _body_day(text: str) -> str:
    if not _is_day(text):
        raise Refused(HTTPStatus.BAD_REQUEST, f"day {text!r} is not a date YYYY-MM-DD")
    return text


def _json(status: HTTPStatus, data: dict) -> Reply:
    return Reply(status, json.dumps(data, default=str).encode(), "application/json")


def _error(status: HTTPStatus, message: str) -> Reply:
    return _json(status, {"error": message})


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.0 (the default): one request per connection, so a refused write's unread body never
    reaches the next request."""

    server_version = "kpiguard-serve"
    sys_version = ""
    timeout = READ_TIMEOUT_S

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self._send(self.server.app.get(self.path, self.headers))

    def do_POST(self) -> None:  # noqa: N802
        self._send(self.server.app.post(self.path, self.headers, self.rfile))

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in {**COMMON_HEADERS, "Content-Security-Policy": reply.policy,
                            "Content-Type": reply.content_type, "Content-Length": str(len(reply.body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
        log.info("%s %s", self.address_string(), format % args)
