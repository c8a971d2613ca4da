"""A small HTTP proxy in front of the moto S3 server that adds latency and injects faults per
object key: S3 error responses (503 SlowDown, 403, 404 …), dropped connections (a TCP reset
after the request was read) and slow answers. It counts every request, and the peak number of
object GETs in flight, so tests can prove what was (not) retried and how many reads overlapped.

Listens on 127.0.0.1 with a port chosen by the OS; forwards to the upstream server on 127.0.0.1.
Used by tests/test_object_store_reads.py and bench/bench_object_store.py.
"""

from __future__ import annotations

import http.client
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

S3_ERRORS = {503: "SlowDown", 403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError", 429: "TooManyRequests"}
S3_MESSAGES = {
    503: "Please reduce your request rate.",
    403: "Access Denied",
    404: "The specified key does not exist.",
    500: "We encountered an internal error. Please try again.",
    429: "Too many requests",
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass
class Fault:
    """What GETs of one key get: ``status`` (an S3 error), ``"drop"`` (connection reset) or
    ``delay`` seconds before forwarding; for the first ``times`` GETs, or always (None)."""

    kind: int | str
    times: int | None = None
    delay: float = 0.0


class FaultProxy:
    """``FaultProxy(upstream_port)``; ``start()`` -> port; ``stop()`` (or ``with FaultProxy(p) as
    proxy``: ``proxy.port``). Thread-safe counters. Two ways to inject faults: ``faults`` per
    object key for GETs (reads), and ``fail(method, path)`` for any request (e.g. the PUTs of an
    output store), answered with an S3 500 ``InternalError`` and listed in ``failed``."""

    def __init__(
        self, upstream_port: int, latency: float = 0.0, fail: Callable[[str, str], bool] | None = None
    ) -> None:
        self.upstream_port = upstream_port
        self.latency = latency
        self.faults: dict[str, Fault] = {}
        self.fail = fail or (lambda method, path: False)
        self.failed: list[tuple[str, str]] = []  # (method, path) answered by ``fail``
        self.requests: list[tuple[str, str, str]] = []  # (method, key, query)
        self._lock = self.lock = threading.Lock()
        self.port: int | None = None
        self._gets_in_flight = 0
        self.peak_gets_in_flight = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------
    def start(self) -> int:
        proxy = self

        class Handler(_ProxyHandler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        self.port = self._server.server_address[1]
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.peak_gets_in_flight = 0

    def count(self, method: str, key: str) -> int:
        with self._lock:
            return sum(1 for m, k, _ in self.requests if m == method and k == key)

    def object_requests(self, method: str) -> list[str]:
        """Keys of requests of this method that named an object (not a bucket listing)."""
        with self._lock:
            return [k for m, k, _ in self.requests if m == method and k]

    def listing_requests(self) -> list[str]:
        with self._lock:
            return [q for m, k, q in self.requests if m == "GET" and not k]

    # -- used by the handler ---------------------------------------------------------------
    def _record(self, method: str, key: str, query: str) -> Fault | None:
        with self._lock:
            self.requests.append((method, key, query))
            fault = self.faults.get(key) if method == "GET" and key else None
            if fault is None:
                return None
            if fault.times is not None:
                if fault.times <= 0:
                    return None
                fault.times -= 1
            return fault

    def _get_started(self, delta: int) -> None:
        with self._lock:
            self._gets_in_flight += delta
            self.peak_gets_in_flight = max(self.peak_gets_in_flight, self._gets_in_flight)


class _ProxyHandler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        parsed = urllib.parse.urlsplit(self.path)
        segments = parsed.path.lstrip("/").split("/", 1)
        key = urllib.parse.unquote(segments[1]) if len(segments) > 1 else ""
        body = self._read_body()
        owner = self.owner
        if owner.fail(self.command, parsed.path):
            with owner.lock:
                owner.failed.append((self.command, parsed.path))
            self._send_s3_error(500, key)
            return
        fault = owner._record(self.command, key, parsed.query)
        is_object_get = self.command == "GET" and bool(key)
        if is_object_get:
            owner._get_started(+1)
        try:
            if owner.latency:
                time.sleep(owner.latency)
            if fault is not None and fault.kind == "drop":
                self.close_connection = True
                # SO_LINGER 0: close() sends a TCP reset, as a load balancer dropping the connection does
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()
                return
            if fault is not None and isinstance(fault.kind, int):
                self._send_s3_error(fault.kind, key)
                return
            if fault is not None and fault.delay:
                time.sleep(fault.delay)
            self._forward(body)
        finally:
            if is_object_get:
                owner._get_started(-1)

    def _send_s3_error(self, status: int, key: str) -> None:
        code = S3_ERRORS.get(status, "ServiceUnavailable")
        payload = (
            f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
            f"<Message>{S3_MESSAGES.get(status, code)}</Message><Key>{key}</Key>"
            "<RequestId>fault-proxy</RequestId></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _forward(self, body: bytes) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.owner.upstream_port, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            payload = resp.read()
            self.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            if self.command == "HEAD":
                self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
            else:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
        finally:
            conn.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle
