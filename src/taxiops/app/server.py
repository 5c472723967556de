"""A local Prefect server on SQLite under `TAXIOPS_HOME`, as a child process.

Used by `taxiops up` and by the test session; both need a real server that
starts, reports healthy and stops without leaving a process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from taxiops.lifecycle import Lifecycle

# A first start migrates a new SQLite database: over a minute on a busy 2-core machine.
_HEALTH_TIMEOUT_SECONDS = 180.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def bind_error(host: str, port: int) -> OSError | None:
    """Why nothing could listen on `host:port` now, or None if it could (a socket in
    TIME_WAIT does not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
        return None


def port_in_use(host: str, port: int) -> bool:
    """Whether another socket listens on `host:port` (one in TIME_WAIT does not count)."""
    return bind_error(host, port) is not None


def server_environment(state_dir: Path, host: str, port: int) -> dict[str, str]:
    """Environment for a Prefect server whose every file lives in `state_dir`."""
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env.update(
        PREFECT_HOME=str(state_dir),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{state_dir / 'prefect.db'}",
        PREFECT_SERVER_API_HOST=host,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_API_URL=f"http://{host}:{port}/api",
    )
    return env


@dataclass
class LocalPrefectServer(Lifecycle):
    """`prefect server start` in a child process; a context manager."""

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 4200
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server process, while it runs."""
        process = self._process
        return None if process is None or process.poll() is not None else process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code of the last server process, once it has ended."""
        return None if self._process is None else self._process.poll()

    def start(self, timeout: float = _HEALTH_TIMEOUT_SECONDS) -> None:
        """Start the server and wait until `/api/health` answers; again after it ended, on
        the same port and database. Raises RuntimeError (its one-line reason) if the process
        exits first, TimeoutError if it never answers."""
        if self.pid is not None:
            raise RuntimeError(f"the Prefect server at {self.api_url} is already running")
        self.stop()  # what a dead server left of its process group
        if port_in_use(self.host, self.port):  # found in ms; the server takes seconds to say so
            raise RuntimeError(f"port {self.port} on {self.host} is in use by another process")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.state_dir / "server.log"
        with log_path.open("ab") as log:
            log_offset = log.tell()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--no-background"],
                env=server_environment(self.state_dir, self.host, self.port),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_healthy(timeout, log_path, log_offset)

    def _wait_healthy(self, timeout: float, log_path: Path, log_offset: int) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"Prefect server exited with {self._process.returncode}: "
                    f"{_last_line(log_path, log_offset)} (log: {log_path})"
                )
            if is_healthy(self.api_url):
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"Prefect server at {self.api_url} not healthy after {timeout:.0f}s")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and every process it started."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is not None:  # killed: its own children may live on
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            return
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def is_healthy(api_url: str) -> bool:
    """Whether a Prefect API answers its health check."""
    try:
        return httpx.get(f"{api_url}/health", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _last_line(log_path: Path, offset: int) -> str:
    """The last paragraph the server wrote since `offset` (its error, usually), on one line:
    Prefect's console wraps its messages at 80 columns."""
    with log_path.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    paragraphs = [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]
    return paragraphs[-1][:300] if paragraphs else "no output"


def ui_url_for(api_url: str) -> str:
    """The Prefect UI of an API URL (`http://host:port/api` -> `http://host:port`)."""
    return api_url.rstrip("/").removesuffix("/api")
