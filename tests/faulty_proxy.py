"""A loopback HTTP proxy in front of a real server that answers chosen requests with 503,
as a server behind a load balancer does while it restarts; everything else is forwarded."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class _Fault:
    path_suffix: str
    remaining: int | None  # None: every matching request, for good


class FaultyProxy:
    """Forwards to `upstream`; `fail(...)` makes matching requests answer 503 instead."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.failed: list[str] = []  # paths answered 503, in order
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(self, path_suffix: str, times: int | None) -> None:
        """Answer the next `times` requests whose path ends with `path_suffix` (all of
        them for `None`) with HTTP 503."""
        with self._lock:
            self._faults.append(_Fault(path_suffix, times))

    def _should_fail(self, path: str) -> bool:
        with self._lock:
            for fault in self._faults:
                if path.split("?", 1)[0].endswith(fault.path_suffix) and fault.remaining != 0:
                    if fault.remaining is not None:
                        fault.remaining -= 1
                    self.failed.append(path)
                    return True
        return False

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy._should_fail(self.path):
                    self._answer(503, b'{"error_code": "TEMPORARILY_UNAVAILABLE"}', {})
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                response = httpx.request(
                    self.command, proxy.upstream + self.path, content=body, headers=headers,
                    timeout=60,
                )  # fmt: skip
                self._answer(response.status_code, response.content, response.headers)

            def _answer(
                self, status: int, body: bytes, headers: httpx.Headers | dict[str, str]
            ) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in _HOP_BY_HOP and key.lower() != "content-encoding":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _forward

        return Handler

    @contextmanager
    def running(self) -> Iterator[FaultyProxy]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
