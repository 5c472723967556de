"""Local servers as child processes: Prefect on SQLite under `TAXIOPS_HOME`, and the MLflow UI.

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
class LocalServer(Lifecycle):
    """A server in a child process of its own session, with its state in `state_dir`; a
    context manager. Subclasses say what to run and where it answers when healthy."""

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 4200
    log_path: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    #: How errors name the server, e.g. "Prefect server".
    label = "server"

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        raise NotImplementedError

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        raise NotImplementedError

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
        """Start the server and wait until it answers healthy; again after it ended, on
        the same port and state. Raises RuntimeError (its one-line reason) if the process
        exits first, TimeoutError if it never answers."""
        if self.pid is not None:
            raise RuntimeError(f"the {self.label} on port {self.port} is already running")
        self.stop()  # what a dead server left of its process group
        if port_in_use(self.host, self.port):  # found in ms; the server takes seconds to say so
            raise RuntimeError(f"port {self.port} on {self.host} is in use by another process")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_path or self.state_dir / "server.log"
        with log_path.open("ab") as log:
            log_offset = log.tell()
            self._process = subprocess.Popen(
                self.command(),
                env=self.environment(),
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
                    f"{self.label} exited with {self._process.returncode}: "
                    f"{_last_line(log_path, log_offset)} (log: {log_path})"
                )
            if answers(self.health_url):
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"{self.label} at {self.health_url} not healthy after {timeout:.0f}s")

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


@dataclass
class LocalPrefectServer(LocalServer):
    """`prefect server start` on SQLite in `state_dir`."""

    label = "Prefect server"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"

    @property
    def health_url(self) -> str:
        return f"{self.api_url}/health"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "prefect", "server", "start", "--no-background"]

    def environment(self) -> dict[str, str]:
        return server_environment(self.state_dir, self.host, self.port)


@dataclass
class LocalMlflowServer(LocalServer):
    """`mlflow server`: the MLflow UI (and REST API) over a local tracking store. The
    store's URI travels in the environment, never on the command line."""

    tracking_uri: str = ""
    artifacts_dir: Path | None = None
    port: int = 5000

    label = "MLflow UI"

    @property
    def health_url(self) -> str:
        return f"{self.ui_url}/health"

    def command(self) -> list[str]:
        return [
            *(sys.executable, "-m", "mlflow", "server"),
            *("--host", self.host, "--port", str(self.port), "--workers", "1"),
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MLFLOW_BACKEND_STORE_URI"] = self.tracking_uri
        if self.artifacts_dir is not None:
            env["MLFLOW_DEFAULT_ARTIFACT_ROOT"] = str(self.artifacts_dir.resolve())
        return env


def is_healthy(api_url: str) -> bool:
    """Whether a Prefect API answers its health check."""
    return answers(f"{api_url}/health")


def answers(url: str) -> bool:
    """Whether a GET of `url` answers 200."""
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
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
