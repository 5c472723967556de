"""A loopback stand-in for TLC's trip-data server, with the faults a real download meets.

Serves the files of a folder under `/trip-data/<name>` on 127.0.0.1 like CloudFront does:
GET and HEAD, `Range: bytes=N-` (206 + Content-Range, 416 past the end), 404 (or 403)
for a missing month. Faults, each set per file name: cut the connection after N body
bytes (once), answer an HTTP status the first N times, serve an HTML page instead of the
file; and a throttle shared by all connections (a link of so many bytes per second).

    with TLCMirror(folder) as mirror:
        mirror.cut_after["green_tripdata_2023-01.parquet"] = 500_000
        fetch with base_url=mirror.base_url
        mirror.requests  # what was asked, in order
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from taxiops.lifecycle import Lifecycle

PREFIX = "/trip-data/"
HTML_PAGE = b"<!DOCTYPE html><html><body><h1>Service Unavailable</h1></body></html>\n"
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")
_CHUNK = 16 * 1024


@dataclass(frozen=True)
class Request:
    """One request the mirror answered."""

    method: str
    name: str
    range: str | None
    status: int


class TLCMirror(Lifecycle):
    """A threaded HTTP/1.1 server on a free loopback port; a context manager."""

    def __init__(self, folder: Path, *, missing_status: int = 404) -> None:
        self.folder = folder
        self.missing_status = missing_status
        self.cut_after: dict[str, int] = {}  # cut once, after this many body bytes
        self.fail_first: dict[str, tuple[int, int]] = {}  # name -> (status, times)
        self.html: dict[str, str] = {}  # name -> Content-Type of the HTML page served
        self.rate_bytes_per_second: float | None = None
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._next_send = 0.0
        mirror = self

        class Handler(_Handler):
            server_mirror = mirror

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{PREFIX}"

    def gets(self, name: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == "GET" and r.name == name]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- used by the handler -----------------------------------------------------------
    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def take_failure(self, name: str) -> int | None:
        with self._lock:
            status, times = self.fail_first.get(name, (0, 0))
            if times <= 0:
                return None
            self.fail_first[name] = (status, times - 1)
            return status

    def take_cut(self, name: str) -> int | None:
        with self._lock:
            return self.cut_after.pop(name, None)

    def wait_to_send(self, size: int) -> None:
        """Hold a chunk until the shared link has room for it."""
        rate = self.rate_bytes_per_second
        if not rate:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next_send)
            self._next_send = start + size / rate
        if start > now:
            time.sleep(start - now)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_mirror: TLCMirror

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the mirror records requests instead

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        mirror = self.server_mirror
        name = self.path.removeprefix(PREFIX) if self.path.startswith(PREFIX) else ""
        wanted = self.headers.get("Range")
        method = "GET" if body else "HEAD"
        path = mirror.folder / name
        if body and (status := mirror.take_failure(name)) is not None:
            return self._page(method, name, wanted, status, HTML_PAGE, "text/html", body)
        if name in mirror.html:
            return self._page(method, name, wanted, 200, HTML_PAGE, mirror.html[name], body)
        if not name or "/" in name or not path.is_file():
            page = b"<Error><Code>NoSuchKey</Code></Error>"
            return self._page(method, name, wanted, mirror.missing_status, page, "text/xml", body)
        size = path.stat().st_size
        start = 0
        if wanted and (match := _RANGE.match(wanted)):
            start = int(match[1])
            if start >= size:
                mirror.record(Request(method, name, wanted, 416))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
        status = 206 if start else 200
        mirror.record(Request(method, name, wanted, status))
        self.send_response(status)
        self.send_header("Content-Type", "binary/octet-stream")  # what TLC's CloudFront sends
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(size - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        if body:
            self._send_file(path, start, mirror.take_cut(name))
        return None

    def _send_file(self, path: Path, start: int, cut_at: int | None) -> None:
        sent = 0
        with path.open("rb") as handle:
            handle.seek(start)
            while chunk := handle.read(_CHUNK):
                if cut_at is not None and sent + len(chunk) > cut_at:
                    chunk = chunk[: cut_at - sent]
                self.server_mirror.wait_to_send(len(chunk))
                try:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                except OSError:
                    self.close_connection = True
                    return
                sent += len(chunk)
                if cut_at is not None and sent >= cut_at:
                    # A cut: the peer sees the connection end before Content-Length bytes.
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return

    def _page(
        self,
        method: str,
        name: str,
        wanted: str | None,
        status: int,
        page: bytes,
        content_type: str,
        body: bool,
    ) -> None:
        self.server_mirror.record(Request(method, name, wanted, status))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        if body:
            self.wfile.write(page)
